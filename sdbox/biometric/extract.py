"""Minutiae of an image with the box's own extractor: libfprint's NBIS mindtct, no sensor needed.

On the box, libfprint runs mindtct on every image its sensor captures
(:mod:`sdbox.biometric.libfprint`). The same extraction is available for any
image: libfprint exports ``fp_image_new`` and ``fp_image_detect_minutiae``
(its public FpImage API), which run exactly the code ``capture_sync`` runs
(``get_minutiae`` with NBIS ``lfsparms_V2``). So an image file (enrolment
from a file, the tests and the benchmark on the FVC2002 sets) goes through
the very extraction a capture does, not a second build of NBIS.

Two fields of ``struct _FpImage`` (libfprint's ``fpi-image.h``: a GObject,
then ``guint width, height; gdouble ppmm; flags; guint8 *data``) have no
setter: the pixels are written into the buffer that ``fp_image_get_data``
returns, and ``ppmm`` (which drivers set; mindtct uses it for minutia
reliability) is written at its offset and read back through
``fp_image_get_ppmm``. A libfprint with another layout is refused.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from dataclasses import replace
from pathlib import Path

from sdbox.biometric import images, libfprint, quality
from sdbox.biometric.errors import ImageError, SensorUnavailable
from sdbox.biometric.libfprint import Capture, _gi, _libfprint, _object_pointer, _read_minutiae
from sdbox.biometric.ridges import GreyImage

_GOBJECT_SIZE = 24  # GTypeInstance*, guint ref_count, GData* (padded) on LP64
_PPMM_OFFSET = _GOBJECT_SIZE + 8  # after guint width, height
_TIMEOUT_MS = 30_000
_LOCK = threading.Lock()  # mindtct keeps global state: one extraction at a time


def _prototypes() -> ctypes.CDLL:
    lib: ctypes.CDLL = _libfprint()
    lib.fp_image_get_data.restype = ctypes.c_void_p
    lib.fp_image_get_data.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
    lib.fp_image_get_ppmm.restype = ctypes.c_double
    lib.fp_image_get_ppmm.argtypes = [ctypes.c_void_p]
    return lib


def detect(image: GreyImage) -> Capture:
    """mindtct's minutiae of ``image``, as libfprint finds them on a captured image."""
    fprint, glib, _gio = _gi()
    lib = _prototypes()
    with _LOCK:
        fp_image = fprint.Image.new(image.width, image.height)
        pointer = _object_pointer(fp_image)
        size = ctypes.c_size_t()
        data = lib.fp_image_get_data(pointer, ctypes.byref(size))
        if not data or size.value != len(image.pixels):
            raise SensorUnavailable("libfprint's image buffer is not the size sdbox asked for")
        ctypes.memmove(data, image.pixels, len(image.pixels))
        ctypes.c_double.from_address(pointer + _PPMM_OFFSET).value = image.ppmm
        if abs(lib.fp_image_get_ppmm(pointer) - image.ppmm) > 1e-9:
            raise SensorUnavailable("this libfprint's image layout is not the one sdbox writes")
        context = glib.MainContext.new()
        context.push_thread_default()
        outcome: list[object] = []
        try:
            fp_image.detect_minutiae(None, lambda obj, result: outcome.append(result))
            deadline = glib.get_monotonic_time() + _TIMEOUT_MS * 1000
            while not outcome and glib.get_monotonic_time() < deadline:
                context.iteration(True)
        finally:
            context.pop_thread_default()
        if not outcome:
            raise SensorUnavailable("libfprint's minutiae detection did not finish")
        try:
            fp_image.detect_minutiae_finish(outcome[0])
        except glib.Error as exc:
            raise ImageError(f"mindtct found no ridges in the image ({exc.message})") from exc
        return Capture(image.width, image.height, _read_minutiae(fp_image), 0.0)


def template(image: GreyImage, ppi: int, *, gated: bool = True) -> bytes:
    """The compact card template of an image, as a capture makes it (quality gate first)."""
    measured = quality.gate(image) if gated else None
    capture = detect(image)
    return libfprint.to_probe(replace(capture, quality=measured), ppi)


class ImageFileSensor:
    """Presents an image file (PNG or PGM at ``ppi``) as a capture: checks, quality gate, mindtct."""

    def __init__(self, path: Path, ppi: int = libfprint.DEFAULT_PPI) -> None:
        self.path = path
        self.ppi = ppi

    async def capture(self) -> bytes:
        """The image's probe; a poor image is :class:`~sdbox.biometric.quality.PoorCapture`."""
        image = await asyncio.to_thread(images.load, self.path, self.ppi)
        return await asyncio.to_thread(template, image, self.ppi)
