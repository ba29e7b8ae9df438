"""Remote biometric enrolment through the real pcscd, the emulated card and the reference broker.

docs/remote-enrolment.md: an operator's authorisation for one card at one box, the code read
back, the holder's PIN, captures through the quality gate, the references written with the
card's 9B answered by the centre, and a verification on the card.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sdbox.smartcard.emulator.profiles import CardProfile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.trust.pki import Pki
from tests.integration.bioenrol_env import OPERATOR_NAME, EnrolBench, make_bench


@pytest.fixture(scope="module")
def module_bench(
    pcscd: PcscDaemon, pki: Pki, demo_profile: CardProfile, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EnrolBench]:
    """One card, one reader, one broker for the module."""
    with reserve_reader() as index:
        reader = reader_name(index)
        assert wait_for_card(reader, present=False), "the reader still holds another card"
        with make_bench(tmp_path_factory.mktemp("bioenrol"), pki, demo_profile, index,
                        reader) as bench:  # fmt: skip
            yield bench


@pytest.fixture
def bench(module_bench: EnrolBench) -> EnrolBench:
    """The card as issued, inserted; no authorisation."""
    module_bench.reset()
    return module_bench


def test_a_finger_is_enrolled_remotely_and_verified_on_the_card(bench: EnrolBench) -> None:
    assert bench.which("primary") == "old"
    opened = bench.open(("primary",))
    flow = bench.run(("primary",))
    assert flow.written == ("primary",)
    assert bench.which("primary") == "new"
    assert bench.which("secondary") == "old"  # not authorised: untouched
    record = bench.register[opened["id"]]
    assert record["state"] == "done"
    assert record["operator"] == OPERATOR_NAME
