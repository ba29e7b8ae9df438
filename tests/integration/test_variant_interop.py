"""OpenSC's pkcs11-tool and Yubico's yubico-piv-tool read every card variant's certificates.

docs/card-variants.md, "Other PIV tooling", records what each tool reads on
which variant; these tests hold that table to the tools installed here, the
limits included (they fail when a tool starts reading what it did not).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.smartcard.emulator.profiles import issue_card, load_profile, profile_names
from sdbox.trust.pki import Pki
from tests.integration.conftest import InsertedCard, insert_card
from tests.integration.test_opensc_interop import pkcs11_tool

VARIANT_PROFILES = [name for name in profile_names() if name != "demo"]
PROJECTS = ("census-2021", "health-cohort", "genomics-lab")


def _subjects(name: str) -> list[str]:
    if name == "legacy-one-project":
        return ["Dr Ada Lovelace (census-2021)"]
    return ["Dr Ada Lovelace", *(f"Dr Ada Lovelace ({p})" for p in PROJECTS)]


@pytest.fixture
def variant_card(
    request: pytest.FixtureRequest, free_reader: int, pki: Pki, tmp_path: Path
) -> Iterator[tuple[str, InsertedCard]]:
    name: str = request.param
    state = issue_card(load_profile(name), pki, state_path=tmp_path / "card.json")
    card = insert_card(state, pki, free_reader)
    yield name, card
    card.remove()


@pytest.mark.parametrize("variant_card", VARIANT_PROFILES, indirect=True)
def test_pkcs11_tool_lists_each_variants_certificates(
    variant_card: tuple[str, InsertedCard],
) -> None:
    name, card = variant_card
    out = pkcs11_tool("--list-objects", "--type", "cert", card=card)
    assert out.returncode == 0, out.stderr
    for subject in _subjects(name):
        assert f"CN={subject}" in out.stdout, out.stdout


@pytest.mark.skipif(shutil.which("yubico-piv-tool") is None, reason="yubico-piv-tool missing")
@pytest.mark.parametrize("variant_card", VARIANT_PROFILES, indirect=True)
def test_yubico_piv_tool_status_on_each_variant(variant_card: tuple[str, InsertedCard]) -> None:
    name, card = variant_card
    out = subprocess.run(
        ["yubico-piv-tool", "--reader", card.reader, "--action", "status"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if name == "biosso-t0":
        # yubico-piv-tool asks PC/SC for T=1 only: a T=0 chip is not reached at all
        assert out.returncode != 0
        assert "Failed to connect" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    if name == "biosso-compressed":
        # this yubico-piv-tool does not inflate PIV CertInfo 01 (gzip) certificates
        assert "Slot 9a:\tInvalid cert data." in out.stdout, out.stdout
        return
    for subject in _subjects(name):
        assert subject in out.stdout, out.stdout
