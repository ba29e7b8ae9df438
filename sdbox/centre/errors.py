"""Errors of the box's clients of the centre (docs/broker-protocol.md).

One hierarchy for every request the box makes to the centre (credentials,
enrolment, card management), so that a caller maps them by type: an
unreachable centre is worth retrying later, a refusal carries the centre's
code. Malformed messages are :class:`sdbox.centre.protocol.ProtocolError`,
shared with the reference centre.
"""

from __future__ import annotations

from typing import Any

from sdbox.errors import SdboxError


class CentreError(SdboxError):
    """The centre refused or failed to serve a request; ``code`` is its refusal code, if any."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code  # the centre's refusal code (docs/broker-protocol.md), if it refused


class CentreUnreachable(CentreError):
    """The centre cannot be reached (network, tunnel, TLS)."""


class CentreRefused(CentreError):
    """The centre answered with a refusal; ``code`` says why."""

    def __init__(self, code: str, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"the centre refused: {message}", code=code)
        self.detail = detail or {}  # the refusal's other fields (the fleet's last sequence)
