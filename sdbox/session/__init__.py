"""Sessions: hardened RDP (FreeRDP 3) and SPICE (remote-viewer) launchers.

>>> session = open_session(spec)          # not started yet
>>> await session.start()
>>> await session.wait_connected()        # or SessionFailed(ended)
>>> ended = await session.wait_ended()    # or session.kill() / session.close()
"""

from __future__ import annotations

from pathlib import Path

from sdbox.session.base import Session
from sdbox.session.errors import SessionConfigError, SessionError, SessionFailed, SessionStartError
from sdbox.session.outcome import EndReason, SessionEnded
from sdbox.session.rdp import RdpSession
from sdbox.session.spec import Credential, Display, Endpoint, Policy, Protocol, SessionSpec
from sdbox.session.spice import SpiceSession
from sdbox.session.supervisor import DEFAULT_SESSION_USER

__all__ = [
    "DEFAULT_SESSION_USER",
    "Credential",
    "Display",
    "EndReason",
    "Endpoint",
    "Policy",
    "Protocol",
    "RdpSession",
    "Session",
    "SessionConfigError",
    "SessionEnded",
    "SessionError",
    "SessionFailed",
    "SessionSpec",
    "SessionStartError",
    "SpiceSession",
    "open_session",
]


def open_session(
    spec: SessionSpec, *, run_as: str | None = DEFAULT_SESSION_USER, home_base: Path | None = None
) -> Session:
    """The launcher for ``spec``'s protocol (not started yet)."""
    if spec.endpoint.protocol is Protocol.RDP:
        return RdpSession(spec, run_as=run_as, home_base=home_base)
    return SpiceSession(spec, run_as=run_as, home_base=home_base)
