"""ISO/IEC 19794-2:2005 finger minutiae records, and their conversion to the card format.

Record layout (big-endian): "FMR\\0", version " 20\\0", record length (4),
capture equipment (2: 4-bit compliance, 12-bit id), image width and height
(2 + 2, pixels), horizontal and vertical resolution (2 + 2, pixels per cm),
number of finger views (1), reserved (1); per view: finger position (1),
view number and impression type (1: 4 + 4 bits), finger quality (1),
number of minutiae (1), then 6 bytes per minutia (2-bit type + 14-bit x;
2 reserved bits + 14-bit y; angle in 360/256 degree steps; quality), and the
extended data block length (2) followed by that many bytes.
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
HEADER = struct.Struct(">4s4sIHHHHHBB")
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
    """Parse a record; every malformation names the field."""
    if len(data) < HEADER.size:
        raise TemplateError(f"record header: {len(data)} bytes, at least {HEADER.size} expected")
    fmt, version, length, equipment, width, height, xres, yres, nviews, _reserved = (
        HEADER.unpack_from(data)
    )
    if fmt != FORMAT_ID:
        raise TemplateError(f"format identifier: {fmt!r}, expected 'FMR\\0'")
    if version != VERSION_2005:
        raise TemplateError(f"version: {version!r}, only ' 20\\0' (2005) is supported")
    if length != len(data):
        raise TemplateError(
            f"record length: the header says {length} bytes, the record has {len(data)}"
        )
    if xres == 0 or yres == 0:
        raise TemplateError("resolution: zero pixels per cm")
    pos = HEADER.size
    views = []
    for v in range(nviews):
        if pos + VIEW_HEADER.size > len(data):
            raise TemplateError(f"finger view {v}: header truncated")
        position, view_impression, quality, count = VIEW_HEADER.unpack_from(data, pos)
        pos += VIEW_HEADER.size
        minutiae = []
        for i in range(count):
            if pos + MINUTIA.size > len(data):
                raise TemplateError(f"finger view {v}, minutia {i}: truncated")
            tx, ry, angle, mq = MINUTIA.unpack_from(data, pos)
            pos += MINUTIA.size
            kind = tx >> 14
            if kind == 3:
                raise TemplateError(f"finger view {v}, minutia {i}: type 11 is reserved")
            x, y = tx & 0x3FFF, ry & 0x3FFF
            if x >= width or y >= height:
                raise TemplateError(
                    f"finger view {v}, minutia {i}: ({x}, {y}) lies outside the {width}x{height} image"
                )
            minutiae.append(RecordMinutia(MinutiaType(kind), x, y, angle, mq))
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
    return FingerRecord(width, height, xres, yres, tuple(views), equipment)


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
    for m in view.minutiae:
        x = round(m.x * 100 / record.x_resolution)
        y = round(m.y * 100 / record.y_resolution)
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
