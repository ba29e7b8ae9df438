"""Errors of the session layer.

:class:`SessionError` is the root (the CLI maps it to exit code 6). A session
that ends, for whatever reason, is not an error by itself: it is reported as a
:class:`~sdbox.session.outcome.SessionEnded`. It becomes the error
:class:`SessionFailed` only where a caller waited for something the session
can no longer give (``wait_connected`` on a session that ended first), or,
in the CLI, where an abnormal end must give a non-zero exit status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdbox.errors import SdboxError

if TYPE_CHECKING:
    from sdbox.session.outcome import SessionEnded


class SessionError(SdboxError):
    """Root of every session error."""


class SessionConfigError(SessionError):
    """A session request that cannot be started as given (bad endpoint, pin, user...)."""


class SessionStartError(SessionError):
    """The session client could not be started on this box (missing binary, user, display)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class SessionFailed(SessionError):
    """The session failed (ended before it was connected, or ended abnormally).

    ``ended`` says why, in plain words (``message``) and for the log (``detail``).
    """

    def __init__(self, ended: SessionEnded) -> None:
        super().__init__(ended.message)
        self.ended = ended
