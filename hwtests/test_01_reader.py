"""Reader enumeration and the card's ATR, as pcscd reports them (no command sent to the card)."""

from __future__ import annotations

import time

import pytest

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty, milliseconds

# ISO/IEC 7816-3: TS is 3B (direct convention) or 3F (inverse); an ATR is at most 33 bytes
ATR_TS = (0x3B, 0x3F)
ATR_MAX = 33


@pytest.mark.scenario("reader enumeration and ATR")
def test_reader_is_listed_with_the_card_and_a_valid_atr(
    bench: Bench, record_property: RecordProperty
) -> None:
    from sdbox.smartcard.pcsc import PcscContext

    started = time.perf_counter()
    context = PcscContext()
    try:
        states = context.reader_states()
    finally:
        context.release()
    elapsed = time.perf_counter() - started
    found = [s for s in states if s.name == bench.reader]
    assert found, f"'{bench.reader}' is not among the readers: {[s.name for s in states]}"
    state = found[0]
    assert state.present, f"pcscd sees no card in '{bench.reader}'"
    assert not state.mute, "the card is mute: it gave no ATR"
    atr = state.atr
    assert atr, "pcscd has no ATR for the card"
    assert atr[0] in ATR_TS, f"ATR {atr.hex().upper()}: TS must be 3B or 3F"
    assert len(atr) <= ATR_MAX, f"ATR {atr.hex().upper()}: longer than {ATR_MAX} bytes"
    record_property("readers", len(states))
    record_property("enumerate_ms", milliseconds(elapsed))
    record_property("atr", atr.hex().upper())
