"""How many screens the box has, and how dense the generation says they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.session.displays import connected_outputs, generation_scale


def _connector(drm: Path, name: str, status: str) -> None:
    (drm / name).mkdir(parents=True)
    (drm / name / "status").write_text(status + "\n")


def test_connected_outputs_count_what_the_kernel_says_is_plugged_in(tmp_path: Path) -> None:
    _connector(tmp_path, "card0-HDMI-A-1", "connected")
    _connector(tmp_path, "card0-HDMI-A-2", "disconnected")
    _connector(tmp_path, "card0-DP-1", "connected")
    (tmp_path / "card0").mkdir()  # the card itself, not a connector
    assert connected_outputs(tmp_path) == 2


def test_no_connector_is_one_screen(tmp_path: Path) -> None:
    # a test machine or a GPU without DRM: the compositor's one output
    assert connected_outputs(tmp_path) == 1
    assert connected_outputs(tmp_path / "absent") == 1


def test_the_generations_scale_is_read_from_its_profile(tmp_path: Path) -> None:
    profile = tmp_path / "generation.toml"
    profile.write_text('[generation]\nname = "x"\n[display]\nscale = 150\n')
    assert generation_scale(profile) == 150


@pytest.mark.parametrize(
    "text", ["", "[display]\n", "[display]\nscale = 40\n", '[display]\nscale = "2x"\n',
             "[display]\nscale = true\n", "not toml ["],
)  # fmt: skip
def test_no_or_a_bad_scale_is_100(tmp_path: Path, text: str) -> None:
    profile = tmp_path / "generation.toml"
    profile.write_text(text)
    assert generation_scale(profile) == 100
    assert generation_scale(tmp_path / "absent.toml") == 100


def test_the_agent_gives_its_sessions_the_screens_as_configured(tmp_path: Path) -> None:
    from typing import Any

    from sdbox.agent.adapters import SessionService
    from sdbox.agent.config import SessionConfig

    trust: Any = None  # not used to describe the display
    display = SessionService(SessionConfig(x11_display=":3", monitors=2, scale=150), trust).display()
    assert (display.x11, display.monitors, display.scale) == (":3", 2, 150)
    counted = SessionService(SessionConfig(runtime_dir=str(tmp_path)), trust).display()
    assert counted.monitors >= 1
    assert counted.wayland == "wayland-0"
