"""The picker's listing (sdbox.smartcard.biosso.read_summary): time and APDU count."""

from __future__ import annotations

import statistics
import time

import pytest
from cryptography import x509

from hwtests.bench import Bench, BenchError
from hwtests.plugin import RecordProperty, milliseconds
from sdbox.smartcard.errors import DirectoryMissing

ROUNDS = 5
# SELECT, CHUID, directory, the primary finger's counter (extended length); the counter's
# answer also says whether the card compares a finger (a PIN-only card: 6A88)
LISTING_APDUS = 4


def _no_anchors(_signer: x509.Certificate, _chain: list[x509.Certificate]) -> None:
    raise BenchError("no --anchors given: the directory signer was not checked")


@pytest.mark.scenario("listing time (4-APDU listing)")
def test_listing_reads_the_verified_directory_in_four_apdus(
    bench: Bench, record_property: RecordProperty
) -> None:
    validate = bench.validate_signer() or _no_anchors
    times: list[float] = []
    apdus: list[int] = []
    for _ in range(ROUNDS):
        # a fresh connection each round, as when a card is inserted: SELECT is part of it
        with bench.session() as card:
            card.forget_identity()
            card.stack.stats.reset()
            started = time.perf_counter()
            summary = card.read_summary(validate)
            times.append(time.perf_counter() - started)
            apdus.append(card.stack.stats.apdus)
            extended = card.stack.extended
    record_property("listing_median_ms", milliseconds(statistics.median(times)))
    record_property("listing_max_ms", milliseconds(max(times)))
    record_property("apdus", apdus[-1])
    assert summary.guid == bench.guid
    caps = bench.capabilities()
    if caps is not None and not caps.multi_project:
        # the one-project card: the listing finds no directory, as it should
        assert summary.directory is None
        assert isinstance(summary.directory_error, DirectoryMissing), summary.directory_error
        record_property("directory", "none: one-project card")
    elif bench.anchors is None:
        record_property("directory", "not checked (no --anchors)")
    else:
        assert summary.directory_verified, f"directory refused: {summary.directory_error}"
        assert summary.directory is not None
        record_property("projects", len(summary.directory.projects))
    expected = LISTING_APDUS
    # what the card's ATR states decides the stack (docs/card-variants.md)
    record_property("stack", "extended length" if extended else "short APDUs, chaining")
    if bench.target.emulated and extended:
        assert apdus == [expected] * ROUNDS, apdus
    else:  # a card without extended length answers through response chaining: more APDUs
        assert min(apdus) >= expected, apdus
        assert len(set(apdus)) == 1, apdus  # the same card, the same listing
