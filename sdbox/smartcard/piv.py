"""The PIV application (SP 800-73-4 part 2): one session, one method per command.

Raw status words are translated here, once, into the errors of
:mod:`sdbox.smartcard.errors`; callers never see a bare status word unless
the profile gives it no meaning (then :class:`ApduError`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sdbox.smartcard import tlv
from sdbox.smartcard.apdu import Apdu, Ins, Sw, sw_tries_left
from sdbox.smartcard.connection import ApduStack
from sdbox.smartcard.errors import (
    ApduError,
    CardError,
    CardProtocolError,
    FingerBlocked,
    FingerNotEnrolled,
    InvalidTemplate,
    NotSupported,
    PinBlocked,
    SecurityStatusNotSatisfied,
    TlvError,
    WrongFinger,
    WrongPin,
)
from sdbox.smartcard.profile import (
    MANAGEMENT_CHALLENGE_LENGTH,
    PIV_AID,
    TAG_APT,
    TAG_AUTH_CHALLENGE,
    TAG_AUTH_EXPONENTIATION,
    TAG_AUTH_RESPONSE,
    TAG_AUTH_WITNESS,
    TAG_DATA_OBJECT,
    TAG_DYNAMIC_AUTH,
    TAG_OBJECT_ID,
    Algorithm,
    KeyRef,
    ObjectTag,
    Slot,
    object_id,
    pad_pin,
)

_log = logging.getLogger(__name__)

# Objects that GET DATA returns bare rather than wrapped in 53.
_UNWRAPPED = frozenset({ObjectTag.DISCOVERY, ObjectTag.BIT_GROUP})
TAG_GENERATE_TEMPLATE = 0xAC
TAG_GENERATE_ALGORITHM = 0x80
TAG_PUBLIC_KEY = 0x7F49
TAG_EC_POINT = 0x86
P1_RESET_VERIFICATION = 0xFF
_CURVES: dict[int, ec.EllipticCurve] = {
    Algorithm.ECCP256: ec.SECP256R1(),
    Algorithm.ECCP384: ec.SECP384R1(),
}


class ManagementKeyHolder(Protocol):
    """Whoever holds the card management key (9B) answers the card's challenges.

    On the box this is the centre, reached through the tunnel: the box relays
    and never sees the key. At an enrolment station or in tests it may be a
    :class:`LocalManagementKey`.
    """

    def decrypt_witness(self, encrypted_witness: bytes) -> bytes:
        """Step 1 of mutual authentication: decrypt the card's witness."""
        ...

    def new_challenge(self) -> bytes:
        """Step 2: the challenge the card must encrypt (chosen by the key holder)."""
        ...

    def check_challenge_response(self, challenge: bytes, response: bytes) -> bool:
        """Step 2: is ``response`` the card's encryption of ``challenge``?"""
        ...


class LocalManagementKey:
    """An AES management key held in memory (enrolment station, tests)."""

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("an AES management key has 16, 24 or 32 bytes")
        self._key = key

    def _ecb(self, data: bytes, *, decrypt: bool) -> bytes:
        cipher = Cipher(algorithms.AES(self._key), modes.ECB())  # noqa: S305  (one block, as PIV specifies)
        op = cipher.decryptor() if decrypt else cipher.encryptor()
        return op.update(data) + op.finalize()

    def decrypt_witness(self, encrypted_witness: bytes) -> bytes:
        """Decrypt the card's witness."""
        return self._ecb(encrypted_witness, decrypt=True)

    def new_challenge(self) -> bytes:
        """A fresh random challenge."""
        return secrets.token_bytes(MANAGEMENT_CHALLENGE_LENGTH)

    def check_challenge_response(self, challenge: bytes, response: bytes) -> bool:
        """Whether the card encrypted our challenge with the same key."""
        return secrets.compare_digest(self._ecb(challenge, decrypt=False), response)

    @property
    def algorithm(self) -> Algorithm:
        """The PIV algorithm identifier of this key."""
        return {16: Algorithm.AES128, 24: Algorithm.AES192, 32: Algorithm.AES256}[len(self._key)]


@dataclass(frozen=True)
class SelectResult:
    """What SELECT returned: the application's label (if any)."""

    label: str


class PivSession:
    """Commands of the PIV application on one card connection."""

    def __init__(self, stack: ApduStack) -> None:
        self.stack = stack

    # -- plumbing -----------------------------------------------------------

    def _send(self, apdu: Apdu) -> tuple[bytes, int]:
        return self.stack.send(apdu)

    def _expect_ok(self, apdu: Apdu, what: str) -> bytes:
        data, sw = self._send(apdu)
        if sw == Sw.OK:
            return data
        raise _translate(what, sw)

    # -- SELECT, GET DATA, PUT DATA ----------------------------------------

    def select(self, *, properties: bool = True) -> SelectResult:
        """Select the PIV application.

        ``properties=False``: the caller does not need the application
        property template (the label). A card that gives its answers only
        through ``61XX`` (a T=0 chip) is then not asked for it by GET
        RESPONSE: ``61XX`` is a successful SELECT (ISO/IEC 7816-4, "normal
        processing"), and the card drops the unread answer at the next
        command. One APDU fewer at every insertion on such a chip; a card that
        answers at once (``9000``) is read as before.
        """
        apdu = Apdu(0x00, Ins.SELECT, 0x04, 0x00, PIV_AID, le=256)
        if properties:
            data, sw = self._send(apdu)
        else:
            data, sw = self.stack.send_head(apdu, 0)
            if sw & 0xFF00 == Sw.BYTES_REMAINING_00:
                data, sw = b"", Sw.OK  # selected; its properties left unread
        if sw == Sw.FILE_NOT_FOUND:
            raise NotSupported("this card has no PIV application: it is not a BIO SSO card")
        if sw != Sw.OK:
            raise _translate("SELECT PIV", sw)
        label = ""
        try:
            apt = tlv.parse_one(data, TAG_APT) if data else None
            if apt is not None:
                label = tlv.parse_dict(apt.value).get(0x50, b"").decode("utf-8", "replace")
        except TlvError as exc:
            raise CardProtocolError(
                f"SELECT PIV: the application properties do not parse: {exc}"
            ) from exc
        return SelectResult(label)

    def get_object(self, tag: int) -> bytes:
        """The value of a data object (unwrapped from 53); FileNotFound if absent."""
        what = f"GET DATA {tag:X}"
        data = self._expect_ok(
            Apdu(0x00, Ins.GET_DATA, 0x3F, 0xFF, tlv.tlv(TAG_OBJECT_ID, object_id(tag)), le=65536),
            what,
        )
        if tag in _UNWRAPPED:
            return data
        try:
            return tlv.parse_one(data, TAG_DATA_OBJECT).value
        except TlvError as exc:
            raise CardProtocolError(
                f"{what}: the object is not wrapped as PIV requires: {exc}"
            ) from exc

    def get_object_head(
        self, tag: int, at_least: int
    ) -> tuple[bytes, int, Callable[[], bytes]]:
        """The start of a data object's value, the value's full length, and how to read the rest.

        At least ``at_least`` bytes of the value where it has them (all of it
        when it is shorter, or when the card has extended length); the length
        comes from the 53 wrapper in the first bytes. The third element reads
        on from there and returns the whole value: call it before any other
        command, or not at all. FileNotFound if absent.
        """
        what = f"GET DATA {tag:X}"
        apdu = Apdu(0x00, Ins.GET_DATA, 0x3F, 0xFF, tlv.tlv(TAG_OBJECT_ID, object_id(tag)), le=65536)
        data, sw = self.stack.send_head(apdu, at_least + 4)  # + the 53 wrapper's tag and length
        if sw != Sw.OK and sw & 0xFF00 != Sw.BYTES_REMAINING_00:
            raise _translate(what, sw)
        if len(data) < 2 or data[0] != TAG_DATA_OBJECT:
            raise CardProtocolError(f"{what}: the object is not wrapped as PIV requires")
        size, start = data[1], 2
        if size in (0x81, 0x82) and len(data) >= 2 + (size - 0x80):
            size, start = int.from_bytes(data[2 : 2 + size - 0x80], "big"), 2 + size - 0x80
        elif size >= 0x80:
            raise CardProtocolError(f"{what}: the object's length does not parse")
        value = data[start : start + size]
        if sw == Sw.OK and len(value) != size:
            raise CardProtocolError(f"{what}: the object is shorter than its length says")

        def rest() -> bytes:
            whole, last = self.stack.send_rest(apdu, data, sw)
            if last != Sw.OK:
                raise _translate(what, last)
            try:
                return tlv.parse_one(whole, TAG_DATA_OBJECT).value
            except TlvError as exc:
                raise CardProtocolError(
                    f"{what}: the object is not wrapped as PIV requires: {exc}"
                ) from exc

        return value, size, rest

    def put_object(self, tag: int, value: bytes) -> None:
        """Write a data object (needs the management key)."""
        body = tlv.tlv(TAG_OBJECT_ID, object_id(tag)) + tlv.tlv(TAG_DATA_OBJECT, value)
        self._expect_ok(Apdu(0x00, Ins.PUT_DATA, 0x3F, 0xFF, body), f"PUT DATA {tag:X}")

    # -- verification -------------------------------------------------------

    def pin_tries_left(self) -> int:
        """Tries left for the PIN (0 = blocked); does not spend one."""
        return self._status(KeyRef.PIN)

    def finger_tries_left(self, finger: int) -> int:
        """Tries left for finger 96 or 97 (0 = blocked); does not spend one."""
        return self._status(finger)

    def _status(self, ref: int) -> int:
        _data, sw = self._send(Apdu(0x00, Ins.VERIFY, 0x00, ref))
        tries = sw_tries_left(sw)
        if tries is not None:
            return tries
        if sw == Sw.OK:  # already verified in this card session; the counter is full
            return -1
        if sw == Sw.AUTH_METHOD_BLOCKED:
            return 0
        if sw == Sw.REFERENCE_NOT_FOUND:
            raise FingerNotEnrolled() if ref != KeyRef.PIN else NotSupported("this card has no PIN")
        raise _translate(f"VERIFY {ref:02X} (status)", sw)

    def verify_pin(self, pin: str) -> None:
        """Verify the PIN; raises WrongPin(tries_left) or PinBlocked."""
        _data, sw = self._send(Apdu(0x00, Ins.VERIFY, 0x00, KeyRef.PIN, pad_pin(pin)))
        if sw == Sw.OK:
            return
        tries = sw_tries_left(sw)
        if tries is not None:
            raise PinBlocked() if tries == 0 else WrongPin(tries)
        if sw == Sw.AUTH_METHOD_BLOCKED:
            raise PinBlocked()
        raise _translate("VERIFY PIN", sw)

    def verify_finger(self, finger: int, probe: bytes) -> None:
        """On-card comparison of ``probe`` (compact-card minutiae) with finger 96/97."""
        _data, sw = self._send(Apdu(0x00, Ins.VERIFY, 0x00, finger, probe))
        if sw == Sw.OK:
            return
        tries = sw_tries_left(sw)
        if tries is not None:
            raise FingerBlocked() if tries == 0 else WrongFinger(tries)
        if sw == Sw.AUTH_METHOD_BLOCKED:
            raise FingerBlocked()
        if sw == Sw.INCORRECT_DATA:
            raise InvalidTemplate()
        if sw == Sw.REFERENCE_NOT_FOUND:
            raise FingerNotEnrolled()
        raise _translate(f"VERIFY {finger:02X}", sw)

    def reset_verification(self, ref: int) -> None:
        """Drop the verified state of ``ref`` (VERIFY with P1=FF)."""
        self._expect_ok(Apdu(0x00, Ins.VERIFY, P1_RESET_VERIFICATION, ref), "VERIFY reset")

    # -- management key -----------------------------------------------------

    def authenticate_management(
        self, holder: ManagementKeyHolder, algorithm: Algorithm = Algorithm.AES128
    ) -> None:
        """Mutual authentication with the card management key (9B)."""
        slot = Slot.CARD_MANAGEMENT
        witness_req = tlv.tlv(TAG_DYNAMIC_AUTH, tlv.tlv(TAG_AUTH_WITNESS))
        data = self._expect_ok(
            Apdu(0x00, Ins.GENERAL_AUTHENTICATE, algorithm, slot, witness_req, le=256),
            "management key (witness)",
        )
        encrypted = _dynamic_auth_field(data, TAG_AUTH_WITNESS, "management key (witness)")
        witness = holder.decrypt_witness(encrypted)
        # The holder picks the challenge: a relaying box cannot choose one it
        # already knows the card's answer to.
        challenge = holder.new_challenge()
        if len(challenge) != MANAGEMENT_CHALLENGE_LENGTH:
            raise CardProtocolError("management key: the key holder's challenge has the wrong size")
        body = tlv.tlv(
            TAG_DYNAMIC_AUTH,
            tlv.tlv(TAG_AUTH_WITNESS, witness) + tlv.tlv(TAG_AUTH_CHALLENGE, challenge),
        )
        data, sw = self._send(Apdu(0x00, Ins.GENERAL_AUTHENTICATE, algorithm, slot, body, le=256))
        if sw == Sw.SECURITY_STATUS_NOT_SATISFIED:
            raise SecurityStatusNotSatisfied("the card refused the management key")
        if sw != Sw.OK:
            raise _translate("management key (response)", sw)
        response = _dynamic_auth_field(data, TAG_AUTH_RESPONSE, "management key (response)")
        if not holder.check_challenge_response(challenge, response):
            raise SecurityStatusNotSatisfied(
                "the card did not prove the management key: not a genuine card"
            )

    # -- keys ---------------------------------------------------------------

    def generate_key(self, slot: int, algorithm: Algorithm) -> ec.EllipticCurvePublicKey:
        """GENERATE ASYMMETRIC KEY PAIR (EC) in ``slot``; needs the management key."""
        if algorithm not in _CURVES:
            raise NotSupported("key generation here supports P-256 and P-384 only")
        body = tlv.tlv(TAG_GENERATE_TEMPLATE, tlv.tlv(TAG_GENERATE_ALGORITHM, bytes((algorithm,))))
        data = self._expect_ok(
            Apdu(0x00, Ins.GENERATE_ASYMMETRIC, 0x00, slot, body, le=256),
            f"GENERATE KEY {slot:02X}",
        )
        try:
            outer = tlv.parse_one(data, TAG_PUBLIC_KEY)
            point = tlv.parse_dict(outer.value)[TAG_EC_POINT]
            return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[algorithm], point)
        except (TlvError, KeyError, ValueError) as exc:
            raise CardProtocolError(
                f"GENERATE KEY {slot:02X}: the public key does not parse"
            ) from exc

    def sign_digest(self, slot: int, digest: bytes, algorithm: Algorithm) -> bytes:
        """Sign a precomputed hash with an EC key (DER ECDSA signature back)."""
        size = 32 if algorithm == Algorithm.ECCP256 else 48
        payload = digest[:size].rjust(size, b"\x00")
        return self._general_authenticate(
            slot, algorithm, TAG_AUTH_CHALLENGE, payload, f"SIGN {slot:02X}"
        )

    def sign_raw_rsa(self, slot: int, block: bytes) -> bytes:
        """The raw RSA private-key operation on a padded ``block`` (RSA 2048)."""
        return self._general_authenticate(
            slot, Algorithm.RSA2048, TAG_AUTH_CHALLENGE, block, f"SIGN {slot:02X}"
        )

    def ecdh(self, slot: int, peer: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH of the slot's key with ``peer``: the shared secret (x coordinate)."""
        algorithm = Algorithm.ECCP256 if peer.curve.key_size == 256 else Algorithm.ECCP384
        point = peer.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return self._general_authenticate(
            slot, algorithm, TAG_AUTH_EXPONENTIATION, point, f"ECDH {slot:02X}"
        )

    def _general_authenticate(
        self, slot: int, algorithm: int, tag: int, payload: bytes, what: str
    ) -> bytes:
        body = tlv.tlv(TAG_DYNAMIC_AUTH, tlv.tlv(TAG_AUTH_RESPONSE) + tlv.tlv(tag, payload))
        data, sw = self._send(Apdu(0x00, Ins.GENERAL_AUTHENTICATE, algorithm, slot, body, le=65536))
        if sw == Sw.SECURITY_STATUS_NOT_SATISFIED:
            raise SecurityStatusNotSatisfied(f"{what}: verify your finger (or PIN) first")
        if sw != Sw.OK:
            raise _translate(what, sw)
        return _dynamic_auth_field(data, TAG_AUTH_RESPONSE, what)


def _dynamic_auth_field(data: bytes, tag: int, what: str) -> bytes:
    try:
        outer = tlv.parse_one(data, TAG_DYNAMIC_AUTH)
        value = tlv.parse_dict(outer.value).get(tag)
    except TlvError as exc:
        raise CardProtocolError(f"{what}: the answer does not parse: {exc}") from exc
    if not value:
        raise CardProtocolError(f"{what}: the answer lacks field {tag:02X}")
    return value


def _translate(what: str, sw: int) -> CardError:
    if sw == Sw.FILE_NOT_FOUND:
        return FileNotFoundOnCard(what)
    if sw == Sw.SECURITY_STATUS_NOT_SATISFIED:
        return SecurityStatusNotSatisfied(f"{what}: the card requires verification first")
    if sw in (Sw.INS_NOT_SUPPORTED, Sw.FUNCTION_NOT_SUPPORTED):
        return NotSupported(f"{what}: the card does not support this command")
    return ApduError(what, sw)


class FileNotFoundOnCard(CardError):
    """A data object or key the command names does not exist on the card."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what}: the card has no such object")


def public_key_digest_algorithm(
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
) -> hashes.HashAlgorithm:
    """The hash PIV pairs with ``key`` (SHA-384 for P-384, SHA-256 otherwise)."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()
