"""The renewal test bench: a due card, OpenSSL's CMP mock server as the CA, and checks.

The CA side (RA certificate, mock server, canned certificates for the card's
next key, CRLs) is :mod:`tests.integration.cmp_ca`, shared with the
hardware-in-the-loop suite's renewal scenario.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.broker.cards import CardManagement, register_entry
from sdbox.centre.cards import BrokerCentre
from sdbox.identity import DevelopmentIdentity
from sdbox.renewal.flow import Renewer, Result
from sdbox.renewal.ports import Centre, HttpCmpTransport, LocalCentre, RenewalTrust
from sdbox.renewal.state import Journal
from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Directory, certificate_sha256
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import CardProfile, issue_card
from sdbox.smartcard.emulator.state import CardState, deterministic_key
from sdbox.smartcard.emulator.vpcd import VirtualCard
from sdbox.smartcard.errors import CardBusy
from sdbox.smartcard.profile import (
    RETIRED_SLOTS,
    ObjectTag,
    Slot,
    certificate_object,
    decode_certificate,
    parse_key_history,
)
from sdbox.trust import validate_directory_signer
from sdbox.trust.pki import Pki
from sdbox.trust.possession import prove_key_agreement
from sdbox.trust.store import RevocationStore
from tests.cli import sdbox_argv
from tests.integration.agent_env import BrokerEnv, reference_broker
from tests.integration.cmp_ca import (
    CmpMock,
    make_cmp_ca,
    pem,
    renewed_certificate,
    revocation_store,
    write,
)

PROJECT = "census-2021"  # slot 82: renewing it is the hard case (a slot in the middle)
PIN = "123456"  # the demo profile's published test PIN
PIN_LINE = PIN.encode() + b"\n"
SEED = b"renewal-test"
WINDOW_DAYS = 60


class HookedCard(VirtualCard):
    """A virtual card that calls ``on_apdu(n)`` after processing the n-th APDU.

    ``on_apdu`` returning True pulls the card before the answer leaves: the
    command took effect on the card, the host never learns it.
    """

    on_apdu: Callable[[int], bool] | None = None

    def _command(self, command: bytes) -> bytes | None:
        answer = super()._command(command)
        if answer is not None and self.on_apdu is not None and self.on_apdu(self.apdus):
            return None
        return answer


@dataclass
class Bench:
    """Everything a renewal test needs, in ``work``."""

    work: Path
    pki: Pki
    state_path: Path
    snapshot: Path
    reader: str
    card: HookedCard
    mock: CmpMock
    ra_cert: x509.Certificate
    config: Path
    journal: Path
    crl_dir: Path
    anchors: list[x509.Certificate]
    intermediates: list[x509.Certificate]
    mocks: dict[int, CmpMock] = field(default_factory=dict)

    # -- card state -------------------------------------------------------------

    @property
    def state(self) -> CardState:
        """The card's current state."""
        return self.card.applet.state

    def reset(self) -> None:
        """Put the card back as issued (from the saved copy), without reinserting."""
        shutil.copyfile(self.snapshot, self.state_path)
        self.card.applet = PivApplet(CardState.load(self.state_path))
        self.card.apdus = 0
        self.card.on_apdu = None
        for path in self.pending():
            path.unlink()

    def pending(self) -> list[Path]:
        """Journal files left behind (one per card with an unfinished renewal)."""
        return sorted(self.journal.parent.glob(f"{self.journal.stem}-*{self.journal.suffix}"))

    def next_key(self, offset: int = 0) -> ec.EllipticCurvePublicKey:
        """The public key the card's next GENERATE will produce."""
        key = deterministic_key(SEED, self.state.keygen_counter + offset, ec.SECP256R1())
        return key.public_key()

    def old_certificate(self, slot: int = 0x82) -> x509.Certificate:
        """The certificate in ``slot`` as the card holds it."""
        return x509.load_der_x509_certificate(
            decode_certificate(self.state.objects[certificate_object(slot)])
        )

    def mock_for_next_key(self) -> CmpMock:
        """A mock CA serving the certificate for the card's next key (one per key, kept)."""
        counter = self.state.keygen_counter
        if counter not in self.mocks:
            mock = CmpMock(self.work, *self._ra_files())
            canned = renewed_certificate(self.pki, self.old_certificate(), self.next_key())
            self.mocks[counter] = mock.start(canned)
        return self.mocks[counter]

    def _ra_files(self) -> tuple[Path, Path, Path]:
        return self.mock.ra_cert, self.mock.ra_key, self.mock.trusted

    # -- trust --------------------------------------------------------------------

    def trust(self, now: Callable[[], datetime] | None = None) -> RenewalTrust:
        """The box's trust for renewal answers."""
        store = RevocationStore(self.crl_dir, build_time=datetime(2026, 1, 1, tzinfo=UTC))
        return RenewalTrust(
            self.anchors,
            self.intermediates,
            store,
            self.ra_cert,
            now or (lambda: datetime.now(UTC)),
        )

    def validate_signer(self) -> Callable[[x509.Certificate, list[x509.Certificate]], None]:
        """The directory signer check."""

        def check(signer: x509.Certificate, chain: list[x509.Certificate]) -> None:
            validate_directory_signer(
                signer, [*chain, *self.intermediates], self.anchors, at=datetime.now(UTC)
            )

        return check

    # -- running ------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self) -> Iterator[BioSsoSession]:
        """A verified session on the card."""
        conn = _connect(self.reader)
        try:
            session = BioSsoSession(conn)
            session.piv.select()
            session.piv.verify_pin(PIN)
            yield session
        finally:
            conn.close()

    def renew(
        self,
        url: str,
        *,
        trust: RenewalTrust | None = None,
        centre: Callable[[BioSsoSession], Centre] | None = None,
        **kw: Any,
    ) -> list[Result]:
        """One in-process renewal run (the centre played locally unless ``centre`` is given)."""
        with self.session() as session:
            renewer = Renewer(
                session=session,
                centre=(
                    centre(session)
                    if centre is not None
                    else LocalCentre(self.pki.path, self.state.management_key)
                ),
                transport=HttpCmpTransport(url, timeout_s=5),
                trust=trust or self.trust(),
                journal=Journal(self.journal),
                validate_signer=self.validate_signer(),
                window=timedelta(days=WINDOW_DAYS),
                max_wait_s=2.0,
                sleep=lambda _s: None,
            )
            return renewer.run(**kw)

    def cli(
        self, *args: str, timeout: float = 60, config: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """`sdbox renew` as a process (give it the PIN on stdin)."""
        return subprocess.Popen(
            [*sdbox_argv(), "renew", "--config", str(config or self.config),
             "--reader", self.reader, "--pin", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    # -- what a user would notice ---------------------------------------------------

    def check_card_works(self, *, strict: bool = True) -> tuple[int, x509.Certificate]:
        """The project's directory entry, certificate and key agree and validate.

        Returns (slot, certificate). Also checks that on-card certificates are
        contiguous from 82 and that Key History counts them.
        """
        with self.session() as session:
            directory = session.read_directory(self.validate_signer())
            project = directory.project(PROJECT)
            cert = session.certificate(project.slot)
            assert certificate_sha256(cert.public_bytes(serialization.Encoding.DER)) == (
                project.certificate_sha256
            ), "the directory names a certificate the slot does not hold"
            prove_key_agreement(cert, project.slot, session.ecdh)
            self.trust().check_project(cert, PROJECT)
            for other in directory.projects:
                other_cert = session.certificate(other.slot)
                prove_key_agreement(other_cert, other.slot, session.ecdh)
        self.check_contiguous(directory, strict=strict)
        return project.slot, cert

    def check_contiguous(self, directory: Directory, *, strict: bool = True) -> None:
        """Key History = the certificates on the card, contiguous from 82, covering the directory.

        Not ``strict`` (just after an interruption): a certificate written past
        the range that Key History does not count yet is allowed (OpenSC does
        not see it; the next run counts it or removes it).
        """
        count = parse_key_history(self.state.objects[ObjectTag.KEY_HISTORY])
        with_cert = [s for s in RETIRED_SLOTS if certificate_object(s) in self.state.objects]
        if not strict:
            with_cert = with_cert[:count]
        assert with_cert == list(RETIRED_SLOTS[:count]), (count, [f"{s:02X}" for s in with_cert])
        assert {p.slot for p in directory.projects} <= set(with_cert)


def make_bench(work: Path, pki: Pki, profile: CardProfile, reader_index: int, reader: str) -> Bench:
    """Issue a card whose first project is due, a mock CA, CRLs and a configuration."""
    specs = list(profile.projects)
    specs[0] = replace(specs[0], valid_days=30)  # only census-2021 is inside the window
    profile = replace(profile, projects=tuple(specs))
    state_path = work / "card.json"
    state = issue_card(profile, pki, state_path=state_path, keygen_seed=SEED)
    snapshot = work / "card.issued.json"
    shutil.copyfile(state_path, snapshot)

    cmp_ca = make_cmp_ca(work, pki)
    anchors_path = write(work / "roots.pem", pem(pki.root.cert))
    intermediates_path = write(
        work / "intermediates.pem", b"".join(pem(c) for c in pki.intermediates)
    )
    crl_dir = work / "crl"
    revocation_store(crl_dir, pki)
    key_file = write(work / "management.key", state.management_key.hex().encode(), 0o600)
    journal = work / "journal.json"
    mock = cmp_ca.mock(work)
    canned = renewed_certificate(
        pki, _old(state), deterministic_key(SEED, state.keygen_counter, ec.SECP256R1()).public_key()
    )
    mock.start(canned)
    config = write(
        work / "agent.toml",
        f"""
[trust]
anchors = "{anchors_path}"
intermediates = "{intermediates_path}"
crl_dir = "{crl_dir}"
build_time = "2026-01-01T00:00:00+00:00"

[policy]
renewal_window_days = {WINDOW_DAYS}

[renewal]
cmp_url = "{mock.url}"
cmp_server_cert = "{cmp_ca.ra_cert_path}"
journal = "{journal}"
timeout_s = 5
max_wait_s = 2
dev_centre_pki = "{pki.path}"
dev_management_key_file = "{key_file}"
""".encode(),
    )
    card = HookedCard(PivApplet(state), port=_vpcd_port(reader_index))
    return Bench(
        work=work, pki=pki, state_path=state_path, snapshot=snapshot, reader=reader, card=card,
        mock=mock, ra_cert=cmp_ca.ra_cert, config=config, journal=journal, crl_dir=crl_dir,
        anchors=[pki.root.cert], intermediates=list(pki.intermediates),
        mocks={state.keygen_counter: mock},
    )  # fmt: skip


def _connect(reader: str) -> Any:
    """An exclusive connection; waits while pcscd still counts a killed client's handle."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return pcsc.connect(reader, exclusive=True)
        except CardBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _old(state: CardState) -> x509.Certificate:
    return x509.load_der_x509_certificate(
        decode_certificate(state.objects[certificate_object(0x82)])
    )


def _vpcd_port(index: int) -> int:
    from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT

    return VPCD_BASE_PORT + index


@dataclass
class CentreBench:
    """The reference broker as the card's centre (9B relay, directory signing)."""

    broker: BrokerEnv
    register: Path
    identity: DevelopmentIdentity

    @property
    def cards(self) -> CardManagement:
        """The broker's card management (to count what it signed, or to break it)."""
        cards = self.broker.server.broker.cards
        assert isinstance(cards, CardManagement)
        return cards

    def anchors(self) -> list[x509.Certificate]:
        """The roots the box checks the broker's TLS certificate with."""
        return x509.load_pem_x509_certificates(self.broker.anchors.read_bytes())

    def centre(self, session: BioSsoSession) -> BrokerCentre:
        """The box's side, for ``Bench.renew(centre=...)``."""
        return BrokerCentre(
            self.broker.url, anchors=self.anchors(), identity=self.identity, session=session
        )


@contextlib.contextmanager
def centre_broker(bench: Bench, *, window_days: int = WINDOW_DAYS) -> Iterator[CentreBench]:
    """`sdbox broker` knowing the bench's card (its management key and holder certificate)."""
    holder = x509.load_der_x509_certificate(
        decode_certificate(bench.state.objects[certificate_object(Slot.AUTHENTICATION)])
    )
    register = bench.work / "cards.json"
    register.write_text(
        json.dumps({bench.state.guid.hex(): register_entry(bench.state.management_key, holder)})
    )
    register.chmod(0o600)
    with reference_broker(
        bench.work / "broker", bench.pki, {}, {}, card_register=register,
        renewal_window_days=window_days,
    ) as env:  # fmt: skip
        yield CentreBench(env, register, DevelopmentIdentity(env.box_certificate, env.box_key))
