"""Command APDUs (ISO/IEC 7816-4) and status words.

An :class:`Apdu` knows how to encode itself in short or extended form; the
transport stack (:mod:`sdbox.smartcard.connection`) decides which, and splits
long commands by chaining.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from sdbox.smartcard.errors import CardProtocolError

SHORT_MAX_DATA = 255
SHORT_MAX_LE = 256
EXTENDED_MAX_DATA = 65535
EXTENDED_MAX_LE = 65536
CLA_CHAINING = 0x10


class Sw(IntEnum):
    """Status words used by the BIO SSO profile (see docs/card-profile.md)."""

    OK = 0x9000
    BYTES_REMAINING_00 = 0x6100  # 61XX: XX more bytes, fetch with GET RESPONSE
    VERIFY_FAIL_00 = 0x63C0  # 63CX: verification failed, X tries left
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    WRONG_LE_00 = 0x6C00  # 6CXX: wrong Le, XX bytes are available (resend with Le=XX)
    LAST_COMMAND_OF_CHAIN_EXPECTED = 0x6883
    COMMAND_CHAINING_NOT_SUPPORTED = 0x6884
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    INCORRECT_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    REFERENCE_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


def sw_tries_left(sw: int) -> int | None:
    """The retry count carried by a ``63CX`` status word, else None."""
    if sw & 0xFFF0 == Sw.VERIFY_FAIL_00:
        return sw & 0x0F
    return None


class Ins(IntEnum):
    """Instruction bytes of the PIV application (SP 800-73-4 part 2)."""

    SELECT = 0xA4
    GET_DATA = 0xCB
    VERIFY = 0x20
    CHANGE_REFERENCE = 0x24
    RESET_RETRY = 0x2C
    GENERAL_AUTHENTICATE = 0x87
    PUT_DATA = 0xDB
    GENERATE_ASYMMETRIC = 0x47
    GET_RESPONSE = 0xC0


@dataclass(frozen=True)
class Apdu:
    """A command APDU. ``le`` is None when no response data is expected."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None

    def encode(self, *, extended: bool = False) -> bytes:
        """Encode as short (default) or extended length (ISO/IEC 7816-4 5.1)."""
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        lc, le = len(self.data), self.le
        if not extended:
            if lc > SHORT_MAX_DATA or (le is not None and le > SHORT_MAX_LE):
                raise ValueError("command too long for a short APDU: chain it or use extended")
            body = bytes((lc,)) + self.data if lc else b""
            if le is not None:
                body += bytes((le % 256,))
            return header + body
        if lc > EXTENDED_MAX_DATA or (le is not None and le > EXTENDED_MAX_LE):
            raise ValueError("command too long even for an extended APDU")
        body = b"\x00" + lc.to_bytes(2, "big") + self.data if lc else b""
        if le is not None:
            le_bytes = (le % 65536).to_bytes(2, "big")
            body += le_bytes if lc else b"\x00" + le_bytes
        return header + body

    def name(self) -> str:
        """A short human name for messages: 'GET DATA', 'VERIFY', ..."""
        try:
            return Ins(self.ins).name.replace("_", " ")
        except ValueError:
            return f"INS {self.ins:02X}"


def decode_command(raw: bytes) -> tuple[Apdu, bool]:
    """Parse a command APDU (card side). Returns the APDU and whether it was extended.

    Raises :class:`CardProtocolError` for a length that does not add up, which
    the card answers with 6700.
    """
    if len(raw) < 4:
        raise CardProtocolError("command APDU shorter than its 4-byte header")
    cla, ins, p1, p2 = raw[:4]
    body = raw[4:]
    if not body:
        return Apdu(cla, ins, p1, p2), False
    if len(body) == 1:  # case 2 short
        return Apdu(cla, ins, p1, p2, le=body[0] or SHORT_MAX_LE), False
    if body[0] != 0:  # case 3/4 short
        lc = body[0]
        if len(body) == 1 + lc:
            return Apdu(cla, ins, p1, p2, body[1 : 1 + lc]), False
        if len(body) == 2 + lc:
            return Apdu(cla, ins, p1, p2, body[1 : 1 + lc], body[1 + lc] or SHORT_MAX_LE), False
        raise CardProtocolError(f"short APDU with Lc={lc} but {len(body) - 1} bytes after it")
    # extended: body starts with 00
    if len(body) == 3:  # case 2 extended
        le = int.from_bytes(body[1:3], "big") or EXTENDED_MAX_LE
        return Apdu(cla, ins, p1, p2, le=le), True
    if len(body) < 3:
        raise CardProtocolError("extended APDU with a truncated length field")
    lc = int.from_bytes(body[1:3], "big")
    if lc == 0:
        raise CardProtocolError("extended APDU with Lc=0")
    rest = body[3:]
    if len(rest) == lc:
        return Apdu(cla, ins, p1, p2, rest), True
    if len(rest) == lc + 2:
        le = int.from_bytes(rest[lc:], "big") or EXTENDED_MAX_LE
        return Apdu(cla, ins, p1, p2, rest[:lc], le), True
    raise CardProtocolError(f"extended APDU with Lc={lc} but {len(rest)} bytes after it")
