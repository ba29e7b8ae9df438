"""The site's project catalogue on a box: flashed, copied at boot, read by the agent.

A one-project card's project (endpoint, bubble certificate, policy) is in the
catalogue the centre signs (docs/card-variants.md). `sdbox flash
--project-catalogue` writes it into the config area, sdbox-site copies it to
/run at boot, and the image's agent.toml points `[card] project_catalogue`
there. These tests follow the file along that path: the flashed config area
holds it; the boot script copies it where the built image's agent looks; the
agent opens the card's project from the flashed bytes, and refuses the card by
name on a box flashed without it (fail closed).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sdbox.agent.api import CardLayout, Problem, State
from sdbox.agent.config import AgentConfig
from sdbox.bootimage import disk, generations
from sdbox.config import load_file
from sdbox.smartcard.directory import SecondFactor
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.trust.pki import Pki
from tests.integration.test_flash import config_area, make_image, run_flash
from tests.unit.test_agent_machine import until
from tests.unit.test_agent_variants import _catalogue, agent_with

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SITE_SETUP = ROOT / "bootimage/rootfs/usr/libexec/sdbox/site-setup"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    authority = Pki.init(tmp_path_factory.mktemp("pki"))
    issue_card(load_profile("legacy-one-project"), authority)  # and its bubble's certificate
    return authority


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "sdbox-qemu-q35.raw")


def _flash(image: Path, target: Path, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    target.write_bytes(b"old contents")
    return run_flash(image, target, "--generation", "qemu-q35", "--yes", *extra)


def _site_setup(config: Path, run_dir: Path) -> dict[str, Any]:
    """sdbox-site's copy step on ``config`` (the mounted config area), its paths under ``run_dir``.

    The script runs as root on the box and mounts the partition itself: here the
    mount and unmount are skipped (``run`` answers success) and its paths moved
    under the test's directory; the copying is the script's own code.
    """
    source = SITE_SETUP.read_text().removesuffix("sys.exit(main())\n")
    assert source != SITE_SETUP.read_text(), "site-setup no longer ends with sys.exit(main())"
    script: dict[str, Any] = {"__name__": "site_setup"}
    exec(compile(source, str(SITE_SETUP), "exec"), script)  # our own boot script, its final line cut
    on_box = script["CATALOGUE"]
    script.update(
        CONFIG_PARTITION=config, MOUNT=config, run=lambda *_a, **_k: (0, "", ""),
        SITE=run_dir / script["SITE"].relative_to("/"),
        CATALOGUE=run_dir / on_box.relative_to("/"),
    )  # fmt: skip
    script["copy_profile"]()
    return {"on_box": on_box, "copied": script["CATALOGUE"]}


def test_a_flashed_catalogue_is_in_the_config_area_and_reported(
    image: Path, tmp_path: Path, pki: Pki
) -> None:
    catalogue = _catalogue(pki, tmp_path / "project-catalogue.json", SecondFactor.FINGER)
    target = tmp_path / "box.raw"
    done = _flash(image, target, "--project-catalogue", catalogue)
    assert done.returncode == 0, done.stderr
    assert re.search(
        r"catalogue: +project catalogue written \(sequence 1, 1 project\(s\): census-2021\)",
        done.stdout,
    ), done.stdout
    assert config_area(target).read(disk.CATALOGUE_FILE) == catalogue.read_bytes()


def test_without_a_catalogue_the_report_says_one_project_cards_are_refused(
    image: Path, tmp_path: Path
) -> None:
    target = tmp_path / "box.raw"
    done = _flash(image, target)
    assert done.returncode == 0, done.stderr
    assert "catalogue:    none: the box refuses one-project cards" in done.stdout
    assert disk.CATALOGUE_FILE not in config_area(target).names()


def test_an_altered_catalogue_is_refused_before_anything_is_written(
    image: Path, tmp_path: Path, pki: Pki
) -> None:
    catalogue = _catalogue(pki, tmp_path / "project-catalogue.json", SecondFactor.FINGER)
    outer = json.loads(catalogue.read_bytes())
    outer["catalogue"] = outer["catalogue"][:-8] + "AAAAAAA="
    catalogue.write_text(json.dumps(outer))
    target = tmp_path / "box.raw"
    done = _flash(image, target, "--project-catalogue", catalogue)
    assert done.returncode != 0
    assert "project-catalogue.json: the project catalogue" in done.stderr, done.stderr
    assert target.read_bytes() == b"old contents"
    assert "About to overwrite" not in done.stderr


def test_a_missing_catalogue_file_is_refused_before_anything_is_written(
    image: Path, tmp_path: Path
) -> None:
    target = tmp_path / "box.raw"
    done = _flash(image, target, "--project-catalogue", tmp_path / "nowhere.json")
    assert done.returncode != 0
    assert "nowhere.json: the project catalogue does not exist" in done.stderr
    assert target.read_bytes() == b"old contents"


def _image_build() -> Any:
    """bootimage/build.py as a module (a script: mypy checks it under its own name)."""
    spec = importlib.util.spec_from_file_location("sdbox_image_build", ROOT / "bootimage/build.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _built_agent_config(tmp_path: Path) -> AgentConfig:
    """The agent.toml a `make image` of qemu-q35 writes (the overlay step only; no image)."""
    image_build = _image_build()
    build = image_build.Build(generations.load("qemu-q35"), tmp_path / "image", 0, "0-test")
    overlay = image_build.overlay(build)
    return load_file(AgentConfig, overlay / "etc/sdbox/agent.toml")


def _one_project_card(pki: Pki, catalogue: Path) -> tuple[Problem | None, str, State, object]:
    """Insert the one-project card on an agent reading ``catalogue``: where it ends up."""
    legacy = PivApplet(issue_card(load_profile("legacy-one-project"), pki))

    async def scenario() -> tuple[Problem | None, str, State, object]:
        agent, _sessions = agent_with(legacy, pki)
        agent.catalogue = catalogue
        await agent.card_inserted("reader")
        # the catalogue says finger, and the emulated sensor has the holder's: a session
        await until(lambda: agent.snapshot.state in (State.RUNNING, State.BLOCKED))
        snap = agent.snapshot
        return snap.problem, snap.message, snap.state, snap.card_layout

    return asyncio.run(scenario())


def test_the_built_agent_reads_what_boot_copies_from_the_flashed_config_area(
    image: Path, tmp_path: Path, pki: Pki
) -> None:
    """Flash → config area → sdbox-site's copy → the image's agent.toml → the agent."""
    catalogue = _catalogue(pki, tmp_path / "project-catalogue.json", SecondFactor.FINGER)
    target = tmp_path / "box.raw"
    assert _flash(image, target, "--project-catalogue", catalogue).returncode == 0
    mounted = tmp_path / "config"  # what the box's mount of the config partition shows
    mounted.mkdir()
    area = config_area(target)
    for name in area.names():
        (mounted / name).write_bytes(area.read(name))

    copied = _site_setup(mounted, tmp_path / "root")
    config = _built_agent_config(tmp_path)
    assert config.card.project_catalogue == copied["on_box"]
    assert copied["copied"].read_bytes() == catalogue.read_bytes()

    problem, message, state, layout = _one_project_card(pki, copied["copied"])
    assert (problem, state, layout) == (None, State.RUNNING, CardLayout.ONE_PROJECT), message


def test_a_box_flashed_without_a_catalogue_refuses_a_one_project_card_by_name(
    image: Path, tmp_path: Path, pki: Pki
) -> None:
    target = tmp_path / "box.raw"
    assert _flash(image, target).returncode == 0
    mounted = tmp_path / "config"
    mounted.mkdir()
    area = config_area(target)
    for name in area.names():
        (mounted / name).write_bytes(area.read(name))

    copied = _site_setup(mounted, tmp_path / "root")
    assert not copied["copied"].exists()
    assert _built_agent_config(tmp_path).card.project_catalogue == copied["on_box"]

    problem, message, state, _layout = _one_project_card(pki, copied["copied"])
    assert (problem, state) == (Problem.CARD_NOT_SUPPORTED, State.BLOCKED)
    assert message.startswith(
        "this is a one-project card (project 'census-2021'), and this box has no project "
        "catalogue for such cards"
    ), message
