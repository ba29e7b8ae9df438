"""Renewal asks the card's capabilities first: it renews what each variant allows, refuses the rest.

Every profile's card, in process: the multi-project EC variants are let
through to the renewal proper; the one-project card and the RSA-2048 card
are refused with their reason before the centre, the CA or the card's
management key are touched, and nothing on the card changes.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sdbox.renewal.capability import renewal_refusal
from sdbox.renewal.flow import Outcome, Renewer
from sdbox.renewal.ports import RenewalTrust
from sdbox.renewal.state import Journal
from sdbox.smartcard.atr import parse_atr
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile, profile_names
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.smartcard.variants import VARIANTS_BY_NAME, renewal_limit
from sdbox.trust.pki import Pki
from tests.unit.test_applet import Direct

VARIANT_PROFILES = [name for name in profile_names() if name != "demo"]
NOT_RENEWED = {"legacy-one-project": "no directory to switch", "biosso-rsa2048": "EC project keys only"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def _session(state: CardState) -> tuple[BioSsoSession, bytes]:
    atr = build_atr(state.transmission, extended=state.extended_length)
    session = BioSsoSession(Direct(PivApplet(state)), extended=parse_atr(atr).extended_length)
    session.piv.select()
    return session, atr


class _Untouchable:
    """The centre and the CMP transport of a run that must not get that far."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"renewal reached the centre or the CA ({name}) on a refused card")


def _renewer(pki: Pki, session: BioSsoSession, atr: bytes, tmp_path: Path) -> Renewer:
    trust = RenewalTrust([pki.root.cert], [], None, pki.root.cert, lambda: datetime.now(UTC))
    return Renewer(
        session=session, centre=_Untouchable(), transport=_Untouchable(), trust=trust,
        journal=Journal(tmp_path / "journal.json"), validate_signer=lambda signer, chain: None,
        window=timedelta(days=30), atr=atr,
    )  # fmt: skip


@pytest.mark.parametrize("name", VARIANT_PROFILES)
def test_the_renewal_gate_follows_each_variants_capabilities(pki: Pki, name: str) -> None:
    session, atr = _session(issue_card(load_profile(name), pki, keygen_seed=b"renewal"))
    refusal = renewal_refusal(session, atr)
    # what the job refuses is what the registry (and `sdbox card identify`) says
    assert refusal == renewal_limit(VARIANTS_BY_NAME[name].capabilities)
    if name in NOT_RENEWED:
        assert refusal is not None
        assert NOT_RENEWED[name] in refusal
        assert "card office re-issues" in refusal
    else:
        assert refusal is None


@pytest.mark.parametrize("name", sorted(NOT_RENEWED))
def test_a_card_renewal_cannot_serve_is_refused_and_left_as_it_was(
    pki: Pki, name: str, tmp_path: Path
) -> None:
    state = issue_card(load_profile(name), pki, keygen_seed=b"renewal")
    before = copy.deepcopy(state.objects)
    session, atr = _session(state)
    session.piv.verify_pin("123456")
    # forced: as if every certificate were due (`sdbox renew --project`)
    results = _renewer(pki, session, atr, tmp_path).run(force=["census-2021", "health-cohort"])
    by_project = {r.project: r for r in results}
    assert by_project["census-2021"].outcome == Outcome.NOT_RENEWABLE
    assert NOT_RENEWED[name] in by_project["census-2021"].detail
    if name == "biosso-rsa2048":  # not forced, not due: said so, not refused
        assert by_project["genomics-lab"].outcome == Outcome.NOT_DUE
    assert state.objects == before
    assert not list(tmp_path.iterdir())  # nothing journalled: nothing was begun


def test_an_unknown_variant_is_not_touched(pki: Pki, tmp_path: Path) -> None:
    """Renewal writes to the card: a card whose variant cannot be established fails closed."""
    state = issue_card(load_profile("biosso-p256"), pki, keygen_seed=b"renewal")
    session, _ = _session(state)
    session.piv.verify_pin("123456")
    results = _renewer(pki, session, bytes.fromhex("3B021480"), tmp_path).run(
        force=["census-2021"]
    )
    census = next(r for r in results if r.project == "census-2021")
    assert census.outcome == Outcome.NOT_RENEWABLE
    assert "variant is not known" in census.detail
