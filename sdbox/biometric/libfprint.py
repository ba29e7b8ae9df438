"""The real capture path: a libfprint image device, NBIS mindtct minutiae, the card format.

libfprint (Debian's ``libfprint-2-2``, through GObject introspection,
``gir1.2-fprint-2.0``) drives the sensor. Its image devices run NIST's
mindtct (NBIS, bundled and maintained inside libfprint) on every captured
image: :meth:`FPrint.Device.capture_sync` returns the image with its
minutiae already detected. The introspected API gives only their
positions (``FpMinutia.get_coords``); the direction, type and reliability
are fields of the same ``struct fp_minutia`` (NBIS's ``MINUTIA``, layout in
libfprint's ``fpi-minutiae.h``, unchanged since libfprint 1.0), read here
with ctypes from ``fp_image_get_minutiae``. Every read is checked against
the introspected coordinates: a libfprint with another layout is refused,
never misread.

Conversion (mindtct's own ``lfs2m1_minutia_XYT``, ANSI INCITS 378 = the
ISO/IEC 19794-2 convention): x, y in pixels from the top left; NBIS
directions are 0..31 units of 11.25 degrees, 0 pointing up and increasing
clockwise, so the ISO angle (counter-clockwise from the x axis, pointing
into the ridge) is ``90 - 11.25 * direction`` degrees. Minutiae whose NBIS
reliability is below :data:`MIN_RELIABILITY` (the image border, smudges)
are dropped; the rest become an ISO/IEC 19794-2 record at the sensor's
resolution and then a card probe with :func:`sdbox.biometric.record.to_card`
(the card's BIT: at most 60, those nearest the centre of mass).

libfprint devices do not report their resolution (mindtct's parameters are
tuned for 500 ppi, as nearly all image sensors are), so it is configured.

The ``virtual_image`` driver (enabled by ``FP_VIRTUAL_IMAGE=<socket>``)
is libfprint's own test device: :func:`send_image` is its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sdbox.biometric import compact, quality, record
from sdbox.biometric.compact import MinutiaType
from sdbox.biometric.errors import PlaceFingerAgain, SensorUnavailable, TemplateError
from sdbox.biometric.quality import Quality
from sdbox.biometric.sensor import MAX_PROBE_MINUTIAE, MIN_PROBE_MINUTIAE

if TYPE_CHECKING:
    from sdbox.biometric.ridges import GreyImage

DEFAULT_PPI = 500
NBIS_DEGREES_PER_UNIT = 11.25  # 180 / NUM_DIRECTIONS (16)
NBIS_DIRECTIONS = 32
NBIS_BIFURCATION = 0  # lfs.h
NBIS_RIDGE_ENDING = 1
MIN_RELIABILITY = 0.1  # mindtct reliability; chosen on the FVC2002 sets (docs/biometrics.md)
VIRTUAL_IMAGE_DRIVER = "virtual_image"

# one capture at a time: libfprint's *_sync calls iterate the global default main context
_CAPTURE_LOCK = threading.Lock()


@dataclass(frozen=True)
class NbisMinutia:
    """A minutia as mindtct reports it (pixels, 11.25-degree units, reliability 0..1)."""

    x: int
    y: int
    direction: int
    reliability: float
    kind: int

    @property
    def iso_degrees(self) -> int:
        """The ISO/IEC 19794-2 angle in degrees (mindtct's M1 conversion)."""
        # NBIS's sround: halves away from zero (22.5 -> 23), not Python's to-even
        return (90 - int(self.direction * NBIS_DEGREES_PER_UNIT + 0.5)) % 360


@dataclass(frozen=True)
class Capture:
    """What a capture gave: the image size and mindtct's minutiae."""

    width: int
    height: int
    minutiae: tuple[NbisMinutia, ...]
    seconds: float
    quality: Quality | None = None  # None where the image was not measured


def to_record(capture: Capture, ppi: int = DEFAULT_PPI) -> record.FingerRecord:
    """The capture as an ISO/IEC 19794-2 record (one finger view), unreliable minutiae dropped."""
    kept = []
    for m in capture.minutiae:
        if m.reliability < MIN_RELIABILITY:
            continue
        kind = {NBIS_RIDGE_ENDING: MinutiaType.RIDGE_ENDING, NBIS_BIFURCATION: MinutiaType.BIFURCATION}
        angle = round(m.iso_degrees * record.RECORD_ANGLE_STEPS / 360) % record.RECORD_ANGLE_STEPS
        kept.append(record.RecordMinutia(kind.get(m.kind, MinutiaType.OTHER), m.x, m.y, angle,
                                         quality=min(100, round(m.reliability * 100))))  # fmt: skip
    resolution = round(ppi / 2.54)  # pixels per cm
    view = record.FingerView(position=0, minutiae=tuple(kept))
    return record.FingerRecord(capture.width, capture.height, resolution, resolution, (view,))


def to_probe(capture: Capture, ppi: int = DEFAULT_PPI) -> bytes:
    """The capture as a card probe; too few reliable minutiae is 'place your finger again'."""
    rec = to_record(capture, ppi)
    try:
        minutiae = record.to_card(rec.views[0], rec, min_minutiae=MIN_PROBE_MINUTIAE,
                                  max_minutiae=MAX_PROBE_MINUTIAE)  # fmt: skip
    except TemplateError as exc:
        raise PlaceFingerAgain(f"too few clear ridge details: {exc.message}") from exc
    return compact.encode(minutiae)


class LibfprintSensor:
    """A libfprint image device (the first that can capture images, or the named driver)."""

    def __init__(self, driver: str = "", ppi: int = DEFAULT_PPI) -> None:
        self.driver = driver
        self.ppi = ppi
        self.last_capture: Capture | None = None

    async def capture(self) -> bytes:
        """Wait for a finger, extract its minutiae, return the probe."""
        self.last_capture = await self.capture_minutiae()
        return to_probe(self.last_capture, self.ppi)

    async def capture_minutiae(self) -> Capture:
        """Wait for a finger; mindtct's minutiae of the image. Cancelling stops the device."""
        gio = _gi()[2]
        cancellable = gio.Cancellable()
        task = asyncio.ensure_future(asyncio.to_thread(self._capture_blocking, cancellable))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            cancellable.cancel()
            # wait for the device to be closed before anyone opens it again
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
            raise

    def _capture_blocking(self, cancellable: Any) -> Capture:
        fprint, glib, _ = _gi()
        with _CAPTURE_LOCK:
            device = self._device(fprint)
            try:
                device.open_sync(cancellable)
            except glib.Error as exc:
                _raise_from(exc, fprint, glib)
            try:
                started = time.perf_counter()
                image = device.capture_sync(True, cancellable)
                minutiae = _read_minutiae(image)
                seconds = time.perf_counter() - started
                width, height = image.get_width(), image.get_height()
                # a poor capture is refused here, before the card: it costs the researcher no try.
                # numpy (images, ridges) is loaded at the first capture, not at the agent's start:
                # under emulation it is a second of the box's boot, before any finger is there
                from sdbox.biometric.images import MM_PER_INCH  # noqa: PLC0415
                from sdbox.biometric.ridges import GreyImage  # noqa: PLC0415

                grey = GreyImage(width, height, bytes(image.get_data()), self.ppi / MM_PER_INCH)
                found = quality.gate(grey)
                return Capture(width, height, minutiae, seconds, found)
            except glib.Error as exc:
                _raise_from(exc, fprint, glib)
            finally:
                with contextlib.suppress(glib.Error):
                    device.close_sync(None)

    def _device(self, fprint: Any) -> Any:
        context = fprint.Context()
        devices = list(context.get_devices())
        for device in devices:
            if self.driver and device.get_driver() != self.driver:
                continue
            if device.has_feature(fprint.DeviceFeature.CAPTURE):
                return device
        wanted = f"the libfprint driver {self.driver!r}" if self.driver else "a libfprint image device"
        found = ", ".join(sorted(d.get_driver() for d in devices)) or "none"
        raise SensorUnavailable(
            f"no fingerprint sensor: {wanted} that can capture images is not connected "
            f"(devices found: {found}); plug the sensor in or fix [sensor] driver"
        )


def _gi() -> tuple[Any, Any, Any]:
    try:
        import gi  # noqa: PLC0415

        gi.require_version("FPrint", "2.0")
        from gi.repository import FPrint, Gio, GLib  # noqa: PLC0415
    except (ImportError, ValueError) as exc:
        raise SensorUnavailable(
            "libfprint is not installed (Debian packages gir1.2-fprint-2.0 and python3-gi)"
        ) from exc
    return FPrint, GLib, Gio


def _raise_from(exc: Any, fprint: Any, glib: Any) -> NoReturn:
    domain = exc.domain
    if domain == glib.quark_to_string(fprint.device_retry_quark()):
        raise PlaceFingerAgain(exc.message) from exc
    if domain == glib.quark_to_string(glib.io_error_quark()) and "minutiae" in exc.message.lower():
        raise PlaceFingerAgain("no ridge details were found") from exc
    if exc.matches(glib.io_error_quark(), _gi()[2].IOErrorEnum.CANCELLED):
        raise asyncio.CancelledError from exc
    raise SensorUnavailable(f"the fingerprint sensor failed: {exc.message}") from exc


class _FpMinutia(ctypes.Structure):
    # libfprint/fpi-minutiae.h, struct fp_minutia (NBIS MINUTIA)
    _fields_ = [
        ("x", ctypes.c_int),
        ("y", ctypes.c_int),
        ("ex", ctypes.c_int),
        ("ey", ctypes.c_int),
        ("direction", ctypes.c_int),
        ("reliability", ctypes.c_double),
        ("type", ctypes.c_int),
        ("appearing", ctypes.c_int),
        ("feature_id", ctypes.c_int),
        ("nbrs", ctypes.c_void_p),
        ("ridge_counts", ctypes.c_void_p),
        ("num_nbrs", ctypes.c_int),
    ]


class _GPtrArray(ctypes.Structure):
    _fields_ = [("pdata", ctypes.POINTER(ctypes.c_void_p)), ("len", ctypes.c_uint)]


_LIB: Any = None


def _libfprint() -> Any:
    global _LIB  # noqa: PLW0603 - loaded once, on first capture
    if _LIB is None:
        lib = ctypes.CDLL("libfprint-2.so.2")
        lib.fp_image_get_minutiae.restype = ctypes.POINTER(_GPtrArray)
        lib.fp_image_get_minutiae.argtypes = [ctypes.c_void_p]
        _LIB = lib
    return _LIB


def _object_pointer(obj: Any) -> int:
    capsule = obj.__gpointer__
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype = ctypes.c_char_p
    get_name.argtypes = [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    pointer = get_pointer(capsule, get_name(capsule))
    if not pointer:
        raise SensorUnavailable("libfprint returned an image without a native object")
    return int(pointer)


def _read_minutiae(image: Any) -> tuple[NbisMinutia, ...]:
    """mindtct's minutiae of a captured image, checked against the introspected coordinates."""
    listed = image.get_minutiae() or []
    array = _libfprint().fp_image_get_minutiae(_object_pointer(image))
    count = array.contents.len if array else 0
    if count != len(listed):
        raise SensorUnavailable("libfprint's minutiae list is not the one sdbox knows how to read")
    result = []
    for index, introspected in enumerate(listed):
        raw = _FpMinutia.from_address(array.contents.pdata[index])
        x, y = (int(v) for v in introspected.get_coords())
        if (raw.x, raw.y) != (x, y) or not 0 <= raw.direction < NBIS_DIRECTIONS or not (
            0.0 <= raw.reliability <= 1.0
        ):
            raise SensorUnavailable(
                "this libfprint's minutia layout is not the one sdbox reads; "
                "the capture path needs libfprint 1.90 to 1.94"
            )
        result.append(NbisMinutia(raw.x, raw.y, raw.direction, raw.reliability, raw.type))
    return tuple(result)


def send_image(socket_path: Path, image: GreyImage, *, timeout_s: float = 10.0) -> None:
    """Hand ``image`` to libfprint's ``virtual_image`` driver listening on ``socket_path``.

    The driver's protocol (libfprint ``drivers/virtual-image.c``): two native
    int32 (width, height), then width x height 8-bit grey pixels. The driver
    listens only while the device is open, so this waits for it.
    """
    header = struct.pack("ii", image.width, image.height)
    _send(socket_path, header + image.pixels, timeout_s)


def send_retry(socket_path: Path, *, timeout_s: float = 10.0) -> None:
    """Make the ``virtual_image`` device report a retry (finger too short / not centred)."""
    _send(socket_path, struct.pack("ii", -1, 0), timeout_s)


def _send(socket_path: Path, data: bytes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            try:
                conn.connect(str(socket_path))
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise SensorUnavailable(
                        f"libfprint's virtual_image device is not listening on {socket_path}"
                    ) from None
                time.sleep(0.02)
                continue
            conn.sendall(data)
            # the driver reads asynchronously: keep the connection until it has read all
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(timeout_s)
            with contextlib.suppress(OSError):
                conn.recv(1)
            return
