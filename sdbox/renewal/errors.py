"""Errors of remote certificate renewal."""

from __future__ import annotations

from sdbox.errors import SdboxError


class RenewalError(SdboxError):
    """Renewal could not proceed; the card keeps its current credentials."""


class CmpProtocolError(RenewalError):
    """A CMP message is malformed, unprotected, badly protected or out of sequence."""


class CaUnreachable(RenewalError):
    """The certificate authority (CMP server) could not be reached or did not answer."""


class CentreError(RenewalError):
    """The centre refused or failed to drive card management (9B, directory signing)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code  # the centre's refusal code (docs/broker-protocol.md), if it refused


class CentreUnreachable(CentreError):
    """The centre could not be reached for card management."""


class JournalError(RenewalError):
    """The renewal journal is unreadable; remove it only after checking the card."""
