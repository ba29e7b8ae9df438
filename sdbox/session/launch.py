"""The launcher for a session spec's protocol."""

from __future__ import annotations

from pathlib import Path

from sdbox.session.base import Session
from sdbox.session.rdp import RdpSession
from sdbox.session.spec import Protocol, SessionSpec
from sdbox.session.spice import SpiceSession
from sdbox.session.supervisor import DEFAULT_SESSION_USER


def open_session(
    spec: SessionSpec, *, run_as: str | None = DEFAULT_SESSION_USER, home_base: Path | None = None
) -> Session:
    """The launcher for ``spec``'s protocol (not started yet)."""
    if spec.endpoint.protocol is Protocol.RDP:
        return RdpSession(spec, run_as=run_as, home_base=home_base)
    return SpiceSession(spec, run_as=run_as, home_base=home_base)
