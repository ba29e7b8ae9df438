"""What a card's ATR says about how to talk to it (ISO/IEC 7816-3 and 7816-4 8.1.1).

Only what selects the APDU processors is read: the transmission protocols
offered (TD bytes: T=0, T=1) and the card capabilities of the historical
bytes (compact-TLV tag 7, third software function byte: command chaining,
extended Lc/Le). A card that states no capabilities is taken at the safest
reading: no extended length, and command chaining only if it says so, as
OpenSC's card drivers and yubikit do before they trust a card with more.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sdbox.smartcard.errors import CardProtocolError

TS_DIRECT = 0x3B
TS_INVERSE = 0x3F
CATEGORY_COMPACT_TLV = 0x80  # historical bytes: compact-TLV objects follow
CATEGORY_COMPACT_TLV_STATUS = 0x00  # compact-TLV, then a 3-byte status indicator
TAG_CARD_CAPABILITIES = 0x7
CAP_COMMAND_CHAINING = 0x80  # third software function byte, bit 8
CAP_EXTENDED_LENGTH = 0x40  # bit 7
_MAX_ATR = 33


class Transmission(Enum):
    """The transmission protocol the card offers (ISO/IEC 7816-3)."""

    T0 = "T=0"
    T1 = "T=1"


@dataclass(frozen=True)
class AtrInfo:
    """The parts of an ATR that decide how APDUs are sent."""

    atr: bytes
    protocols: frozenset[Transmission]
    historical: bytes
    capabilities_stated: bool
    command_chaining: bool
    extended_length: bool

    @property
    def transmission(self) -> Transmission:
        """T=1 when offered (block protocol, no 61XX/6CXX dance), else T=0."""
        return Transmission.T1 if Transmission.T1 in self.protocols else Transmission.T0


def parse_atr(atr: bytes) -> AtrInfo:
    """Parse an ATR; raises :class:`CardProtocolError` for one that does not add up."""
    if not 2 <= len(atr) <= _MAX_ATR:
        raise CardProtocolError(f"an ATR has 2 to {_MAX_ATR} bytes, not {len(atr)}")
    if atr[0] not in (TS_DIRECT, TS_INVERSE):
        raise CardProtocolError(f"ATR: TS {atr[0]:02X} is neither 3B nor 3F")
    t0 = atr[1]
    hist_len = t0 & 0x0F
    y = t0 >> 4
    pos = 2
    protocols: set[Transmission] = set()
    first_td = True
    while True:
        for bit in (0x1, 0x2, 0x4):  # TA, TB, TC
            if y & bit:
                pos += 1
        if not y & 0x8:  # no TD: no further interface bytes
            break
        if pos >= len(atr):
            raise CardProtocolError("ATR: interface bytes run past its end")
        td = atr[pos]
        pos += 1
        proto = td & 0x0F
        if proto == 0:
            protocols.add(Transmission.T0)
        elif proto == 1:
            protocols.add(Transmission.T1)
        first_td = False
        y = td >> 4
    if first_td:
        protocols.add(Transmission.T0)  # no TD1: T=0 is implied
    if pos + hist_len > len(atr):
        raise CardProtocolError("ATR: historical bytes run past its end")
    historical = atr[pos : pos + hist_len]
    rest = atr[pos + hist_len :]
    needs_tck = protocols != {Transmission.T0}
    if needs_tck:
        if len(rest) != 1:
            raise CardProtocolError("ATR: a T=1 ATR ends with one check byte (TCK)")
        check = 0
        for byte in atr[1:]:
            check ^= byte
        if check:
            raise CardProtocolError("ATR: the check byte (TCK) does not match")
    elif rest:
        raise CardProtocolError(f"ATR: {len(rest)} bytes after the historical bytes")
    stated, chaining, extended = _capabilities(historical)
    return AtrInfo(atr, frozenset(protocols), historical, stated, chaining, extended)


def _capabilities(historical: bytes) -> tuple[bool, bool, bool]:
    """(stated, command chaining, extended length) from compact-TLV historical bytes."""
    if not historical or historical[0] not in (CATEGORY_COMPACT_TLV, CATEGORY_COMPACT_TLV_STATUS):
        return False, False, False
    body = historical[1:]
    if historical[0] == CATEGORY_COMPACT_TLV_STATUS:
        body = body[:-3]
    i = 0
    while i < len(body):
        tag, length = body[i] >> 4, body[i] & 0x0F
        value = body[i + 1 : i + 1 + length]
        if len(value) != length:
            return False, False, False  # a truncated object states nothing
        if tag == TAG_CARD_CAPABILITIES and length >= 3:
            third = value[2]
            return True, bool(third & CAP_COMMAND_CHAINING), bool(third & CAP_EXTENDED_LENGTH)
        i += 1 + length
    return False, False, False


def build_atr(*, transmission: Transmission, chaining: bool, extended: bool, tag: bytes) -> bytes:
    """An ATR stating ``transmission`` and the capabilities (the emulator's, by variant).

    T=1: TS, T0, TD1 (T=0 offered, TD2 follows), TD2 (T=1), historical, TCK.
    T=0: TS, T0, historical (no TD1: T=0 implied, no TCK).
    """
    third = (CAP_COMMAND_CHAINING if chaining else 0) | (CAP_EXTENDED_LENGTH if extended else 0)
    historical = bytes((CATEGORY_COMPACT_TLV, 0x73, 0xC0, 0x21, third)) + tag
    if len(historical) > 0x0F:
        raise ValueError("at most 15 historical bytes")
    if transmission == Transmission.T0:
        return bytes((TS_DIRECT, len(historical))) + historical
    body = bytes((TS_DIRECT, 0x80 | len(historical), 0x80, 0x01)) + historical
    check = 0
    for byte in body[1:]:
        check ^= byte
    return body + bytes((check,))


def uses_extended_length(atr: bytes) -> bool:
    """Whether to send extended-length APDUs to the card that answered ``atr``.

    A card that states its capabilities is taken at its word; one that states
    none (proprietary historical bytes) or whose ATR does
    not parse keeps the assumption sdbox has always made of PIV cards.
    """
    try:
        info = parse_atr(atr)
    except CardProtocolError:
        return True
    return info.extended_length if info.capabilities_stated else True
