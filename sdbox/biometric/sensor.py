"""Fingerprint sensors: capture a finger, give a probe template (compact card format).

Every sensor is an async ``capture()`` that returns the probe, or raises
:class:`~sdbox.biometric.errors.PlaceFingerAgain` (a poor capture: the box
asks again) or :class:`~sdbox.biometric.errors.SensorUnavailable`. Captures
are cancellable (the agent cancels when the card leaves).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sdbox.biometric import compact, record
from sdbox.biometric.errors import PlaceFingerAgain, SensorUnavailable, TemplateError

if TYPE_CHECKING:
    from sdbox.biometric.synth import DistortionProfile

MIN_PROBE_MINUTIAE = 12
MAX_PROBE_MINUTIAE = 60


class Sensor(Protocol):
    """A fingerprint sensor."""

    async def capture(self) -> bytes:
        """Wait for a finger; return the probe template."""
        ...


class EmulatedSensor:
    """A seeded synthetic finger: each capture is a fresh, distorted impression."""

    def __init__(
        self,
        identity_seed: int,
        profile: DistortionProfile | None = None,
        delay_s: float = 0.0,
    ) -> None:
        # synth (numpy) is loaded by the emulated sensor alone: the agent imports this
        # module whatever its sensor, and numpy is a second of a box's boot under emulation
        from sdbox.biometric import synth  # noqa: PLC0415

        self.identity_seed = identity_seed
        self.profile = synth.DEFAULT if profile is None else profile
        self.delay_s = delay_s
        self.captures = 0

    async def capture(self) -> bytes:
        """The next impression of the finger."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.captures += 1
        from sdbox.biometric import synth  # noqa: PLC0415  (loaded by __init__ already)

        minutiae = synth.impression_minutiae(
            self.identity_seed, self.captures, self.profile, MAX_PROBE_MINUTIAE
        )
        if len(minutiae) < MIN_PROBE_MINUTIAE:
            raise PlaceFingerAgain(f"only {len(minutiae)} minutiae were found")
        return compact.encode(minutiae)


class FileSensor:
    """Presents a template from a file: an ISO/IEC 19794-2 record or a compact card template."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def capture(self) -> bytes:
        """The file's finger, in the card format."""
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except OSError as exc:
            raise SensorUnavailable(f"the template file {self.path} cannot be read") from exc
        return to_probe(data)


def to_probe(data: bytes) -> bytes:
    """A probe from an ISO record (first finger view) or a compact template."""
    if data.startswith(record.FORMAT_ID):
        parsed = record.decode_record(data)
        if not parsed.views:
            raise TemplateError("the record has no finger view")
        try:
            minutiae = record.to_card(
                parsed.views[0],
                parsed,
                min_minutiae=MIN_PROBE_MINUTIAE,
                max_minutiae=MAX_PROBE_MINUTIAE,
            )
        except TemplateError as exc:
            raise PlaceFingerAgain(exc.message) from exc
        return compact.encode(minutiae)
    compact.decode(data)  # validates
    return data
