"""Destructive steps (``--allow-write``): finger enrolment and key generation on a spare slot.

Both need the card management key (9B). The box never holds it (the centre
runs 9B through the box), so on a real card these are the enrolment
station's and the centre's to exercise; the emulated card's key is the demo
profile's published test key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty, milliseconds
from sdbox.smartcard.biosso import BioSsoSession

pytestmark = pytest.mark.writes

NEW_FINGER_SEED = 77  # another synthetic finger


@pytest.fixture
def managed(bench: Bench) -> Iterator[BioSsoSession]:
    """An exclusive session authenticated with the card management key."""
    from sdbox.smartcard.piv import LocalManagementKey

    if bench.emulated is None:
        pytest.skip("needs the card management key (9B), which the centre holds and the box "
                    "never does: run it through the centre's enrolment station")  # fmt: skip
    with bench.session(exclusive=True) as card:
        card.piv.authenticate_management(LocalManagementKey(bench.emulated.management_key))
        yield card


@pytest.mark.scenario("enrolment (primary finger, then restored)")
def test_enrolled_finger_replaces_the_old_one(
    bench: Bench, managed: BioSsoSession, record_property: RecordProperty
) -> None:
    from sdbox.biometric.sensor import EmulatedSensor
    from sdbox.biometric.synth import enrolment_template
    from sdbox.smartcard.errors import WrongFinger
    from sdbox.smartcard.profile import FINGER_REFERENCE_OBJECT, KeyRef

    assert bench.emulated is not None
    obj = FINGER_REFERENCE_OBJECT[KeyRef.FINGER_PRIMARY]
    started = time.perf_counter()
    managed.piv.put_object(obj, enrolment_template(NEW_FINGER_SEED))
    enrol_s = time.perf_counter() - started
    try:
        new = asyncio.run(EmulatedSensor(NEW_FINGER_SEED).capture())
        managed.piv.verify_finger(KeyRef.FINGER_PRIMARY, new)
        managed.piv.reset_verification(KeyRef.FINGER_PRIMARY)
        old = bench.probe()
        assert old is not None
        with pytest.raises(WrongFinger):  # the holder's old finger no longer matches
            managed.piv.verify_finger(KeyRef.FINGER_PRIMARY, old)
    finally:  # the other scenarios need the holder's finger back (re-enrolment resets the count)
        managed.piv.put_object(obj, enrolment_template(bench.emulated.finger_seed))
    probe = bench.probe()
    assert probe is not None
    managed.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
    record_property("enrol_ms", milliseconds(enrol_s))


@pytest.mark.scenario("key generation on a spare slot")
def test_generated_key_agrees_with_its_public_key(
    bench: Bench, managed: BioSsoSession, record_property: RecordProperty
) -> None:
    from sdbox.smartcard.profile import RETIRED_SLOTS, Algorithm, KeyRef

    bench.require(lambda c: c.multi_project, "one-project card: no retired slots in use "
                  "(key generation belongs to the card office for it)")  # fmt: skip
    used = {p.slot for p in managed.read_signed_directory().directory.projects}
    spare = [s for s in RETIRED_SLOTS[managed.key_history_count() :] if s not in used]
    if not spare:
        pytest.skip("no spare retired slot on this card")
    slot = spare[-1]  # the far end: renewal takes the next free slot from the front
    started = time.perf_counter()
    public = managed.piv.generate_key(slot, Algorithm.ECCP256)
    keygen_s = time.perf_counter() - started
    probe = bench.probe()
    assert probe is not None
    managed.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
    ephemeral = ec.generate_private_key(public.curve)
    assert managed.ecdh(slot, ephemeral.public_key()) == ephemeral.exchange(ec.ECDH(), public)
    record_property("slot", f"{slot:02X}")
    record_property("keygen_ms", milliseconds(keygen_s))
