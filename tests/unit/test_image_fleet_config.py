"""The image's /etc/sdbox/fleet.toml (bootimage/build.py --fleet-url) is one the box's reporter loads."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from sdbox.bootimage import generations
from sdbox.bootimage.errors import BootImageError
from sdbox.centre.checkin import ReporterConfig
from sdbox.config import load_file

BUILD_PY = Path(__file__).resolve().parents[2] / "bootimage" / "build.py"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sdbox_image_build", BUILD_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_fleet_url_gives_the_box_a_reporter_configuration(tmp_path: Path) -> None:
    build_py = _build_module()
    build = build_py.Build(
        generations.load("qemu-q35"), tmp_path, 1765000000, "0.3.0+1765000000",
        fleet_url="https://fleet.centre.example:8480/",
    )  # fmt: skip
    build_py.fleet_config(build, tmp_path)
    config = load_file(ReporterConfig, tmp_path / "fleet.toml")
    assert config.url == "https://fleet.centre.example:8480"
    assert config.ca_bundle == "/etc/sdbox/trust/roots.pem"
    assert config.generation_file == Path("/etc/sdbox/generation")
    assert (tmp_path / "generation").read_text() == "qemu-q35\n"  # what the dashboard shows


def test_a_fleet_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    build_py = _build_module()
    build = build_py.Build(generations.load("qemu-q35"), tmp_path, 0, "0.3.0", fleet_url="fleet:8480")
    with pytest.raises(BootImageError):
        build_py.fleet_config(build, tmp_path)
