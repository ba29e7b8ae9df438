"""On-card comparison: the holder's finger matches on the card; another finger is counted."""

from __future__ import annotations

import time

import pytest

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty, milliseconds
from sdbox.smartcard.biosso import BioSsoSession

OTHER_FINGER_SEED = 4242  # a synthetic finger that is not the demo holder's


def _require_occ(card: BioSsoSession) -> None:
    from sdbox.smartcard.profile import Discovery, ObjectTag

    if not Discovery.parse(card.piv.get_object(ObjectTag.DISCOVERY)).occ:
        pytest.skip("the card does not advertise on-card comparison (discovery object)")


@pytest.mark.scenario("OCC verify (holder's finger)")
def test_holders_finger_matches_on_the_card(
    bench: Bench, card: BioSsoSession, record_property: RecordProperty
) -> None:
    from sdbox.smartcard.profile import KeyRef

    _require_occ(card)
    probe = bench.probe()
    if probe is None:
        pytest.skip("no finger to present: give --template FILE (the holder's template)")
    source = "template file" if bench.template else "emulated sensor"
    started = time.perf_counter()
    card.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
    elapsed = time.perf_counter() - started
    tries = card.tries_left()
    # a match resets the counter: -1 is "verified" in this session
    assert tries.finger_primary is not None, "the primary finger has no counter"
    assert tries.finger_primary == -1 or tries.finger_primary > 0, tries
    record_property("verify_ms", milliseconds(elapsed))
    record_property("minutiae", len(probe) // 3)
    record_property("probe", source)


@pytest.mark.writes
@pytest.mark.scenario("OCC verify (another finger refused, counted)")
def test_another_finger_is_refused_and_costs_one_try(
    bench: Bench, card: BioSsoSession, record_property: RecordProperty
) -> None:
    from sdbox.biometric.sensor import EmulatedSensor
    from sdbox.smartcard.errors import WrongFinger
    from sdbox.smartcard.profile import KeyRef

    _require_occ(card)
    if bench.emulated is None:
        pytest.skip("needs a finger known not to be the holder's: emulated target only")
    import asyncio

    card.piv.reset_verification(KeyRef.FINGER_PRIMARY)  # an earlier scenario may have verified
    before = card.piv.finger_tries_left(KeyRef.FINGER_PRIMARY)
    other = asyncio.run(EmulatedSensor(OTHER_FINGER_SEED).capture())
    started = time.perf_counter()
    with pytest.raises(WrongFinger) as refused:
        card.piv.verify_finger(KeyRef.FINGER_PRIMARY, other)
    elapsed = time.perf_counter() - started
    assert refused.value.tries_left == before - 1
    probe = bench.probe()
    assert probe is not None
    card.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)  # the right finger restores the count
    card.piv.reset_verification(KeyRef.FINGER_PRIMARY)
    assert card.piv.finger_tries_left(KeyRef.FINGER_PRIMARY) == before
    record_property("refuse_ms", milliseconds(elapsed))
    record_property("tries_left_after_refusal", refused.value.tries_left)
