"""Errors of image handling and flashing, in words an R&D engineer can act on."""

from __future__ import annotations

from sdbox.errors import SdboxError


class BootImageError(SdboxError):
    """An image, a device or a tool failed; ``detail`` keeps the tool's output tail."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class UnsafeTarget(BootImageError):
    """The device must not be written (mounted, the running system's disk, too small)."""


class VerificationFailed(BootImageError):
    """What was read back from the device is not what was written."""


class ToolFailed(BootImageError):
    """An external tool (mtools, sfdisk, zstd, ...) failed."""
