"""Errors of the biometric codecs and sensors."""

from __future__ import annotations

from sdbox.errors import SdboxError


class BiometricError(SdboxError):
    """Root of the biometric errors."""


class TemplateError(BiometricError):
    """A template does not parse or is out of range; the message names the field."""


class CaptureError(BiometricError):
    """The sensor could not give a usable capture."""


class PlaceFingerAgain(CaptureError):
    """The capture was too poor (too few minutiae, finger moved): place the finger again."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"place your finger again ({reason})")


class SensorUnavailable(CaptureError):
    """The sensor is unplugged or not answering."""


class ImageError(CaptureError):
    """An image is not a usable fingerprint image (size, depth, empty, blank); the message says which."""
