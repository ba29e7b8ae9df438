"""Errors of the reference centre (the protocol's own errors are in sdbox.centre.protocol)."""

from __future__ import annotations

from sdbox.errors import SdboxError


class BrokerError(SdboxError):
    """Root of the reference centre's own errors (token register, bubble provisioning)."""
