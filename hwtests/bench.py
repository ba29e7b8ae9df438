"""The bench a run talks to: an emulated card in the real pcscd, or a named real reader.

Every connection re-reads the card's CHUID GUID and refuses a card other
than the one the run was started for: on a real bench the suite touches
only the card the engineer named (``--card-serial``), and a card swapped in
the middle of a run stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest
from cryptography import x509

from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession, SignerValidator
from sdbox.smartcard.variants import Capabilities

if TYPE_CHECKING:
    from sdbox.smartcard.emulator.profiles import CardProfile
    from sdbox.trust.pki import Pki

EMULATED = "emulated"
PCSC_PREFIX = "pcsc:"
EMULATED_GUID_SEED = "sdbox hwtests emulated card"
EMULATED_KEYGEN_SEED = b"sdbox hwtests"


class BenchError(SdboxError):
    """The bench cannot be used as asked (bad target, missing reader or card)."""


class WrongCard(SdboxError):
    """The card in the reader is not the one this run was started for."""


@dataclass(frozen=True)
class Target:
    """``emulated`` or ``pcsc:READER NAME``."""

    reader: str | None  # None: the emulated card's reader, chosen at start

    @property
    def emulated(self) -> bool:
        """Whether the suite brings its own (emulated) card."""
        return self.reader is None

    @property
    def label(self) -> str:
        """As given on the command line."""
        return EMULATED if self.reader is None else f"{PCSC_PREFIX}{self.reader}"


def parse_target(value: str) -> Target:
    """``--target``'s value; a typo is an error, never a fallback to some reader."""
    if value == EMULATED:
        return Target(None)
    if value.startswith(PCSC_PREFIX) and value[len(PCSC_PREFIX) :].strip():
        return Target(value[len(PCSC_PREFIX) :])
    raise BenchError(
        f"--target {value!r}: give `emulated` or `pcsc:READER NAME` "
        "(`sdbox card readers` lists the names)"
    )


def normalise_serial(value: str) -> bytes:
    """A card GUID typed as hex, with or without separators (``sdbox card info`` prints it)."""
    digits = "".join(ch for ch in value if ch not in " :-").lower()
    try:
        guid = bytes.fromhex(digits)
    except ValueError:
        guid = b""
    if len(guid) != 16:
        raise BenchError(
            f"--card-serial {value!r}: expected the card's CHUID GUID, 32 hex digits "
            "(`sdbox card info` shows it)"
        )
    return guid


@dataclass
class EmulatedCard:
    """The demo card, issued under a throw-away PKI, plugged into a vpcd reader."""

    reader: str
    pki_path: Path
    finger_seed: int
    management_key: bytes
    state: object  # sdbox.smartcard.emulator.state.CardState
    virtual: object  # sdbox.smartcard.emulator.vpcd.VirtualCard
    anchors: list[x509.Certificate]
    # a one-project card's site catalogue, signed by the bench PKI's directory signer as
    # the centre signs it (sdbox broker project-catalogue); None for a directory card
    catalogue: bytes | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def insert(self) -> None:
        """Plug the card in (vpcd connection) without waiting for pcscd."""
        self.virtual.insert()  # type: ignore[attr-defined]

    def remove(self) -> None:
        """Pull the card out (vpcd connection closed) without waiting for pcscd."""
        self.virtual.remove()  # type: ignore[attr-defined]

    def close(self) -> None:
        """Pull the card, release the reader, stop pcscd if this run started it."""
        self._stack.close()


def start_emulated(workdir: Path, profile_name: str = "demo") -> EmulatedCard:
    """pcscd + vpcd (the running one, or ours) and an emulated card in a reader held for this run.

    ``profile_name``: the demo card, or a card variant's profile (docs/card-variants.md).
    """
    from sdbox.smartcard.emulator.applet import PivApplet
    from sdbox.smartcard.emulator.profiles import guid_for, issue_card, load_profile
    from sdbox.smartcard.emulator.stack import (
        PcscDaemon,
        reader_name,
        reserve_reader,
        wait_for_card,
    )
    from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
    from sdbox.trust.pki import Pki

    stack = contextlib.ExitStack()
    try:
        daemon = PcscDaemon()
        daemon.start()
        stack.callback(daemon.cleanup)
        index = stack.enter_context(reserve_reader())
        reader = reader_name(index)
        pki = Pki.init(workdir / "pki")
        profile = load_profile(profile_name)
        state = issue_card(
            profile,
            pki,
            state_path=workdir / "card.json",
            keygen_seed=EMULATED_KEYGEN_SEED,
            guid=guid_for(EMULATED_GUID_SEED),
        )
        virtual = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + index)
        if not wait_for_card(reader, present=False):
            raise BenchError(f"{reader} still holds another run's card")
        virtual.insert()
        stack.callback(virtual.remove)
        if not wait_for_card(reader, present=True):
            raise BenchError(f"pcscd did not see the emulated card in {reader}")
        anchors = x509.load_pem_x509_certificates((pki.path / "root.pem").read_bytes())
        catalogue = _site_catalogue(profile, pki) if profile.chip.layout == "one-project" else None
        return EmulatedCard(
            reader=reader,
            pki_path=pki.path,
            finger_seed=profile.fingers[0].identity_seed if profile.fingers else 0,
            management_key=profile.management_key,
            state=state,
            virtual=virtual,
            anchors=anchors,
            catalogue=catalogue,
            _stack=stack,
        )
    except BaseException:
        stack.close()
        raise


def _site_catalogue(profile: CardProfile, pki: Pki) -> bytes:
    """The signed project catalogue of the emulated site: the profile's projects at their bubbles."""
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from sdbox.certificates import load_certificate
    from sdbox.smartcard.catalogue import CatalogueEntry, ProjectCatalogue, sign_catalogue
    from sdbox.smartcard.emulator.profiles import bubble_dir

    entries = []
    for spec in profile.projects:
        server = load_certificate((bubble_dir(pki.path, spec.id) / "server.pem").read_bytes())
        entries.append(CatalogueEntry(
            spec.id, spec.name, spec.protocol, spec.endpoint,
            server.public_bytes(serialization.Encoding.DER), spec.second_factor, spec.audio,
        ))  # fmt: skip
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    return sign_catalogue(
        ProjectCatalogue(1, datetime.now(UTC), tuple(entries)), signer.key, signer.cert,
        [pki.project_ca.cert],
    )  # fmt: skip


@dataclass
class Bench:
    """What the scenarios use: the reader, the card's identity, and the run's options."""

    target: Target
    reader: str
    guid: bytes
    allow_write: bool
    anchors: list[x509.Certificate] | None = None
    template: Path | None = None
    bubble: str | None = None
    renewal_config: Path | None = None  # real bench: a test CA and the card's centre
    project_catalogue: Path | None = None  # real bench: the site's, for a one-project card
    interactive: bool = False
    operator_timeout_s: float = 30.0
    emulated: EmulatedCard | None = None
    _capabilities: Capabilities | Literal[False] | None = None  # False: read, no known variant

    @contextlib.contextmanager
    def session(self, *, exclusive: bool = False) -> Iterator[BioSsoSession]:
        """A selected BIO SSO session on the named card; :class:`WrongCard` for any other."""
        from sdbox.smartcard import pcsc

        conn = pcsc.connect(self.reader, exclusive=exclusive)
        try:
            session = BioSsoSession.for_atr(conn, conn.atr)
            session.piv.select()
            check_identity(session.guid, self.guid, self.reader)
            session.stack.stats.reset()
            yield session
        finally:
            conn.close()

    def capabilities(self) -> Capabilities | None:
        """The card's variant capabilities (docs/card-variants.md), read once; None: no known variant.

        Scenarios gate on these, never on a variant's name; on a card of no
        known variant every scenario runs as it always has.
        """
        if self._capabilities is None:
            from sdbox.smartcard import pcsc
            from sdbox.smartcard.variants import ContradictoryCard, identify

            conn = pcsc.connect(self.reader)
            try:
                session = BioSsoSession.for_atr(conn, conn.atr)
                try:
                    found = identify(session, conn.atr)
                except ContradictoryCard:
                    found = None
                if found is not None and found.evidence.guid is not None:
                    check_identity(found.evidence.guid, self.guid, self.reader)
            finally:
                conn.close()
            self._capabilities = (found.capabilities if found else None) or False
        return self._capabilities or None

    def require(self, predicate: Callable[[Capabilities], bool], reason: str) -> None:
        """Skip the scenario, saying why, when the card's variant lacks a capability."""
        caps = self.capabilities()
        if caps is not None and not predicate(caps):
            pytest.skip(reason)

    def validate_signer(self) -> SignerValidator | None:
        """The directory signer's check against ``--anchors`` (None: no anchors given)."""
        if self.anchors is None:
            return None
        from sdbox._cli.card import directory_validator

        validator: SignerValidator = directory_validator(self.anchors)
        return validator

    def probe(self) -> bytes | None:
        """A probe of the holder's primary finger: the emulated sensor or ``--template``."""
        if self.template is not None:
            from sdbox.biometric.sensor import FileSensor

            return asyncio.run(FileSensor(self.template).capture())
        if self.emulated is not None:
            from sdbox.biometric.sensor import EmulatedSensor

            return asyncio.run(EmulatedSensor(self.emulated.finger_seed).capture())
        return None


def check_identity(found: bytes, expected: bytes, reader: str) -> None:
    """Fail closed when the card is not the one named for this run."""
    if found != expected:
        raise WrongCard(
            f"refusing to touch the card in '{reader}': its CHUID GUID is {found.hex()}, "
            f"not {expected.hex()} (--card-serial); put the named test card in, or name this one"
        )


def read_guid(reader: str) -> bytes:
    """The CHUID GUID of the card in ``reader`` (SELECT and one GET DATA: nothing is written)."""
    from sdbox.smartcard import pcsc

    conn = pcsc.connect(reader)
    try:
        session = BioSsoSession.for_atr(conn, conn.atr)
        session.piv.select()
        return session.guid
    finally:
        conn.close()
