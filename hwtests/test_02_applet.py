"""Applet discovery: SELECT of the PIV application, the discovery object, the BIT group."""

from __future__ import annotations

import time

import pytest

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty, milliseconds
from sdbox.smartcard.biosso import BioSsoSession


@pytest.mark.scenario("applet discovery: SELECT PIV AID")
def test_piv_application_answers_select(
    card: BioSsoSession, bench: Bench, record_property: RecordProperty
) -> None:
    started = time.perf_counter()
    result = card.piv.select()
    elapsed = time.perf_counter() - started
    # the identity check has run on this connection: the card is the named one
    assert card.guid == bench.guid
    record_property("select_ms", milliseconds(elapsed))
    record_property("label", result.label or "-")
    record_property("guid", card.guid.hex())


@pytest.mark.scenario("applet discovery: discovery object and BIT group")
def test_discovery_object_states_the_verification_methods(
    card: BioSsoSession, record_property: RecordProperty
) -> None:
    from sdbox.smartcard.piv import FileNotFoundOnCard
    from sdbox.smartcard.profile import Discovery, ObjectTag

    started = time.perf_counter()
    try:
        discovery = Discovery.parse(card.piv.get_object(ObjectTag.DISCOVERY))
    except FileNotFoundOnCard:
        pytest.skip("the card has no discovery object (7E): it does not say how its holder "
                    "is verified, so it cannot be a BIO SSO card")  # fmt: skip
    elapsed = time.perf_counter() - started
    record_property("discovery_ms", milliseconds(elapsed))
    record_property("occ", discovery.occ)
    record_property("piv_pin", discovery.piv_pin)
    if not discovery.occ:
        pytest.skip("the card does not advertise on-card comparison (no OCC bit): PIN only")
    bits = card.finger_bits()
    assert bits, "OCC is advertised but the BIT group (7F61) names no finger"
    for bit in bits:
        assert 0 < bit.min_minutiae <= bit.max_minutiae, bit
    record_property("fingers", " ".join(f"{b.reference:02X}" for b in bits))
    record_property("minutiae", f"{bits[0].min_minutiae}-{bits[0].max_minutiae}")
