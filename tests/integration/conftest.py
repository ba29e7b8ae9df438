"""Integration fixtures: the real pcscd with vpcd, and emulated cards plugged into it."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.faults import parse_fault
from sdbox.smartcard.emulator.profiles import CardProfile, issue_card, load_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki

# One definition for the whole run: libtpm2-pkcs11 binds to one token store per
# process, and a fixture imported into two test modules is two fixtures (two
# software TPMs), which the second module's identity could not open.
from tests.integration.tpm_env import swtpm  # noqa: F401  (a fixture, used by name)

# Every test in this directory is marked `integration` at collection by
# tests/conftest.py (a `pytestmark` here would mark nothing: pytest reads it
# from test modules only).


@pytest.fixture(scope="session")
def pcscd() -> Iterator[PcscDaemon]:
    """pcscd with the vpcd driver: the one running, or ours for the session."""
    if shutil.which("pcscd") is None and not Path("/usr/sbin/pcscd").exists():
        pytest.fail("pcscd is not installed: run `make setup`")
    daemon = PcscDaemon()
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One test PKI for the session (issuing is cheap; CAs are not)."""
    return Pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def demo_profile() -> CardProfile:
    """The built-in demo card profile."""
    return load_profile("demo")


@dataclass
class InsertedCard:
    """An emulated card in a vpcd reader of the real pcscd."""

    reader: str
    state: CardState
    virtual: VirtualCard
    pki: Pki

    @property
    def anchors(self) -> Path:
        """The PEM file of the PKI's root, for `--anchors`."""
        path: Path = self.pki.path / "root.pem"
        return path

    def remove(self) -> None:
        """Pull the card and wait until pcscd has seen it."""
        self.virtual.remove()  # a no-op when a fault already pulled it
        assert wait_for_card(self.reader, present=False), "pcscd did not see the removal"

    def insert(self) -> None:
        """Insert the card and wait until pcscd has seen it."""
        self.virtual.insert()
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            if wait_for_card(self.reader, present=True, timeout_s=0.5):
                return
            # A fault armed for the agent's first commands pulls the card as soon
            # as they arrive: pcscd may report the insertion and the removal
            # between two looks, but commands reached the card, so it was seen.
            if not self.virtual.inserted and self.virtual.apdus:
                return
        raise AssertionError(
            f"pcscd did not see the insertion in {self.reader} "
            f"(vpcd connected: {self.virtual.inserted}, APDUs: {self.virtual.apdus})"
        )


def insert_card(
    state: CardState, pki: Pki, index: int = 0, latency_ms: float = 0.0, fault: str | None = None
) -> InsertedCard:
    """Plug ``state`` into reader ``index`` (``fault`` armed) and wait for pcscd to see it."""
    virtual = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + index, latency_ms=latency_ms)
    if fault is not None:
        virtual.add_fault(parse_fault(fault))
    card = InsertedCard(reader_name(index), state, virtual, pki)
    # a card pulled by a fault in the previous test may not be gone for pcscd yet
    assert wait_for_card(card.reader, present=False), "the reader still holds another card"
    card.insert()
    return card


@pytest.fixture
def free_reader(pcscd: PcscDaemon) -> Iterator[int]:
    """A vpcd reader index held for this test (other sdbox runs on the machine wait)."""
    with reserve_reader() as index:
        yield index


@pytest.fixture
def demo_card(
    free_reader: int, pki: Pki, demo_profile: CardProfile, tmp_path: Path
) -> Iterator[InsertedCard]:
    """A freshly issued demo card in a reserved vpcd reader."""
    state = issue_card(demo_profile, pki, state_path=tmp_path / "card.json", keygen_seed=b"test")
    card = insert_card(state, pki, free_reader)
    yield card
    card.remove()
