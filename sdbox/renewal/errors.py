"""Errors of remote certificate renewal (the centre's are in sdbox.centre.errors)."""

from __future__ import annotations

from sdbox.errors import SdboxError


class RenewalError(SdboxError):
    """Renewal could not proceed; the card keeps its current credentials."""


class CmpProtocolError(RenewalError):
    """A CMP message is malformed, unprotected, badly protected or out of sequence."""


class CaUnreachable(RenewalError):
    """The certificate authority (CMP server) could not be reached or did not answer."""


class JournalError(RenewalError):
    """The renewal journal is unreadable; remove it only after checking the card."""
