"""`sdbox card identify` on the real pcscd: every card variant, an unknown card, a contradictory one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sdbox.smartcard.apdu import Ins, Sw
from sdbox.smartcard.emulator.applet import PivApplet, response
from sdbox.smartcard.emulator.profiles import issue_card, load_profile, profile_names
from sdbox.smartcard.emulator.stack import reader_name, wait_for_card
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.smartcard.profile import ObjectTag
from sdbox.trust.pki import Pki
from tests.integration.conftest import InsertedCard, insert_card

VARIANT_PROFILES = [name for name in profile_names() if name != "demo"]
CardOf = Callable[[str | CardState], InsertedCard]


def sdbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", *args],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def identify(reader: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return sdbox("card", "identify", "--reader", reader, *extra)


@pytest.fixture
def card_of(free_reader: int, pki: Pki, tmp_path: Path) -> Iterator[CardOf]:
    """Insert a card issued from a named profile (or a given state) into the reserved reader."""
    inserted: list[InsertedCard] = []

    def insert(name_or_state: str | CardState) -> InsertedCard:
        state = (
            issue_card(load_profile(name_or_state), pki, state_path=tmp_path / "card.json")
            if isinstance(name_or_state, str)
            else name_or_state
        )
        card = insert_card(state, pki, free_reader)
        inserted.append(card)
        return card

    yield insert
    for card in inserted:
        card.remove()


@pytest.mark.parametrize("name", VARIANT_PROFILES)
def test_identify_names_each_variant(card_of: CardOf, name: str) -> None:
    card = card_of(name)
    out = identify(card.reader, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["variant"] == name
    assert doc["supported"] is True
    assert doc["identifiers"]["guid"] == card.state.guid.hex().upper()
    assert doc["can"]
    # the support dump is public data only: no PIN, no finger template, no key
    text = out.stdout
    assert card.state.pin.reference is not None
    assert card.state.pin.reference.hex().upper() not in text
    assert "313233343536" not in text  # the PIN's digits, in hex
    for finger in card.state.fingers.values():
        assert finger.reference is not None
        assert finger.reference.hex().upper()[:24] not in text
    assert "PRIVATE KEY" not in text


def test_identify_reports_the_capabilities_that_make_the_variant(card_of: CardOf) -> None:
    t0 = json.loads(identify(card_of("biosso-t0").reader, "--json").stdout)
    assert t0["capabilities"]["transmission"] == "T=0"
    assert t0["capabilities"]["extended_length"] is False
    assert t0["identifiers"]["transmission"] == "T=0"


def test_a_one_project_card_says_swapping_cards_switches_projects(card_of: CardOf) -> None:
    out = identify(card_of("legacy-one-project").reader)
    assert out.returncode == 0, out.stderr
    assert "variant:    legacy-one-project" in out.stdout
    assert "switching projects means swapping cards" in out.stdout
    assert "recognise its one project" in out.stdout
    assert "go straight to its project at insertion" in out.stdout
    assert "needs the site's signed project catalogue" in out.stdout


def test_the_rsa_card_says_what_sdbox_cannot_do(card_of: CardOf) -> None:
    doc = json.loads(identify(card_of("biosso-rsa2048").reader, "--json").stdout)
    assert doc["capabilities"]["key_algorithms"] == ["RSA-2048"]
    assert any("not renewed" in line for line in doc["cannot"])
    assert not any("possession proof" in line for line in doc["cannot"])
    assert any("RSA signature" in line and "open its projects" in line for line in doc["can"])


class _PlainCard(PivApplet):
    """A card with no PIV application: it answers nothing useful."""

    def process(self, raw: bytes) -> bytes:
        if len(raw) >= 2 and raw[1] == Ins.SELECT:
            return response(b"", Sw.FILE_NOT_FOUND)
        return response(b"", Sw.INS_NOT_SUPPORTED)


def test_an_unknown_card_gets_an_answer_not_a_traceback(free_reader: int, pki: Pki) -> None:
    state = issue_card(load_profile("biosso-p256"), pki)
    virtual = VirtualCard(_PlainCard(state), port=VPCD_BASE_PORT + free_reader)
    reader = reader_name(free_reader)
    virtual.insert()
    try:
        assert wait_for_card(reader, present=True, timeout_s=15)
        out = identify(reader)
        assert out.returncode == 0, out.stderr
        assert "not supported on sdbox" in out.stdout
        assert "no PIV application" in out.stdout
        assert "Traceback" not in out.stderr
        doc = json.loads(identify(reader, "--json").stdout)
        assert doc["variant"] is None
        assert doc["supported"] is False
        assert doc["identifiers"]["atr"] == virtual.atr.hex().upper()
    finally:
        virtual.remove()
        assert wait_for_card(reader, present=False)


def test_a_contradictory_card_is_refused_naming_the_contradiction(
    card_of: CardOf, pki: Pki
) -> None:
    state = issue_card(load_profile("legacy-one-project"), pki)
    state.objects[ObjectTag.DIRECTORY] = issue_card(load_profile("biosso-p256"), pki).objects[
        ObjectTag.DIRECTORY
    ]
    card = card_of(state)
    out = identify(card.reader, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["variant"] is None
    assert "directory on a card that claims one project" in doc["contradiction"]
    text = identify(card.reader)
    assert "contradictory" in text.stdout
    assert "Traceback" not in text.stderr


def test_list_profiles_and_emulate_a_named_variant(
    free_reader: int, pki: Pki, tmp_path: Path
) -> None:
    listed = sdbox("emulate", "card", "--list-profiles")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == profile_names()
    reader = reader_name(free_reader)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdbox", "emulate", "card", "--profile", "biosso-chaining",
         "--reader-index", str(free_reader), "--state", str(tmp_path / "card.json"),
         "--pki", str(pki.path)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert wait_for_card(reader, present=True, timeout_s=30)
        doc = json.loads(identify(reader, "--json").stdout)
        assert doc["variant"] == "biosso-chaining"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert wait_for_card(reader, present=False, timeout_s=10)


@pytest.mark.parametrize("name", VARIANT_PROFILES)
def test_card_info_lists_the_same_projects_on_every_multi_project_variant(
    card_of: CardOf, name: str
) -> None:
    card = card_of(name)
    out = sdbox("card", "info", "--reader", card.reader, "--json", "--anchors", str(card.anchors))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["guid"] == card.state.guid.hex().upper()
    if name == "legacy-one-project":
        assert doc["directory_verified"] is False
        assert "no project directory" in doc["directory_error"]
        return
    assert doc["directory_verified"] is True, doc.get("directory_error")
    assert {p["id"] for p in doc["projects"]} == {"census-2021", "health-cohort", "genomics-lab"}
    assert doc["occ"] is (name != "biosso-pin-only")
