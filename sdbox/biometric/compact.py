"""ISO/IEC 19794-2 compact card format: 3 bytes per minutia.

Byte 1: x, byte 2: y, both in units of 0.1 mm from the image origin (so at
most 25.5 mm); byte 3: the minutia type in the two high bits (01 ridge
ending, 10 bifurcation, 00 other; 11 is reserved) and the angle in the six
low bits, in units of 360/64 degrees. This is what VERIFY 96/97 carries and
what the card keeps as reference data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from sdbox.biometric.errors import TemplateError

BYTES_PER_MINUTIA = 3
MAX_COORDINATE = 255
ANGLE_STEPS = 64
MAX_MINUTIAE = 255


class MinutiaType(IntEnum):
    """The two-bit minutia type."""

    OTHER = 0
    RIDGE_ENDING = 1
    BIFURCATION = 2


@dataclass(frozen=True)
class Minutia:
    """One minutia in card units: x, y in 0.1 mm; angle in 360/64 degree steps."""

    x: int
    y: int
    kind: MinutiaType
    angle: int

    @property
    def degrees(self) -> float:
        """The angle in degrees."""
        return self.angle * 360.0 / ANGLE_STEPS


def encode(minutiae: Iterable[Minutia]) -> bytes:
    """The compact card encoding; every value is range-checked."""
    out = bytearray()
    for index, m in enumerate(minutiae):
        for name, value, high in (
            ("x", m.x, MAX_COORDINATE),
            ("y", m.y, MAX_COORDINATE),
            ("angle", m.angle, ANGLE_STEPS - 1),
        ):
            if not 0 <= value <= high:
                raise TemplateError(f"minutia {index}: {name} = {value} is outside 0..{high}")
        out += bytes((m.x, m.y, (int(MinutiaType(m.kind)) << 6) | m.angle))
    count = len(out) // BYTES_PER_MINUTIA
    if count == 0:
        raise TemplateError("a template needs at least one minutia")
    if count > MAX_MINUTIAE:
        raise TemplateError(f"{count} minutiae: the compact format holds at most {MAX_MINUTIAE}")
    return bytes(out)


def decode(data: bytes) -> list[Minutia]:
    """Parse a compact card template; malformed input names what is wrong."""
    if not data:
        raise TemplateError("the template is empty (zero minutiae)")
    count, rest = divmod(len(data), BYTES_PER_MINUTIA)
    if rest:
        raise TemplateError(
            f"the template has {len(data)} bytes, not a multiple of {BYTES_PER_MINUTIA} (truncated?)"
        )
    if count > MAX_MINUTIAE:
        raise TemplateError(f"{count} minutiae: the compact format holds at most {MAX_MINUTIAE}")
    out = []
    for index in range(count):
        x, y, packed = data[3 * index : 3 * index + 3]
        kind = packed >> 6
        if kind == 3:
            raise TemplateError(f"minutia {index}: type 11 is reserved")
        out.append(Minutia(x, y, MinutiaType(kind), packed & 0x3F))
    return out
