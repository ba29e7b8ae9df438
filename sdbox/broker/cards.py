"""The centre's side of card management during renewal (docs/broker-protocol.md).

The box renews a project certificate on the card, but the card's management
key (9B) and the directory-signing key stay at the centre: the box relays
the card's mutual authentication here and asks for its next directory to be
signed. The reference broker acts as the registration authority:

* card management opens only for a known card (its GUID in the register,
  with the holder certificate issued for it), a box it knows, and a holder
  verified on that card now (a fresh signature by the holder key, 9A), and
  only while one of the card's projects is inside the renewal window;
* the card's witness is decrypted and its answer to the centre's own
  challenge checked with the card's key, which never leaves this process;
* a directory is signed only if it is the card's current one with exactly
  one project moved to a new certificate, issued by the project CA for the
  same project, whose key the card has just proven by ECDH to the centre.

A compromised box can therefore renew a due project of a card that is in it
with its holder verified, and nothing else.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sdbox.centre.protocol import (
    NONCE_BYTES,
    CardTranscript,
    ProtocolError,
    Refused,
    Transcript,
    b64,
    certificate_field,
    key_endpoint,
    proof_mac,
    text_field,
    unb64,
)
from sdbox.config import ConfigError
from sdbox.errors import SdboxError
from sdbox.smartcard.directory import (
    Directory,
    SignedDirectory,
    certificate_sha256,
    parse_directory_tbs,
    parse_signed_directory,
    sign_directory,
)
from sdbox.smartcard.profile import MANAGEMENT_CHALLENGE_LENGTH, RETIRED_SLOTS
from sdbox.trust import Purpose, validate
from sdbox.trust.pki import Pki
from sdbox.trust.possession import verify_signature
from sdbox.trust.store import RevocationStore

_log = logging.getLogger("sdbox.broker.cards")
MAX_AUTHENTICATIONS = 4  # per card session: the renewal needs one (two after a card reset)
ISSUED_SKEW = timedelta(minutes=10)  # how far the box's clock may be from ours in a directory


@dataclass(frozen=True)
class CardRecord:
    """What the centre knows of one card."""

    management_key: bytes = field(repr=False)
    holder_certificate_sha256: bytes


def load_register(path: Path) -> dict[bytes, CardRecord]:
    """The card register: ``{"<GUID hex>": {"management_key": hex, "holder_certificate_sha256": hex}}``."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: the card register cannot be read ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the card register must be a JSON object keyed by card GUID")
    cards: dict[bytes, CardRecord] = {}
    for guid, entry in raw.items():
        try:
            key = bytes.fromhex(entry["management_key"])
            holder = bytes.fromhex(entry["holder_certificate_sha256"])
            guid_bytes = bytes.fromhex(guid)
        except (TypeError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"{path}: card {guid!r} needs hex 'management_key' and "
                f"'holder_certificate_sha256' ({exc})"
            ) from exc
        if len(key) not in (16, 24, 32) or len(holder) != 32 or len(guid_bytes) != 16:
            raise ConfigError(
                f"{path}: card {guid!r}: a 16-byte GUID, an AES key and a SHA-256 digest expected"
            )
        cards[guid_bytes] = CardRecord(key, holder)
    return cards


def add_card(path: Path, guid: bytes, management_key: bytes, holder: x509.Certificate) -> None:
    """Put one card in the register (replacing its entry), atomically, mode 0600."""
    if len(guid) != 16 or len(management_key) not in (16, 24, 32):
        raise ConfigError("a card needs a 16-byte GUID and a 16/24/32-byte AES management key")
    cards = {g.hex(): {"management_key": r.management_key.hex(),
                       "holder_certificate_sha256": r.holder_certificate_sha256.hex()}
             for g, r in (load_register(path).items() if path.exists() else ())}  # fmt: skip
    cards[guid.hex()] = register_entry(management_key, holder)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(cards, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def register_entry(management_key: bytes, holder: x509.Certificate) -> dict[str, str]:
    """One card's register entry (written at card issuance)."""
    der = holder.public_bytes(serialization.Encoding.DER)
    return {
        "management_key": management_key.hex(),
        "holder_certificate_sha256": certificate_sha256(der).hex(),
    }


@dataclass
class _KeyExchange:
    exchange: str
    nonce: bytes
    ephemeral: ec.EllipticCurvePrivateKey
    point: bytes
    project: str
    slot: int
    certificate: x509.Certificate


@dataclass
class _CardSession:
    guid: bytes
    record: CardRecord
    box_certificate: x509.Certificate
    holder_certificate: x509.Certificate
    directory: SignedDirectory
    transcript: CardTranscript
    expires: float
    opened: bool = False  # holder and box signatures verified
    card_proven: bool = False  # the card answered the centre's challenge with its 9B key
    challenge: bytes | None = None
    authentications: int = 0
    key: _KeyExchange | None = None
    enrolment: str = ""  # a remote enrolment's authorisation id: 9B only, no directory


class CardManagement:
    """The register, the sessions and the checks (HTTP-free; the broker routes to it)."""

    def __init__(
        self,
        *,
        register: Path,
        directory_pki: Path,
        anchors: list[x509.Certificate],
        intermediates: list[x509.Certificate],
        store: RevocationStore,
        window: timedelta,
        lifetime_s: int,
    ) -> None:
        self._register_path = register
        self._pki_path = directory_pki
        self.anchors, self.intermediates, self.store = anchors, intermediates, store
        self.window, self.lifetime_s = window, lifetime_s
        self._sessions: dict[str, _CardSession] = {}
        self._lock = threading.Lock()
        self.directories_signed = 0
        # remote biometric enrolment (sdbox.broker.bioenrol) admits its sessions: raises
        # Refused unless the authorisation is confirmed for this card and box
        self.admit_enrolment: Callable[[str, bytes, bytes], None] | None = None

    # -- the requests ----------------------------------------------------------------

    def open(self, request: dict[str, Any]) -> dict[str, Any]:
        """Step 1: the card, the box, the holder certificate, the current directory."""
        guid = _guid(request)
        record = load_register(self._register_path).get(guid)
        if record is None:
            raise Refused(
                "unknown_card", "the centre does not know this card: call your card office"
            )
        box_der = unb64(request.get("box_certificate"), "box_certificate")
        holder_der = unb64(request.get("holder_certificate"), "holder_certificate")
        directory_der = unb64(request.get("directory"), "directory")
        box = certificate_field(box_der, "box")
        holder = certificate_field(holder_der, "holder")
        now = datetime.now(UTC)
        self._validate(box, Purpose.BOX, "box_identity", "this box is not recognised", now)
        if certificate_sha256(holder_der) != record.holder_certificate_sha256:
            raise Refused(
                "holder_certificate", "the holder certificate was not issued for this card"
            )
        self._validate(holder, Purpose.HOLDER, "holder_certificate", "the holder certificate", now)
        signed = self._current_directory(directory_der, guid)
        enrolment = ""
        if request.get("purpose", "renewal") == "enrolment":
            # the card's 9B for writing finger references, under an operator's authorisation
            # (docs/remote-enrolment.md) instead of a project due for renewal
            if self.admit_enrolment is None:
                raise Refused("enrolment", "this centre does not enrol fingers remotely", 404)
            enrolment = text_field(request, "authorisation")
            self.admit_enrolment(enrolment, guid, box_der)
        elif not any(p.not_after - now <= self.window for p in signed.directory.projects):
            raise Refused("not_due", "no project on this card is due for renewal")
        exchange, nonce = secrets.token_urlsafe(16), secrets.token_bytes(NONCE_BYTES)
        transcript = CardTranscript(exchange, nonce, guid, box_der, holder_der, directory_der)
        with self._lock:
            self._expire()
            self._sessions[exchange] = _CardSession(
                guid, record, box, holder, signed, transcript,
                time.monotonic() + self.lifetime_s, enrolment=enrolment,
            )  # fmt: skip
        return {"exchange": exchange, "nonce": b64(nonce), "expires_in": self.lifetime_s}

    def authenticate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Step 2: the holder's signature (on the card) and the box's, over the transcript."""
        session = self._session(request, opened=False)
        message = session.transcript.encode()
        try:
            verify_signature(
                session.holder_certificate,
                unb64(request.get("holder_signature"), "holder_signature"),
                message,
            )
        except SdboxError as exc:
            self._drop(request)
            raise Refused("holder", "the holder was not verified on this card") from exc
        box_key = session.box_certificate.public_key()
        try:
            if not isinstance(box_key, ec.EllipticCurvePublicKey):
                raise InvalidSignature
            box_key.verify(
                unb64(request.get("box_signature"), "box_signature"),
                message,
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature as exc:
            self._drop(request)
            raise Refused("box_identity", "the box did not prove its identity") from exc
        session.opened = True
        _log.info(
            "card management opened for card %s by box %s",
            session.guid.hex(), session.box_certificate.subject.rfc4514_string(),
        )  # fmt: skip
        return {"session": session.transcript.exchange, "expires_in": self.lifetime_s}

    def witness(self, request: dict[str, Any]) -> dict[str, Any]:
        """9B step 1: decrypt the card's witness, and give the centre's challenge."""
        session = self._session(request)
        if session.authentications >= MAX_AUTHENTICATIONS:
            raise Refused("card", "too many management authentications in one session")
        session.authentications += 1
        encrypted = unb64(request.get("witness"), "witness")
        if len(encrypted) != MANAGEMENT_CHALLENGE_LENGTH:
            raise ProtocolError("field 'witness' must be one AES block")
        session.challenge = secrets.token_bytes(MANAGEMENT_CHALLENGE_LENGTH)
        return {
            "witness": b64(_ecb(session.record.management_key, encrypted, decrypt=True)),
            "challenge": b64(session.challenge),
        }

    def response(self, request: dict[str, Any]) -> dict[str, Any]:
        """9B step 2: the card's encryption of the centre's challenge."""
        session = self._session(request)
        challenge, session.challenge = session.challenge, None  # one answer per challenge
        if challenge is None:
            raise Refused("card", "no management challenge is outstanding")
        expected = _ecb(session.record.management_key, challenge, decrypt=False)
        if not secrets.compare_digest(unb64(request.get("response"), "response"), expected):
            raise Refused("card", "the card did not prove its management key: not a genuine card")
        session.card_proven = True
        return {"card": "authenticated"}

    def proven(self, session_id: str, guid: bytes) -> bool:
        """Whether card session ``session_id`` is for ``guid`` and the card proved its 9B key."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
        return session is not None and session.guid == guid and session.card_proven

    def prove(self, request: dict[str, Any]) -> dict[str, Any]:
        """Before a directory: the new certificate, answered with an ephemeral key for ECDH."""
        session = self._session(request)
        if session.enrolment:
            raise Refused("directory", "an enrolment session does not change the directory")
        project = text_field(request, "project")
        slot = request.get("slot")
        if not isinstance(slot, int) or slot not in RETIRED_SLOTS:
            raise ProtocolError("field 'slot' must be a retired key slot (0x82-0x95)")
        der = unb64(request.get("certificate"), "certificate")
        certificate = certificate_field(der, "project")
        try:
            current = session.directory.directory.project(project)
        except SdboxError as exc:
            raise Refused("directory", exc.message) from exc
        if current.not_after - datetime.now(UTC) > self.window:
            raise Refused("not_due", f"project '{project}' is not due for renewal")
        self._validate(
            certificate, Purpose.PROJECT, "project_certificate", "the new certificate",
            datetime.now(UTC), project=project,
        )  # fmt: skip
        public = certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)  # Purpose.PROJECT guarantees it
        ephemeral = ec.generate_private_key(public.curve)
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        exchange, nonce = secrets.token_urlsafe(16), secrets.token_bytes(NONCE_BYTES)
        session.key = _KeyExchange(exchange, nonce, ephemeral, point, project, slot, certificate)
        return {"exchange": exchange, "nonce": b64(nonce), "ephemeral": b64(point)}

    def directory(self, request: dict[str, Any]) -> dict[str, Any]:
        """Sign the card's next directory: one project moved to its proven new key."""
        session = self._session(request)
        key, session.key = session.key, None  # single use
        if key is None or request.get("exchange") != key.exchange:
            raise Refused("exchange", "the key proof expired or was already used: try again")
        if not session.card_proven:
            raise Refused("card", "the card has not proven its management key in this session")
        der = serialization.Encoding.DER
        transcript = Transcript(
            key.exchange, key.nonce, key.project, key_endpoint(session.guid, key.slot),
            session.box_certificate.public_bytes(der), key.certificate.public_bytes(der), key.point,
        )  # fmt: skip
        public = key.certificate.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        expected = proof_mac(key.ephemeral.exchange(ec.ECDH(), public), transcript)
        if not secrets.compare_digest(unb64(request.get("proof"), "proof"), expected):
            raise Refused(
                "possession", f"slot {key.slot:02X} does not hold the new certificate's key"
            )
        try:
            proposed = parse_directory_tbs(unb64(request.get("directory"), "directory"))
        except SdboxError as exc:
            raise Refused("directory", exc.message, 400) from exc
        self._check_next(session.directory.directory, proposed, key)
        pki = Pki.open(self._pki_path)
        signer = pki.directory_signer
        if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
            raise Refused("directory", "the centre's directory signer has no EC key", 503)
        signed = sign_directory(proposed, signer.key, signer.cert, [pki.project_ca.cert])
        session.directory = signed  # a second project renewed in this session builds on it
        self.directories_signed += 1
        _log.info(
            "directory %d signed for card %s: project %s now in slot %02X",
            proposed.sequence, session.guid.hex(), key.project, key.slot,
        )  # fmt: skip
        return {"directory": b64(signed.encode())}

    # -- checks ------------------------------------------------------------------------

    def _check_next(self, current: Directory, proposed: Directory, key: _KeyExchange) -> None:
        """``proposed`` is ``current`` with only ``key.project`` moved to ``key.certificate``."""
        now = datetime.now(UTC)
        cert = key.certificate
        if proposed.card_guid != current.card_guid:
            raise Refused("directory", "the proposed directory is for another card")
        if proposed.sequence != current.sequence + 1:
            raise Refused(
                "directory", "the proposed directory does not follow the card's current one"
            )
        if abs(proposed.issued - now) > ISSUED_SKEW:
            raise Refused(
                "directory", "the proposed directory's issue time is not now: check the box's clock"
            )
        if any(p.slot == key.slot for p in current.projects if p.id != key.project):
            raise Refused("directory", f"slot {key.slot:02X} belongs to another project")
        expected = tuple(
            replace(
                p, slot=key.slot,
                certificate_sha256=certificate_sha256(cert.public_bytes(serialization.Encoding.DER)),
                subject=cert.subject.rfc4514_string(), not_after=cert.not_valid_after_utc,
            )
            if p.id == key.project else p
            for p in current.projects
        )  # fmt: skip
        if proposed.projects != expected:
            raise Refused(
                "directory",
                f"the proposed directory changes more than project '{key.project}''s certificate",
            )

    def _current_directory(self, encoded: bytes, guid: bytes) -> SignedDirectory:
        try:
            signed = parse_signed_directory(encoded)
            signed.verify(card_guid=guid, validate_signer=self._signer_check)
        except SdboxError as exc:
            raise Refused(
                "directory", f"the card's directory is not one the centre signed: {exc.message}"
            ) from exc
        return signed

    def _signer_check(self, signer: x509.Certificate, chain: list[x509.Certificate]) -> None:
        validate(
            signer, [*chain, *self.intermediates], self.anchors,
            at=datetime.now(UTC), purpose=Purpose.DIRECTORY_SIGNING, crls=self.store,
        )  # fmt: skip

    def _validate(
        self,
        certificate: x509.Certificate,
        purpose: Purpose,
        code: str,
        what: str,
        now: datetime,
        *,
        project: str | None = None,
    ) -> None:
        try:
            validate(
                certificate, self.intermediates, self.anchors, at=now, purpose=purpose,
                crls=self.store, project=project,
            )  # fmt: skip
        except SdboxError as exc:
            raise Refused(code, f"{what}: {exc.message}") from exc

    # -- sessions -----------------------------------------------------------------------

    def _session(self, request: dict[str, Any], *, opened: bool = True) -> _CardSession:
        key = text_field(request, "session" if opened else "exchange")
        with self._lock:
            self._expire()
            session = self._sessions.get(key)
        if session is None or session.opened != opened:
            raise Refused(
                "exchange", "the card management session expired or was closed: try again"
            )
        return session

    def _drop(self, request: dict[str, Any]) -> None:
        with self._lock:
            self._sessions.pop(str(request.get("exchange")), None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._sessions.items() if s.expires < now]:
            del self._sessions[key]


def _ecb(key: bytes, block: bytes, *, decrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305  (one block, as PIV specifies)
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return op.update(block) + op.finalize()


def _guid(request: dict[str, Any]) -> bytes:
    try:
        guid = bytes.fromhex(text_field(request, "card_guid"))
    except ValueError as exc:
        raise ProtocolError("field 'card_guid' must be hex") from exc
    if len(guid) != 16:
        raise ProtocolError("field 'card_guid' must be 16 bytes")
    return guid
