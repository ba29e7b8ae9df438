"""Keyboard layouts: XKB names checked against XKB's own list, RDP told the matching layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdbox.agent.api import Preference
from sdbox.agent.preferences import GREETER_ENV, PreferenceError, Preferences
from sdbox.session import Credential, Display, Endpoint, RdpSession, SessionConfigError, SessionSpec
from sdbox.session.keyboard import RDP_LAYOUTS, XKB_RULES, layout_problem, xkb_layouts

needs_xkb = pytest.mark.skipif(not XKB_RULES.exists(), reason="xkb-data is not installed")


@needs_xkb
def test_every_rdp_layout_is_one_xkb_knows() -> None:
    known = xkb_layouts()
    assert {"fr", "de", "gb", "us", "ch"} <= set(RDP_LAYOUTS)
    assert set(RDP_LAYOUTS) <= set(known), set(RDP_LAYOUTS) - set(known)
    assert known["fr"] == "French"


@needs_xkb
@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("fr", None),
        ("de", None),
        ("xq", "is not a layout XKB knows"),
        ("azerty", "is not an XKB layout name"),
        ("de(nodeadkeys)", "is not an XKB layout name"),
        ("", "is not an XKB layout name"),
        ("mn", "has no RDP keyboard layout here"),
    ],
)
def test_a_layout_is_refused_with_the_reason(name: str, problem: str | None) -> None:
    found = layout_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_without_xkbs_list_every_layout_is_refused_and_says_why(tmp_path: Path) -> None:
    found = layout_problem("fr", tmp_path / "evdev.lst")
    assert found is not None
    assert "xkb-data" in found


def _spec(layout: str | None) -> SessionSpec:
    return SessionSpec(
        endpoint=Endpoint.parse("rdp://bubble.example:3389"), user="alice",
        credential=Credential("x" * 12), display=Display(x11=":5"),
        server_fingerprint="sha256:" + "ab" * 32, keyboard_layout=layout,
    )  # fmt: skip


def test_rdp_announces_the_layout_and_nothing_without_one() -> None:
    assert "/kbd:layout:0x0000040C" in RdpSession(_spec("fr"), run_as=None).arguments()
    assert "/kbd:layout:0x00000407" in RdpSession(_spec("de"), run_as=None).arguments()
    assert not any(a.startswith("/kbd") for a in RdpSession(_spec(None), run_as=None).arguments())
    with pytest.raises(SessionConfigError, match="No RDP keyboard layout"):
        _spec("mn")


def test_the_choice_persists_and_the_kiosk_is_told(tmp_path: Path) -> None:
    prefs = Preferences(tmp_path, layout="fr", choices=("de", "gb"))
    assert prefs.choices == ("fr", "de", "gb")  # the box's layout is always offered
    assert prefs.keyboard_layout == "fr"
    assert (tmp_path / GREETER_ENV).read_text() == "XKB_DEFAULT_LAYOUT=fr\n"
    assert prefs.set(Preference.KEYBOARD_LAYOUT, "de") is True
    assert prefs.set(Preference.KEYBOARD_LAYOUT, "de") is False  # nothing changed
    assert (tmp_path / GREETER_ENV).read_text() == "XKB_DEFAULT_LAYOUT=de\n"
    again = Preferences(tmp_path, layout="fr", choices=("de", "gb"))
    assert again.keyboard_layout == "de"
    assert again.values()[Preference.KEYBOARD_LAYOUT] == "de"


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("keyboard_layout", "us", "not one of this box's layouts"),
        ("keyboard_layout", "fr\nXKB_DEFAULT_RULES=x", "not one of this box's layouts"),
        ("large_text", "yes", "0 or 1"),
        ("volume", "1", "is not a preference"),
    ],
)
def test_a_choice_outside_the_boxs_is_refused(
    tmp_path: Path, key: str, value: str, problem: str
) -> None:
    prefs = Preferences(tmp_path, layout="fr", choices=("de",))
    with pytest.raises(PreferenceError, match=problem):
        prefs.set(key, value)
    assert not (tmp_path / "preferences.json").exists()


def test_a_stored_choice_the_box_no_longer_offers_falls_back_to_the_box(tmp_path: Path) -> None:
    (tmp_path / "preferences.json").write_text(json.dumps({"keyboard_layout": "gb"}))
    prefs = Preferences(tmp_path, layout="fr", choices=("de",))
    assert prefs.keyboard_layout == "fr"
    (tmp_path / "preferences.json").write_text("{not json")
    assert Preferences(tmp_path, layout="de", choices=()).keyboard_layout == "de"
