"""Insertion and removal detection: from the card moving to pcscd reporting it."""

from __future__ import annotations

import time

import pytest

from hwtests.bench import Bench, read_guid
from hwtests.plugin import RecordProperty, ask_operator, milliseconds, same_card


def _wait(reader: str, *, present: bool, timeout_s: float) -> float | None:
    """Seconds until pcscd reports ``reader`` with(out) a card, on its own events; None: timeout."""
    from sdbox.smartcard.pcsc import PcscContext

    context = PcscContext()
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        while True:
            states = [s for s in context.reader_states() if s.name == reader]
            if states and states[0].present == present:
                return time.perf_counter() - started
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            context.wait_for_change(states, min(remaining, 1.0))
    finally:
        context.release()


@pytest.mark.scenario("insertion/removal detection time")
def test_removal_and_insertion_are_seen(
    pytestconfig: pytest.Config, bench: Bench, record_property: RecordProperty
) -> None:
    timeout = bench.operator_timeout_s
    if bench.emulated is not None:
        started = time.perf_counter()
        bench.emulated.remove()
        removed = _wait(bench.reader, present=False, timeout_s=10)
        assert removed is not None, "pcscd did not report the removal within 10 s"
        removal_s = time.perf_counter() - started
        started = time.perf_counter()
        bench.emulated.insert()
        inserted = _wait(bench.reader, present=True, timeout_s=10)
        assert inserted is not None, "pcscd did not report the insertion within 10 s"
        insertion_s = time.perf_counter() - started
    else:
        ask_operator(pytestconfig, bench, f"pull the card out of '{bench.reader}'")
        removed = _wait(bench.reader, present=False, timeout_s=timeout)
        if removed is None:
            pytest.fail(f"no removal seen within {timeout:.0f} s")
        ask_operator(pytestconfig, bench, f"put the same card back into '{bench.reader}'")
        inserted = _wait(bench.reader, present=True, timeout_s=timeout)
        if inserted is None:
            pytest.fail(f"no insertion seen within {timeout:.0f} s")
        removal_s, insertion_s = removed, inserted  # include the operator's own time
        record_property("note", "real reader: times include the operator")
    started = time.perf_counter()
    guid = read_guid(bench.reader)  # the card answers again, and it is the same card
    ready_s = time.perf_counter() - started
    same_card(bench, guid)
    record_property("removal_ms", milliseconds(removal_s))
    record_property("insertion_ms", milliseconds(insertion_s))
    record_property("first_select_ms", milliseconds(ready_s))
