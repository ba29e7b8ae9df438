"""Fingerprint image files (8-bit grey PNG or binary PGM) and the checks every capture passes.

The real capture path gives libfprint's image; enrolment stations, tests and
the benchmark also read image files (the FVC2002 sets are 8-bit grey PNG).
Only what a fingerprint sensor produces is accepted: one 8-bit grey channel,
non-interlaced, between :data:`MIN_SIDE_MM` and :data:`MAX_SIDE_MM` on each
side at the stated resolution. Anything else is an :class:`ImageError` that
names what was wrong, never a silent conversion: a colour or 16-bit image
means the wrong file or a misconfigured sensor.

PNG is decoded here (zlib and the five row filters of the PNG specification):
this avoids a dependency for one narrow format, and the decoder refuses all
that it does not handle.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from sdbox.biometric.errors import ImageError
from sdbox.biometric.ridges import GreyImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_SIDE_MM = 7.0  # below this no sensor covers enough of a finger to verify it
MAX_SIDE_MM = 25.5  # the compact card format's coordinate range (255 x 0.1 mm)
MM_PER_INCH = 25.4
BLANK_STDDEV = 4.0  # grey levels: sensor noise alone, no ridges anywhere
_PNG_GREY = 0
_MAX_DECODED = 64 << 20  # no sensor image is this large; guards against zlib bombs


def load(path: Path, ppi: int) -> GreyImage:
    """Read a PNG or PGM fingerprint image taken at ``ppi``, checked with :func:`check`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"the image {path} cannot be read ({exc.strerror})") from exc
    try:
        width, height, pixels = decode(data)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc.message}") from None
    return check(GreyImage(width, height, pixels, ppi / MM_PER_INCH), source=str(path))


def decode(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, pixels) of a PNG or binary PGM; anything else is an :class:`ImageError`."""
    if data.startswith(PNG_SIGNATURE):
        return _decode_png(data)
    if data[:2] == b"P5":
        return _decode_pgm(data)
    raise ImageError("not a PNG or binary PGM image")


def check(image: GreyImage, *, source: str = "the capture") -> GreyImage:
    """Refuse an image of the wrong size, an empty one, or a blank sensor (no ridges at all)."""
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{source} is empty ({image.width} x {image.height} pixels)")
    for side, pixels in (("width", image.width), ("height", image.height)):
        mm = pixels / image.ppmm
        if not MIN_SIDE_MM <= mm <= MAX_SIDE_MM:
            raise ImageError(
                f"{source}: {side} {pixels} px is {mm:.1f} mm at {image.ppmm * MM_PER_INCH:.0f} ppi,"
                f" outside the {MIN_SIDE_MM:g}..{MAX_SIDE_MM:g} mm of a fingerprint sensor"
            )
    grey = np.frombuffer(image.pixels, dtype=np.uint8)
    if float(grey.std()) < BLANK_STDDEV:
        raise ImageError(f"{source} is blank (no ridges: nothing on the sensor)")
    return image


def _decode_pgm(data: bytes) -> tuple[int, int, bytes]:
    fields: list[bytes] = []
    pos = 2
    while len(fields) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            pos = data.find(b"\n", pos) + 1 or len(data)
            continue
        start = pos
        while pos < len(data) and not data[pos : pos + 1].isspace():
            pos += 1
        if start == pos:
            raise ImageError("the PGM header is truncated")
        fields.append(data[start:pos])
    try:
        width, height, maxval = (int(f) for f in fields)
    except ValueError as exc:
        raise ImageError("the PGM header is not numeric") from exc
    if width < 0 or height < 0:
        raise ImageError(f"the PGM header gives a size of {width} x {height}")
    if maxval != 255:
        raise ImageError(f"a PGM of maximum value {maxval}: only 8-bit grey images are accepted")
    pixels = data[pos + 1 : pos + 1 + width * height]
    if len(pixels) != width * height:
        raise ImageError(f"the PGM holds {len(pixels)} pixels, its header says {width * height}")
    return width, height, pixels


def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    pos = len(PNG_SIGNATURE)
    header: tuple[int, ...] | None = None
    compressed = bytearray()
    while pos + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ImageError(f"the PNG chunk {kind!r} is truncated")
        pos += 12 + length
        if kind == b"IHDR":
            if length != 13:
                raise ImageError("the PNG header is malformed")
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    if header is None:
        raise ImageError("the PNG has no header")
    width, height, depth, colour, _compression, _filter, interlace = header
    if colour != _PNG_GREY:
        raise ImageError(f"a PNG of colour type {colour}: only single-channel grey is accepted")
    if depth != 8:
        raise ImageError(f"a PNG of {depth} bits per pixel: only 8-bit grey is accepted")
    if interlace:
        raise ImageError("an interlaced PNG: only non-interlaced images are accepted")
    if width * height > _MAX_DECODED:
        raise ImageError(f"a PNG of {width} x {height} pixels is far larger than a sensor's")
    try:
        inflater = zlib.decompressobj()
        raw = inflater.decompress(bytes(compressed), (width + 1) * height + 1)
    except zlib.error as exc:
        raise ImageError(f"the PNG data does not decompress ({exc})") from exc
    if len(raw) != (width + 1) * height:
        raise ImageError(f"the PNG holds {len(raw)} bytes of rows, {(width + 1) * height} expected")
    return width, height, _unfilter(raw, width, height)


def _unfilter(raw: bytes, width: int, height: int) -> bytes:
    """Undo PNG's per-row filters (one byte per pixel: the left neighbour is one byte back)."""
    out = np.zeros((height + 1, width), dtype=np.uint8)  # row 0: the zero row above the image
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)
    for y in range(height):
        kind, line = int(rows[y, 0]), rows[y, 1:]
        above = out[y]
        if kind == 0:
            out[y + 1] = line
        elif kind == 1:  # Sub: a running sum along the row, modulo 256
            out[y + 1] = np.cumsum(line, dtype=np.uint64).astype(np.uint8)
        elif kind == 2:  # Up
            out[y + 1] = line + above
        elif kind in (3, 4):  # Average, Paeth: each pixel needs its reconstructed left one
            out[y + 1] = _sequential(line.tolist(), above.tolist(), paeth=kind == 4)
        else:
            raise ImageError(f"row {y} has PNG filter {kind}, which does not exist")
    return out[1:].tobytes()


def _sequential(line: list[int], above: list[int], *, paeth: bool) -> list[int]:
    result = [0] * len(line)
    left = upper_left = 0
    for x, (value, up) in enumerate(zip(line, above, strict=True)):
        if paeth:
            estimate = left + up - upper_left
            pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - upper_left)
            predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
        else:
            predictor = (left + up) >> 1
        left = result[x] = (value + predictor) & 0xFF
        upper_left = up
    return result
