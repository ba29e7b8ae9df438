"""The remote enrolment bench: an emulated card in the real pcscd, the reference broker with
card management and remote enrolment, an enrolment operator, and the box's flow."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.bioenrol import RemoteEnrolment, operator_check
from sdbox.biometric.sensor import EmulatedSensor
from sdbox.broker.bioenrol import BioEnrolment, box_id_of, write_operator
from sdbox.broker.cards import register_entry
from sdbox.centre.bioenrol import BioEnrolmentCentre
from sdbox.identity import DevelopmentIdentity
from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import CardProfile, issue_card, load_profile
from sdbox.smartcard.emulator.stack import (
    PcscDaemon,
    reader_name,
    reserve_reader,
    wait_for_card,
)
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT
from sdbox.smartcard.errors import CardBusy, WrongFinger
from sdbox.smartcard.profile import KeyRef, Slot, certificate_object, decode_certificate
from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore
from tests.integration.agent_env import BrokerEnv, reference_broker
from tests.integration.renewal_env import HookedCard

PIN = "123456"  # the demo profile's published test PIN
OLD = {"primary": 1001, "secondary": 1002}  # the demo profile's fingers (identity seeds)
NEW = {"primary": 2001, "secondary": 2002}  # the fingers enrolled remotely
OPERATOR = "alice"
OPERATOR_NAME = "Alice Martin (card office)"
BOX_ID = "test-box-1"  # the box id reference_broker's development box certificate names


class TracedCard(HookedCard):
    """A hooked card that also keeps each command's INS P1 P2 (the matrix names its points)."""

    trace: list[str]

    def _command(self, command: bytes) -> bytes | None:
        if not hasattr(self, "trace"):
            self.trace = []
        self.trace.append(command[1:4].hex(" ").upper())
        return super()._command(command)


@dataclass
class EnrolBench:
    """Everything a remote enrolment test needs, in ``work``."""

    work: Path
    pki: Pki
    reader: str
    card: TracedCard
    state_path: Path
    snapshot: Path
    broker: BrokerEnv
    identity: DevelopmentIdentity
    bio_dir: Path

    @property
    def state(self) -> CardState:
        """The card's current state."""
        return self.card.applet.state

    @property
    def centre(self) -> BioEnrolment:
        """The broker's remote enrolment (the operator's commands run on it)."""
        bio = self.broker.server.broker.bio
        assert isinstance(bio, BioEnrolment)
        return bio

    @property
    def register(self) -> dict[str, dict[str, Any]]:
        """The centre's authorisations, as stored."""
        path = self.bio_dir / "register.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def reset(self) -> None:
        """The card as issued, no authorisation, inserted."""
        if not self.card.inserted:
            self.reinsert()
        shutil.copyfile(self.snapshot, self.state_path)
        self.card.applet = PivApplet(CardState.load(self.state_path))
        self.card.apdus = 0
        self.card.trace = []
        self.card.on_apdu = None
        (self.bio_dir / "register.json").unlink(missing_ok=True)
        shutil.rmtree(self.bio_dir / "operators")  # a test may have replaced an operator's key
        shutil.copytree(self.work / "operators.issued", self.bio_dir / "operators")

    def reinsert(self) -> None:
        """Put the card back after a pull."""
        deadline = time.monotonic() + 10
        while self.card.inserted and time.monotonic() < deadline:  # removal runs in a thread
            time.sleep(0.005)
        assert wait_for_card(self.reader, present=False)
        self.card.insert()
        assert wait_for_card(self.reader, present=True)

    def open(self, fingers: tuple[str, ...] = ("primary",), **kwargs: Any) -> dict[str, Any]:
        """The operator opens an authorisation for the bench's card and box."""
        args: dict[str, Any] = {"card_guid": self.state.guid, "box_id": box_id_of(self.identity.certificate),
                                "fingers": fingers, "minutes": 15, "operator": OPERATOR}  # fmt: skip
        args.update(kwargs)
        return self.centre.open(**args)

    @contextlib.contextmanager
    def session(self) -> Iterator[BioSsoSession]:
        """An exclusive connection to the card, PIV selected."""
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = pcsc.connect(self.reader, exclusive=True)
                break
            except CardBusy:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            session = BioSsoSession.for_atr(conn, conn.atr)
            session.piv.select()
            yield session
        finally:
            conn.close()

    def client(self, timeout_s: float = 10.0) -> BioEnrolmentCentre:
        """The box's client of the centre."""
        anchors = x509.load_pem_x509_certificates(self.broker.anchors.read_bytes())
        return BioEnrolmentCentre(self.broker.url, anchors=anchors, identity=self.identity,
                                  timeout_s=timeout_s)  # fmt: skip

    def enrolment(self, session: BioSsoSession, client: BioEnrolmentCentre | None = None,
                  ) -> RemoteEnrolment:  # fmt: skip
        """The box's flow on ``session``."""
        crls = RevocationStore(self.work / "broker" / "crl",
                               build_time=self.pki.root.cert.not_valid_before_utc)  # fmt: skip
        check = operator_check([self.pki.root.cert], self.pki.intermediates, crls)
        return RemoteEnrolment(session, client or self.client(), check)

    def run(
        self,
        fingers: tuple[str, ...] = ("primary",),
        *,
        client: BioEnrolmentCentre | None = None,
        pin: str = PIN,
    ) -> RemoteEnrolment:
        """The whole flow, the operator confirming the code the box shows."""
        with self.session() as session:
            flow = self.enrolment(session, client)
            pending = flow.authorise()
            self.centre.confirm(pending.authorisation.id, pending.code)
            flow.wait_for_operator(pending, poll_s=0.05)
            flow.verify_holder(pin)
            references = asyncio.run(flow.capture(pending, _sensor(fingers)))
            session_id = flow.write(pending, references)
            asyncio.run(flow.confirm(pending, _sensor(fingers, start=10), session_id))
            return flow

    def which(self, finger: str) -> str:
        """``old`` or ``new``: which identity the card's reference for ``finger`` matches.

        A match resets the counter; at most one try is spent on the other identity.
        """
        ref = KeyRef.FINGER_PRIMARY if finger == "primary" else KeyRef.FINGER_SECONDARY
        with self.session() as session:
            for label, seeds in (("new", NEW), ("old", OLD)):
                sensor = EmulatedSensor(seeds[finger])
                sensor.captures = 20
                try:
                    session.piv.verify_finger(ref, asyncio.run(sensor.capture()))
                except WrongFinger:
                    continue
                return label
        return "neither"


class _Fingers:
    """A sensor presenting the authorised fingers in turn (as the greeter prompts them)."""

    def __init__(self, fingers: tuple[str, ...], start: int, per_finger: int) -> None:
        self._sensors = [EmulatedSensor(NEW[f]) for f in fingers]
        for sensor in self._sensors:
            sensor.captures = start
        self._per_finger, self._count = per_finger, 0

    async def capture(self) -> bytes:
        index = min(self._count // self._per_finger, len(self._sensors) - 1)
        self._count += 1
        return await self._sensors[index].capture()


def _sensor(fingers: tuple[str, ...], start: int = 0) -> _Fingers:
    # enrolment takes 3 captures per finger (EnrolmentPolicy), the confirmation one
    return _Fingers(fingers, start, 1 if start else 3)


def make_bench(work: Path, pki: Pki, profile: CardProfile, reader_index: int, reader: str,
               ) -> contextlib.AbstractContextManager[EnrolBench]:  # fmt: skip
    """Issue the card, register it at the broker, certify an operator, start the broker."""

    @contextlib.contextmanager
    def bench() -> Iterator[EnrolBench]:
        state_path = work / "card.json"
        state = issue_card(profile, pki, state_path=state_path, keygen_seed=b"bioenrol-test")
        snapshot = work / "card.issued.json"
        shutil.copyfile(state_path, snapshot)
        holder = x509.load_der_x509_certificate(
            decode_certificate(state.objects[certificate_object(Slot.AUTHENTICATION)])
        )
        register = work / "cards.json"
        register.write_text(
            json.dumps({state.guid.hex(): register_entry(state.management_key, holder)})
        )
        register.chmod(0o600)
        bio_dir = work / "bio"
        key = ec.generate_private_key(ec.SECP256R1())
        write_operator(bio_dir / "operators", OPERATOR, key,
                       pki.issue_enrolment_operator(key.public_key(), operator=OPERATOR_NAME))  # fmt: skip
        shutil.copytree(bio_dir / "operators", work / "operators.issued")
        card = TracedCard(PivApplet(state), port=VPCD_BASE_PORT + reader_index)
        with reference_broker(work / "broker", pki, {}, {}, card_register=register,
                              bio_enrolment=bio_dir) as env:  # fmt: skip
            card.insert()
            assert wait_for_card(reader, present=True)
            try:
                yield EnrolBench(work, pki, reader, card, state_path, snapshot, env,
                                 DevelopmentIdentity(env.box_certificate, env.box_key), bio_dir)  # fmt: skip
            finally:
                card.remove()

    return bench()


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


def swap_card(bench: EnrolBench, profile: str) -> None:
    """Put a freshly issued card of another variant (a built-in profile) in the reader."""
    state = issue_card(load_profile(profile), bench.pki, state_path=bench.work / f"{profile}.json")
    bench.card.remove()
    bench.card.applet = PivApplet(state)
    bench.reinsert()
