"""The BIO SSO session: what the box does with a card, on top of PIV.

:meth:`BioSsoSession.read_summary` is the project picker's listing: SELECT,
CHUID (the card's identity), the signed directory and the primary finger's
counter (which also says whether the card compares a finger), four APDUs
with extended length, independent of the number of projects. Holder verification, signatures and ECDH go through the
PIV session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.errors import SdboxError
from sdbox.smartcard.apdu import Sw
from sdbox.smartcard.atr import uses_extended_length
from sdbox.smartcard.connection import ApduStack, SmartCardConnection
from sdbox.smartcard.directory import Directory, SignedDirectory, parse_signed_directory
from sdbox.smartcard.errors import (
    ApduError,
    CardProtocolError,
    DirectoryError,
    DirectoryMissing,
    FingerNotEnrolled,
    NotSupported,
)
from sdbox.smartcard.piv import FileNotFoundOnCard, PivSession, public_key_digest_algorithm
from sdbox.smartcard.profile import (
    Algorithm,
    FingerBit,
    KeyRef,
    ObjectTag,
    Slot,
    certificate_object,
    chuid_guid,
    decode_certificate,
    parse_bit_group,
    parse_key_history,
)

SignerValidator = Callable[[x509.Certificate, list[x509.Certificate]], None]
DirectoryCache = Callable[[bytes], bytes | None]
"""A card GUID -> the directory object the box last verified for that card (or None)."""

# What a chip without extended length reads of the directory before deciding whether the
# box's cached copy is the card's: one short answer (the content's head: version, sequence,
# issue time, card GUID, and the first project).
_DIRECTORY_HEAD = 250


@dataclass(frozen=True)
class CardSummary:
    """What the picker needs: identity, OCC support, the verified directory."""

    guid: bytes
    occ: bool
    directory: Directory | None
    directory_error: SdboxError | None
    finger_primary_tries: int | None
    directory_object: bytes = b""  # as read (or as cached), for the box's cache

    @property
    def directory_verified(self) -> bool:
        """Whether the directory's signature, card binding and signer all verified."""
        return self.directory is not None


@dataclass(frozen=True)
class TriesLeft:
    """Retry counters (None: that reference does not exist on the card; -1: verified)."""

    pin: int | None
    finger_primary: int | None
    finger_secondary: int | None


class BioSsoSession:
    """One card, spoken to as a BIO SSO card."""

    def __init__(self, connection: SmartCardConnection, *, extended: bool = True) -> None:
        self.stack = ApduStack(connection, extended=extended)
        self.piv = PivSession(self.stack)
        self._guid: bytes | None = None
        self.atr = b""  # what the card answered at reset, when known (for_atr): its capabilities

    @classmethod
    def for_atr(cls, connection: SmartCardConnection, atr: bytes) -> BioSsoSession:
        """A session whose APDU stack follows what the card's ATR states (extended length)."""
        session = cls(connection, extended=uses_extended_length(atr))
        session.atr = atr
        return session

    @property
    def guid(self) -> bytes:
        """The card's GUID (read once per session)."""
        if self._guid is None:
            self._guid = chuid_guid(self.piv.get_object(ObjectTag.CHUID))
        return self._guid

    def forget_identity(self) -> None:
        """Read the GUID again on next use (to notice a swapped card)."""
        self._guid = None

    def read_summary(
        self, validate_signer: SignerValidator, cached: DirectoryCache | None = None
    ) -> CardSummary:
        """The picker's listing (see the module docstring).

        ``cached``: the directories the box verified before, by card GUID. A
        chip without extended length then reads only the head of its
        directory, and a cached directory of the same card, length and head
        stands for the rest (:meth:`_directory_object`).
        """
        self.piv.select(properties=False)  # the label is not listed
        guid = self.guid
        directory: Directory | None = None
        error: SdboxError | None = None
        raw = b""
        try:
            raw, directory = self._directory_object(validate_signer, cached)
        except SdboxError as exc:  # a bad directory is reported, the card is still listed
            error = exc
        tries = self._primary_finger_tries()
        return CardSummary(guid, tries is not None, directory, error, tries, raw)

    def _primary_finger_tries(self) -> int | None:
        """The primary finger's counter; None when the card has no finger the box can ask.

        This is what tells the listing whether the card compares a finger
        (``occ``), instead of the discovery object: the box only ever
        verifies the primary finger (96), and a card answers that reference's
        status (VERIFY without data, spending nothing) only when it compares
        it; one object read fewer at every insertion (two on a T=0 chip).
        Nothing is believed on it: the finger is compared by the card, and
        whether the PIN may replace it stays the project's policy. A card
        without the reference (``6A88``), or that does not know it or the
        command, is a PIN-only card, as its discovery object would say
        (``sdbox card identify`` still reads that object and refuses a card
        whose discovery contradicts its fingers).
        """
        try:
            return self.piv.finger_tries_left(KeyRef.FINGER_PRIMARY)
        except (FingerNotEnrolled, NotSupported):
            return None
        except ApduError as exc:
            if exc.sw in (Sw.INCORRECT_P1P2, Sw.WRONG_P1P2):
                return None
            raise

    def _directory_object(
        self, validate_signer: SignerValidator, cached: DirectoryCache | None
    ) -> tuple[bytes, Directory]:
        """The directory object and its verified content, the box's cached copy where it may.

        The cache saves reading a long object 256 bytes at a time; it changes
        no trust decision. A cached object is used only for the card whose
        CHUID names its GUID, whose directory has the same length and the
        same head (sequence and issue time included), and it is verified
        again in full (signature, card binding, signer's trust now). A card
        showing that head but another tail gets the directory the centre
        signed for it, not what it carries: a directory is public, proves no
        card, and every project is still proven by its certificate (matched
        to the directory's digest) and its key on the card. A cached copy
        that no longer verifies is dropped and the card is read.
        """
        if cached is None or self.stack.extended:
            raw = self._read_directory_object()
        else:
            try:
                head, size, rest = self.piv.get_object_head(ObjectTag.DIRECTORY, _DIRECTORY_HEAD)
            except FileNotFoundOnCard as exc:
                raise _no_directory() from exc
            except CardProtocolError as exc:
                raise DirectoryError(f"the project directory could not be read: {exc}") from exc
            kept = cached(self.guid) if len(head) < size else None
            if kept is not None and len(kept) == size and kept.startswith(head):
                try:
                    signed = parse_signed_directory(kept)
                    return kept, signed.verify(card_guid=self.guid, validate_signer=validate_signer)
                except DirectoryError:  # a damaged cache: the card says what it holds
                    pass
            try:  # a miss: read on from the head (no command was sent since)
                raw = head if len(head) == size else rest()
            except CardProtocolError as exc:
                raise DirectoryError(f"the project directory could not be read: {exc}") from exc
        directory = parse_signed_directory(raw).verify(
            card_guid=self.guid, validate_signer=validate_signer
        )
        return raw, directory

    def _read_directory_object(self) -> bytes:
        try:
            return self.piv.get_object(ObjectTag.DIRECTORY)
        except FileNotFoundOnCard as exc:
            raise _no_directory() from exc
        except CardProtocolError as exc:
            raise DirectoryError(f"the project directory could not be read: {exc}") from exc

    def read_signed_directory(self) -> SignedDirectory:
        """The directory object as stored (not yet verified)."""
        return parse_signed_directory(self._read_directory_object())

    def read_directory(self, validate_signer: SignerValidator) -> Directory:
        """The verified directory (signature, card binding, trusted signer)."""
        return self.read_signed_directory().verify(
            card_guid=self.guid, validate_signer=validate_signer
        )

    def tries_left(self) -> TriesLeft:
        """Every retry counter; spends no tries."""

        def status(ref: int) -> int | None:
            try:
                return self.piv._status(ref)
            except (FingerNotEnrolled, NotSupported):
                return None

        return TriesLeft(
            status(KeyRef.PIN), status(KeyRef.FINGER_PRIMARY), status(KeyRef.FINGER_SECONDARY)
        )

    def finger_bits(self) -> list[FingerBit]:
        """The fingers the card compares, and the probe sizes it accepts."""
        try:
            return parse_bit_group(self.piv.get_object(ObjectTag.BIT_GROUP))
        except FileNotFoundOnCard:
            return []

    def certificate(self, slot: int) -> x509.Certificate:
        """The certificate stored for ``slot``."""
        der = decode_certificate(self.piv.get_object(certificate_object(slot)))
        try:
            return load_certificate(der)
        except UnreadableCertificate as exc:
            raise CardProtocolError(
                f"the certificate of slot {slot:02X} is malformed: {exc}"
            ) from exc

    def key_history_count(self) -> int:
        """Retired keys with on-card certificates (contiguous from 82)."""
        try:
            return parse_key_history(self.piv.get_object(ObjectTag.KEY_HISTORY))
        except FileNotFoundOnCard:
            return 0

    # -- operations after holder verification -------------------------------

    def sign(
        self,
        message: bytes,
        *,
        slot: int = Slot.AUTHENTICATION,
        certificate: x509.Certificate | None = None,
    ) -> bytes:
        """Sign ``message`` with the holder key; the signature verifies with its certificate.

        EC keys give DER ECDSA (SHA-256, or SHA-384 for P-384); RSA keys give
        PKCS#1 v1.5 with SHA-256.
        """
        cert = certificate or self.certificate(slot)
        key = cert.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            algo = public_key_digest_algorithm(key)
            digest = hashlib.new(algo.name, message).digest()
            piv_alg = Algorithm.ECCP256 if key.curve.key_size == 256 else Algorithm.ECCP384
            return self.piv.sign_digest(slot, digest, piv_alg)
        if isinstance(key, rsa.RSAPublicKey):
            return self.piv.sign_raw_rsa(slot, _pkcs1_v15_block(message, key.key_size // 8))
        raise NotSupported("the holder key is neither EC nor RSA")

    def ecdh(self, slot: int, peer: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH of the project key in ``slot`` with ``peer`` (possession proof)."""
        return self.piv.ecdh(slot, peer)


def _no_directory() -> DirectoryMissing:
    return DirectoryMissing(
        "this card has no project directory: it was not issued for sdbox; "
        "take it to your card office"
    )


_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _pkcs1_v15_block(message: bytes, size: int) -> bytes:
    """EMSA-PKCS1-v1_5 encoding of SHA-256(message) for a ``size``-byte modulus."""
    t = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t
