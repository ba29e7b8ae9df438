"""Finger minutiae records (ISO/IEC 19794-2 2005; 2011 and ANSI/INCITS 378 read too), to the card format.

Record layout (big-endian): "FMR\\0", version " 20\\0", record length (4),
capture equipment (2: 4-bit compliance, 12-bit id), image width and height
(2 + 2, pixels), horizontal and vertical resolution (2 + 2, pixels per cm),
number of finger views (1), reserved (1); per view: finger position (1),
view number and impression type (1: 4 + 4 bits), finger quality (1),
number of minutiae (1), then 6 bytes per minutia (2-bit type + 14-bit x;
2 reserved bits + 14-bit y; angle in 360/256 degree steps; quality), and the
extended data block length (2) followed by that many bytes.

The 2011 edition ("030\\0", ISO/IEC 19794-1:2011 framing) is read as well:
a 15-byte header (format, version, length, number of representations,
certification flag); per representation its length (4), capture date and
time (9), device technology (1), vendor (2) and type (2), quality blocks
(count + 5 bytes each), certification blocks when the flag is set (count + 3
bytes each), then finger position (1), representation number (1),
resolutions (2 + 2, pixels per cm), impression type (1), image size (2 + 2),
minutia field length and ridge ending type (1: 4 + 4 bits), number of
minutiae (1), 5 or 6 bytes per minutia (quality only in 6) laid out as in
2005, and the extended data length (2) with its blocks. Each representation
keeps its own resolution. Writing is 2005 only.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from sdbox.biometric.compact import ANGLE_STEPS, MAX_COORDINATE, Minutia, MinutiaType
from sdbox.biometric.errors import TemplateError

FORMAT_ID = b"FMR\x00"
VERSION_2005 = b" 20\x00"
VERSION_2011 = b"030\x00"
HEADER = struct.Struct(">4s4sIHHHHHBB")
HEADER_2011 = struct.Struct(">4s4sIHB")
REPRESENTATION_2011 = struct.Struct(">I9sBHH")  # length, date/time, technology, vendor, type
FINGER_2011 = struct.Struct(">BBHHBHHBB")  # position .. number of minutiae
VIEW_HEADER = struct.Struct(">BBBB")
MINUTIA = struct.Struct(">HHBB")
RECORD_ANGLE_STEPS = 256


class MinutiaeOrder(IntEnum):
    """BIT minutiae order (ISO/IEC 7816-11 / 19794-2 card formats); the direction bits are ignored."""

    NONE = 0x00
    XY = 0x04
    YX = 0x08
    ANGLE = 0x0C
    POLAR = 0x10


@dataclass(frozen=True)
class RecordMinutia:
    """A minutia as the record stores it: pixels and 360/256 degree steps."""

    kind: MinutiaType
    x: int
    y: int
    angle: int
    quality: int = 0


@dataclass(frozen=True)
class FingerView:
    """One finger view of a record."""

    position: int
    minutiae: tuple[RecordMinutia, ...]
    view: int = 0
    impression: int = 0
    quality: int = 100
    extended: bytes = b""
    # 2011 records give each representation its own resolution (pixels per cm)
    x_resolution: int | None = None
    y_resolution: int | None = None


@dataclass(frozen=True)
class FingerRecord:
    """An ISO/IEC 19794-2:2005 finger minutiae record."""

    width: int
    height: int
    x_resolution: int  # pixels per cm
    y_resolution: int
    views: tuple[FingerView, ...] = field(default_factory=tuple)
    equipment: int = 0

    def encode(self) -> bytes:
        """The record's bytes."""
        body = bytearray()
        for view in self.views:
            if len(view.minutiae) > 255:
                raise TemplateError("a finger view holds at most 255 minutiae")
            body += VIEW_HEADER.pack(
                view.position, (view.view << 4) | view.impression, view.quality, len(view.minutiae)
            )
            for m in view.minutiae:
                if not (
                    0 <= m.x < 1 << 14 and 0 <= m.y < 1 << 14 and 0 <= m.angle < RECORD_ANGLE_STEPS
                ):
                    raise TemplateError(
                        f"minutia ({m.x}, {m.y}, {m.angle}) is out of the record's ranges"
                    )
                body += MINUTIA.pack((int(m.kind) << 14) | m.x, m.y, m.angle, m.quality)
            body += struct.pack(">H", len(view.extended)) + view.extended
        length = HEADER.size + len(body)
        head = HEADER.pack(FORMAT_ID, VERSION_2005, length, self.equipment, self.width, self.height,
                           self.x_resolution, self.y_resolution, len(self.views), 0)  # fmt: skip
        return head + bytes(body)


def decode_record(data: bytes) -> FingerRecord:
    """Parse a record (ISO 2005 or 2011, ANSI/INCITS 378); every malformation names the field."""
    if data[4:8] == VERSION_2011 and data[:4] == FORMAT_ID:
        return _decode_2011(data)
    if _is_ansi_378(data):
        return _decode_ansi_378(data)
    if len(data) < HEADER.size:
        raise TemplateError(f"record header: {len(data)} bytes, at least {HEADER.size} expected")
    fmt, version, length, equipment, width, height, xres, yres, nviews, _reserved = (
        HEADER.unpack_from(data)
    )
    if fmt != FORMAT_ID:
        raise TemplateError(f"format identifier: {fmt!r}, expected 'FMR\\0'")
    if version != VERSION_2005:
        raise TemplateError(
            f"version: {version!r}, only ' 20\\0' (2005) and '030\\0' (2011) are supported"
        )
    if length != len(data):
        raise TemplateError(
            f"record length: the header says {length} bytes, the record has {len(data)}"
        )
    if xres == 0 or yres == 0:
        raise TemplateError("resolution: zero pixels per cm")
    views = _views(data, HEADER.size, nviews, width, height, angle_scale=1.0)
    return FingerRecord(width, height, xres, yres, views, equipment)


def _views(
    data: bytes, pos: int, nviews: int, width: int, height: int, *, angle_scale: float
) -> tuple[FingerView, ...]:
    """The finger views of a 2005 (or ANSI 378) record, to its last byte."""
    views = []
    for v in range(nviews):
        if pos + VIEW_HEADER.size > len(data):
            raise TemplateError(f"finger view {v}: header truncated")
        position, view_impression, quality, count = VIEW_HEADER.unpack_from(data, pos)
        pos += VIEW_HEADER.size
        minutiae, pos = _minutiae(data, pos, count, MINUTIA.size, width, height, f"finger view {v}")
        if angle_scale != 1.0:
            minutiae = [
                RecordMinutia(
                    m.kind, m.x, m.y, round(m.angle * angle_scale) % RECORD_ANGLE_STEPS, m.quality
                )
                for m in minutiae
            ]
        if pos + 2 > len(data):
            raise TemplateError(f"finger view {v}: extended data length missing")
        (ext_len,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + ext_len > len(data):
            raise TemplateError(
                f"finger view {v}: extended data says {ext_len} bytes, {len(data) - pos} remain"
            )
        extended = bytes(data[pos : pos + ext_len])
        pos += ext_len
        views.append(
            FingerView(
                position,
                tuple(minutiae),
                view_impression >> 4,
                view_impression & 0xF,
                quality,
                extended,
            )
        )
    if pos != len(data):
        raise TemplateError(f"record: {len(data) - pos} bytes after the last finger view")
    return tuple(views)


# ANSI/INCITS 378-2004 shares the magic and version with ISO 2005 but not the
# header: a 2-byte record length (or 0 and a 4-byte one), a 4-byte CBEFF
# product identifier, then equipment, image size, resolution and the views
# as in ISO; its angles are in 2-degree units.
ANSI_HEADER = struct.Struct(">4s4sHIHHHHHBB")
ANSI_HEADER_LONG = struct.Struct(">4s4sHIIHHHHHBB")


def _is_ansi_378(data: bytes) -> bool:
    if data[:8] != FORMAT_ID + VERSION_2005 or len(data) < ANSI_HEADER.size:
        return False
    if int.from_bytes(data[8:12], "big") == len(data):
        return False  # ISO's 4-byte length is right: ISO
    short = int.from_bytes(data[8:10], "big")
    long_form = short == 0 and int.from_bytes(data[10:14], "big") == len(data)
    return short == len(data) or long_form


def _decode_ansi_378(data: bytes) -> FingerRecord:
    if int.from_bytes(data[8:10], "big") == 0:
        if len(data) < ANSI_HEADER_LONG.size:
            raise TemplateError("ANSI 378 record header: truncated")
        *_, equipment, width, height, xres, yres, nviews, _reserved = ANSI_HEADER_LONG.unpack_from(
            data
        )
        pos = ANSI_HEADER_LONG.size
    else:
        *_, equipment, width, height, xres, yres, nviews, _reserved = ANSI_HEADER.unpack_from(data)
        pos = ANSI_HEADER.size
    if xres == 0 or yres == 0:
        raise TemplateError("resolution: zero pixels per cm")
    # 2-degree units (0-179) to the ISO record's 360/256
    views = _views(data, pos, nviews, width, height, angle_scale=2 * RECORD_ANGLE_STEPS / 360)
    return FingerRecord(width, height, xres, yres, views, equipment)


def _minutiae(
    data: bytes, pos: int, count: int, size: int, width: int, height: int, where: str
) -> tuple[list[RecordMinutia], int]:
    minutiae = []
    for i in range(count):
        if pos + size > len(data):
            raise TemplateError(f"{where}, minutia {i}: truncated")
        tx, ry, angle = struct.unpack_from(">HHB", data, pos)
        quality = data[pos + 5] if size == 6 else 0
        pos += size
        kind = tx >> 14
        if kind == 3:
            raise TemplateError(f"{where}, minutia {i}: type 11 is reserved")
        x, y = tx & 0x3FFF, ry & 0x3FFF
        if x >= width or y >= height:
            raise TemplateError(
                f"{where}, minutia {i}: ({x}, {y}) lies outside the {width}x{height} image"
            )
        minutiae.append(RecordMinutia(MinutiaType(kind), x, y, angle, quality))
    return minutiae, pos


def _decode_2011(data: bytes) -> FingerRecord:
    if len(data) < HEADER_2011.size:
        raise TemplateError(
            f"record header: {len(data)} bytes, at least {HEADER_2011.size} expected (2011)"
        )
    _fmt, _version, length, count, certified = HEADER_2011.unpack_from(data)
    if length != len(data):
        raise TemplateError(
            f"record length: the header says {length} bytes, the record has {len(data)}"
        )
    if certified > 1:
        raise TemplateError(f"certification flag: {certified}, expected 0 or 1")
    if count == 0:
        raise TemplateError("number of finger representations: 0")
    pos = HEADER_2011.size
    views: list[FingerView] = []
    geometry: tuple[int, int, int, int] | None = None
    for r in range(count):
        where = f"finger representation {r}"
        if pos + REPRESENTATION_2011.size > len(data):
            raise TemplateError(f"{where}: header truncated")
        rep_len = REPRESENTATION_2011.unpack_from(data, pos)[0]
        end = pos + rep_len
        if rep_len < REPRESENTATION_2011.size or end > len(data):
            raise TemplateError(
                f"{where}: length {rep_len} does not fit the {len(data) - pos} bytes left"
            )
        pos += REPRESENTATION_2011.size
        blocks = [("quality", 5)] + ([("certification", 3)] if certified else [])
        for name, size in blocks:
            if pos + 1 > end:
                raise TemplateError(f"{where}: {name} block count missing")
            pos += 1 + data[pos] * size
            if pos > end:
                raise TemplateError(f"{where}: {name} blocks run past the representation")
        if pos + FINGER_2011.size > end:
            raise TemplateError(f"{where}: finger header truncated")
        position, number, xres, yres, impression, width, height, field, nmin = (
            FINGER_2011.unpack_from(data, pos)
        )
        pos += FINGER_2011.size
        if xres == 0 or yres == 0:
            raise TemplateError(f"{where}: resolution of zero pixels per cm")
        size = field >> 4
        if size not in (5, 6):
            raise TemplateError(f"{where}: minutia field length {size}, expected 5 or 6")
        minutiae, pos = _minutiae(data[:end], pos, nmin, size, width, height, where)
        if pos + 2 > end:
            raise TemplateError(f"{where}: extended data length missing")
        (ext_len,) = struct.unpack_from(">H", data, pos)
        pos += 2
        if pos + ext_len != end:
            raise TemplateError(
                f"{where}: extended data says {ext_len} bytes, {end - pos} remain in it"
            )
        extended = bytes(data[pos:end])
        pos = end
        views.append(
            FingerView(position, tuple(minutiae), number, impression, 100, extended, xres, yres)
        )
        geometry = geometry or (width, height, xres, yres)
    if pos != len(data):
        raise TemplateError(f"record: {len(data) - pos} bytes after the last representation")
    assert geometry is not None
    return FingerRecord(*geometry, views=tuple(views))


def to_card(
    view: FingerView,
    record: FingerRecord,
    *,
    min_minutiae: int = 1,
    max_minutiae: int = 60,
    order: int = MinutiaeOrder.NONE,
) -> list[Minutia]:
    """A finger view in card units, fitted to the card's BIT.

    Coordinates go from pixels to 0.1 mm with the record's resolution;
    angles from 360/256 to 360/64 steps. Above ``max_minutiae``, the minutiae
    farthest from the centre of mass go first (the core area carries the
    most reliable ones); below ``min_minutiae`` the capture is refused.
    """
    converted = []
    x_resolution = view.x_resolution or record.x_resolution
    y_resolution = view.y_resolution or record.y_resolution
    for m in view.minutiae:
        x = round(m.x * 100 / x_resolution)
        y = round(m.y * 100 / y_resolution)
        if x > MAX_COORDINATE or y > MAX_COORDINATE:
            continue  # beyond 25.5 mm: not representable in the card format
        angle = round(m.angle * ANGLE_STEPS / RECORD_ANGLE_STEPS) % ANGLE_STEPS
        converted.append(Minutia(x, y, m.kind, angle))
    if len(converted) < min_minutiae:
        raise TemplateError(f"{len(converted)} minutiae, the card needs at least {min_minutiae}")
    if len(converted) > max_minutiae:
        cx = sum(m.x for m in converted) / len(converted)
        cy = sum(m.y for m in converted) / len(converted)
        converted.sort(key=lambda m: (m.x - cx) ** 2 + (m.y - cy) ** 2)
        converted = converted[:max_minutiae]
    method = order & 0x1C
    if method == MinutiaeOrder.XY:
        converted.sort(key=lambda m: (m.x, m.y))
    elif method == MinutiaeOrder.YX:
        converted.sort(key=lambda m: (m.y, m.x))
    elif method == MinutiaeOrder.ANGLE:
        converted.sort(key=lambda m: m.angle)
    elif method == MinutiaeOrder.POLAR:
        cx = sum(m.x for m in converted) / len(converted)
        cy = sum(m.y for m in converted) / len(converted)
        converted.sort(
            key=lambda m: (math.hypot(m.x - cx, m.y - cy), math.atan2(m.y - cy, m.x - cx))
        )
    if order & 0x02:  # descending
        converted.reverse()
    return converted
