"""The BIO SSO card profile: PIV (SP 800-73-4) objects, slots and references.

Every constant here is written down in docs/card-profile.md; the card
emulator and the client both import them from this one place. Encoders and
parsers for the small PIV objects (CHUID, discovery, key history, BIT group,
certificate containers) live here too; the project directory has its own
module (:mod:`sdbox.smartcard.directory`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import IntEnum

from sdbox.smartcard import tlv
from sdbox.smartcard.errors import CardProtocolError, InvalidPinFormat, TlvError

PIV_AID = bytes.fromhex("A000000308000010000100")
PIV_PIX = PIV_AID[5:]

TAG_DATA_OBJECT = 0x53  # GET/PUT DATA wrap every object value in 53
TAG_OBJECT_ID = 0x5C  # GET/PUT DATA name the object with 5C
TAG_DYNAMIC_AUTH = 0x7C  # GENERAL AUTHENTICATE template
TAG_AUTH_WITNESS = 0x80
TAG_AUTH_CHALLENGE = 0x81
TAG_AUTH_RESPONSE = 0x82
TAG_AUTH_EXPONENTIATION = 0x85  # ECDH: the peer's public point

# Certificate container (SP 800-73-4 part 1, table 10 and following)
TAG_CERTIFICATE = 0x70
TAG_CERT_INFO = 0x71
TAG_ERROR_DETECTION = 0xFE
CERT_INFO_UNCOMPRESSED = 0x00
CERT_INFO_GZIP = 0x01

# CHUID
TAG_FASCN = 0x30
TAG_GUID = 0x34
TAG_EXPIRY = 0x35
TAG_ISSUER_SIGNATURE = 0x3E

# Discovery object
TAG_DISCOVERY = 0x7E
TAG_AID = 0x4F
TAG_PIN_POLICY = 0x5F2F
PIN_POLICY_PIV_PIN = 0x40
PIN_POLICY_GLOBAL_PIN = 0x20
PIN_POLICY_OCC = 0x10  # on-card comparison satisfies the PIV access rules
PIN_POLICY_PREFER_PIV_PIN = 0x10  # second byte

# Key history
TAG_KEYS_ON_CARD = 0xC1
TAG_KEYS_OFF_CARD = 0xC2

# Biometric information templates (ISO/IEC 7816-11, SP 800-73-4 part 2 table 41)
TAG_BIT_GROUP = 0x7F61
TAG_BIT = 0x7F60
TAG_BIT_COUNT = 0x02
TAG_BIT_REFERENCE = 0x83
TAG_BHT = 0xA1
TAG_BHT_TYPE = 0x81
TAG_BHT_SUBTYPE = 0x82
TAG_BHT_FORMAT_OWNER = 0x87
TAG_BHT_FORMAT_TYPE = 0x88
TAG_ALGO_PARAMS = 0xB1
TAG_MINMAX_MINUTIAE = 0x81
TAG_MINUTIAE_ORDER = 0x82
BIOMETRIC_TYPE_FINGER = 0x08
FORMAT_OWNER_SC37 = 0x0101
FORMAT_TYPE_COMPACT_CARD = 0x0006

# Application property template (SELECT answer)
TAG_APT = 0x61
TAG_APP_LABEL = 0x50
TAG_ALLOCATION_AUTHORITY = 0x79

PIN_PAD = 0xFF
PIN_LENGTH = 8
MANAGEMENT_CHALLENGE_LENGTH = 16  # AES block


class Slot(IntEnum):
    """Key references (SP 800-73-4 part 1 table 4b)."""

    AUTHENTICATION = 0x9A
    CARD_MANAGEMENT = 0x9B
    SIGNATURE = 0x9C
    KEY_MANAGEMENT = 0x9D
    CARD_AUTH = 0x9E
    RETIRED_1 = 0x82
    RETIRED_20 = 0x95

    @staticmethod
    def retired(index: int) -> int:
        """The key reference of retired slot ``index`` (1 to 20)."""
        if not 1 <= index <= 20:
            raise ValueError("retired slots are numbered 1 to 20")
        return 0x81 + index


RETIRED_SLOTS: tuple[int, ...] = tuple(range(0x82, 0x96))


class KeyRef(IntEnum):
    """Verification references: PIN, PUK, and the two OCC fingers."""

    PIN = 0x80
    PUK = 0x81
    FINGER_PRIMARY = 0x96
    FINGER_SECONDARY = 0x97


FINGERS = (KeyRef.FINGER_PRIMARY, KeyRef.FINGER_SECONDARY)


class Algorithm(IntEnum):
    """Cryptographic mechanism identifiers (SP 800-78-4 table 6-2)."""

    TDES = 0x03
    RSA2048 = 0x07
    AES128 = 0x08
    AES192 = 0x0A
    AES256 = 0x0C
    ECCP256 = 0x11
    ECCP384 = 0x14


class ObjectTag(IntEnum):
    """Data objects read and written with GET DATA / PUT DATA."""

    CHUID = 0x5FC102
    CCC = 0x5FC107  # Card Capability Container (mandatory in SP 800-73-4)
    AUTH_CERT = 0x5FC105
    KEY_HISTORY = 0x5FC10C
    RETIRED_CERT_1 = 0x5FC10D
    RETIRED_CERT_20 = 0x5FC120
    DISCOVERY = 0x7E
    BIT_GROUP = 0x7F61
    # Vendor range 5FFFxx, away from the tags YubiKeys use (5FFF00-5FFF15).
    DIRECTORY = 0x5FFF40
    FINGER_REFERENCE_PRIMARY = 0x5FFF41  # write-only: the card never returns a reference
    FINGER_REFERENCE_SECONDARY = 0x5FFF42


FINGER_REFERENCE_OBJECT = {
    KeyRef.FINGER_PRIMARY: ObjectTag.FINGER_REFERENCE_PRIMARY,
    KeyRef.FINGER_SECONDARY: ObjectTag.FINGER_REFERENCE_SECONDARY,
}


def certificate_object(slot: int) -> int:
    """The data object holding the certificate of ``slot``."""
    if slot == Slot.AUTHENTICATION:
        return ObjectTag.AUTH_CERT
    if slot == Slot.SIGNATURE:
        return 0x5FC10A
    if slot == Slot.KEY_MANAGEMENT:
        return 0x5FC10B
    if slot == Slot.CARD_AUTH:
        return 0x5FC101
    if slot in RETIRED_SLOTS:
        return ObjectTag.RETIRED_CERT_1 + (slot - Slot.RETIRED_1)
    raise ValueError(f"slot {slot:02X} has no certificate object")


def object_id(tag: int) -> bytes:
    """The bytes naming ``tag`` in a 5C element."""
    return tlv.encode_tag(tag)


# -- certificate containers ---------------------------------------------------


def encode_certificate(der: bytes, *, compressed: bool = False) -> bytes:
    """A certificate container (value of the 53 element); ``compressed``: gzip, CertInfo 01."""
    if compressed:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
        der = packer.compress(der) + packer.flush()
    info = CERT_INFO_GZIP if compressed else CERT_INFO_UNCOMPRESSED
    return (
        tlv.tlv(TAG_CERTIFICATE, der)
        + tlv.tlv(TAG_CERT_INFO, bytes((info,)))
        + tlv.tlv(TAG_ERROR_DETECTION)
    )


def decode_certificate(value: bytes) -> bytes:
    """The DER certificate inside a container (gzip-compressed ones included)."""
    fields = tlv.parse_dict(value)
    if TAG_CERTIFICATE not in fields:
        raise CardProtocolError("certificate object without a certificate (tag 70)")
    der = fields[TAG_CERTIFICATE]
    info = fields.get(TAG_CERT_INFO, b"\x00")
    if info[:1] == bytes((CERT_INFO_GZIP,)):
        try:
            der = zlib.decompress(der, wbits=31)
        except zlib.error as exc:
            raise CardProtocolError("compressed certificate does not decompress") from exc
    return der


# -- CHUID --------------------------------------------------------------------


def encode_chuid(guid: bytes, expiry: str = "20991231") -> bytes:
    """A CHUID carrying ``guid`` (16 bytes); the FASC-N is the 'non-federal' filler."""
    if len(guid) != 16:
        raise ValueError("a GUID has 16 bytes")
    fascn = bytes.fromhex("D4E739DA739CED39CE739D836858210842108421C84210C3EB")
    return (
        tlv.tlv(TAG_FASCN, fascn)
        + tlv.tlv(TAG_GUID, guid)
        + tlv.tlv(TAG_EXPIRY, expiry.encode("ascii"))
        + tlv.tlv(TAG_ISSUER_SIGNATURE)
        + tlv.tlv(TAG_ERROR_DETECTION)
    )


def encode_ccc(guid: bytes) -> bytes:
    """The Card Capability Container, as SP 800-73-4 Part 1 (3.1.1) lays it out.

    A PIV card must carry it even though nothing on the box reads it: other
    PIV middleware asks for it, and "not found" marks a card as not PIV.
    Card identifier: GSC-RID (A0 00 00 01 16), manufacturer FF (none), card
    type 02 (Java Card-like), 14 bytes of the card's GUID; version 2.1 for
    both the container and the grammar; data model 0x10 (PIV); every other
    element present and empty, as the standard has them for a PIV card.
    """
    if len(guid) != 16:
        raise ValueError("a GUID has 16 bytes")
    card_id = bytes.fromhex("A000000116FF02") + guid[:14]
    return (
        tlv.tlv(0xF0, card_id)
        + tlv.tlv(0xF1, b"\x21")
        + tlv.tlv(0xF2, b"\x21")
        + tlv.tlv(0xF3)
        + tlv.tlv(0xF4, b"\x00")
        + tlv.tlv(0xF5, b"\x10")
        + tlv.tlv(0xF6)
        + tlv.tlv(0xF7)
        + tlv.tlv(0xFA)
        + tlv.tlv(0xFB)
        + tlv.tlv(0xFC)
        + tlv.tlv(0xFD)
        + tlv.tlv(0xFE)
    )


def chuid_guid(value: bytes) -> bytes:
    """The card's GUID from a CHUID value."""
    try:
        guid = tlv.parse_dict(value).get(TAG_GUID)
    except TlvError as exc:
        raise CardProtocolError(f"the CHUID does not parse: {exc}") from exc
    if guid is None or len(guid) != 16:
        raise CardProtocolError("the CHUID has no 16-byte GUID (tag 34)")
    return guid


# -- discovery ----------------------------------------------------------------


@dataclass(frozen=True)
class Discovery:
    """The discovery object: which verification methods satisfy the card."""

    piv_pin: bool
    global_pin: bool
    occ: bool

    def encode(self) -> bytes:
        """The discovery object's full encoding (7E ...)."""
        first = (
            (PIN_POLICY_PIV_PIN if self.piv_pin else 0)
            | (PIN_POLICY_GLOBAL_PIN if self.global_pin else 0)
            | (PIN_POLICY_OCC if self.occ else 0)
        )
        policy = bytes((first, PIN_POLICY_PREFER_PIV_PIN))
        return tlv.tlv(TAG_DISCOVERY, tlv.tlv(TAG_AID, PIV_AID) + tlv.tlv(TAG_PIN_POLICY, policy))

    @classmethod
    def parse(cls, data: bytes) -> Discovery:
        """Parse the object as GET DATA returns it (7E ...)."""
        try:
            outer = tlv.parse_one(data, TAG_DISCOVERY)
            fields = tlv.parse_dict(outer.value)
        except TlvError as exc:
            raise CardProtocolError(f"the discovery object does not parse: {exc}") from exc
        policy = fields.get(TAG_PIN_POLICY, b"")
        if len(policy) < 1:
            raise CardProtocolError("the discovery object has no PIN usage policy (5F2F)")
        first = policy[0]
        return cls(
            piv_pin=bool(first & PIN_POLICY_PIV_PIN),
            global_pin=bool(first & PIN_POLICY_GLOBAL_PIN),
            occ=bool(first & PIN_POLICY_OCC),
        )


# -- key history --------------------------------------------------------------


def encode_key_history(on_card: int, off_card: int = 0) -> bytes:
    """Key history: ``on_card`` retired keys with certificates, contiguous from 82."""
    return (
        tlv.tlv(TAG_KEYS_ON_CARD, bytes((on_card,)))
        + tlv.tlv(TAG_KEYS_OFF_CARD, bytes((off_card,)))
        + tlv.tlv(TAG_ERROR_DETECTION)
    )


def parse_key_history(value: bytes) -> int:
    """Number of retired keys whose certificates are on the card."""
    try:
        fields = tlv.parse_dict(value)
    except TlvError as exc:
        raise CardProtocolError(f"the key history object does not parse: {exc}") from exc
    count = fields.get(TAG_KEYS_ON_CARD, b"\x00")
    if len(count) != 1 or count[0] > len(RETIRED_SLOTS):
        raise CardProtocolError("the key history object has an invalid key count")
    return count[0]


# -- biometric information templates ------------------------------------------


@dataclass(frozen=True)
class FingerBit:
    """What the card expects of a probe for one finger (its BIT)."""

    reference: int
    subtype: int
    min_minutiae: int
    max_minutiae: int
    minutiae_order: int

    def encode(self) -> bytes:
        """One 7F60 element."""
        bht = (
            tlv.tlv(TAG_BHT_TYPE, bytes((BIOMETRIC_TYPE_FINGER,)))
            + tlv.tlv(TAG_BHT_SUBTYPE, bytes((self.subtype,)))
            + tlv.tlv(TAG_BHT_FORMAT_OWNER, FORMAT_OWNER_SC37.to_bytes(2, "big"))
            + tlv.tlv(TAG_BHT_FORMAT_TYPE, FORMAT_TYPE_COMPACT_CARD.to_bytes(2, "big"))
        )
        params = tlv.tlv(
            TAG_MINMAX_MINUTIAE, bytes((self.min_minutiae, self.max_minutiae))
        ) + tlv.tlv(TAG_MINUTIAE_ORDER, bytes((self.minutiae_order,)))
        return tlv.tlv(
            TAG_BIT,
            tlv.tlv(TAG_BIT_REFERENCE, bytes((self.reference,)))
            + tlv.tlv(TAG_BHT, bht)
            + tlv.tlv(TAG_ALGO_PARAMS, params),
        )


def encode_bit_group(bits: list[FingerBit]) -> bytes:
    """The BIT group template (7F61 ...)."""
    body = tlv.tlv(TAG_BIT_COUNT, bytes((len(bits),))) + b"".join(b.encode() for b in bits)
    return tlv.tlv(TAG_BIT_GROUP, body)


def parse_bit_group(data: bytes) -> list[FingerBit]:
    """The fingers the card compares on-card, with their probe requirements."""
    try:
        outer = tlv.parse_one(data, TAG_BIT_GROUP)
        out: list[FingerBit] = []
        for item in tlv.iter_tlv(outer.value):
            if item.tag != TAG_BIT:
                continue
            fields = tlv.parse_dict(item.value)
            ref = fields.get(TAG_BIT_REFERENCE, b"")
            bht = tlv.parse_dict(fields.get(TAG_BHT, b""))
            params = tlv.parse_dict(fields.get(TAG_ALGO_PARAMS, b""))
            minmax = params.get(TAG_MINMAX_MINUTIAE, b"")
            if len(ref) != 1 or len(minmax) != 2:
                raise CardProtocolError("a BIT lacks its reference (83) or minutiae limits (81)")
            out.append(
                FingerBit(
                    reference=ref[0],
                    subtype=_byte_or_zero(bht, TAG_BHT_SUBTYPE),
                    min_minutiae=minmax[0],
                    max_minutiae=minmax[1],
                    minutiae_order=_byte_or_zero(params, TAG_MINUTIAE_ORDER),
                )
            )
        return out
    except TlvError as exc:
        raise CardProtocolError(f"the BIT group template does not parse: {exc}") from exc


def _byte_or_zero(fields: dict[int, bytes], tag: int) -> int:
    """An optional one-byte BIT field (0 when absent); present but empty is malformed."""
    value = fields.get(tag, b"\x00")
    if not value:
        raise CardProtocolError(f"a BIT's field {tag:02X} is empty")
    return value[0]


def pad_pin(pin: str) -> bytes:
    """A PIN as VERIFY expects it: ASCII digits padded with FF to 8 bytes."""
    raw = pin.encode("ascii", errors="strict") if pin.isascii() else b""
    if not 6 <= len(raw) <= PIN_LENGTH or not pin.isdigit():
        raise InvalidPinFormat()
    return raw.ljust(PIN_LENGTH, bytes((PIN_PAD,)))
