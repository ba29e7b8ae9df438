"""Sessions: hardened RDP (FreeRDP 3) and SPICE (remote-viewer) launchers.

>>> session = open_session(spec)          # not started yet
>>> await session.start()
>>> await session.wait_connected()        # or SessionFailed(ended)
>>> ended = await session.wait_ended()    # or session.kill() / session.close()

The names below are loaded when first used (PEP 562): importing one small
module of the package (``sdbox.session.keyboard`` for the agent's
configuration, ``sdbox.session.outcome`` for the D-Bus API the greeter and
``sdbox network apply`` share) runs this file first, and the launchers behind
it (asyncio, the supervisor, both clients) cost the boot-time commands that
never open a session tenths of a second each under emulation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdbox.session.base import Session
    from sdbox.session.errors import (
        SessionConfigError,
        SessionError,
        SessionFailed,
        SessionStartError,
    )
    from sdbox.session.launch import open_session
    from sdbox.session.outcome import EndReason, SessionEnded
    from sdbox.session.rdp import RdpSession
    from sdbox.session.spec import Credential, Display, Endpoint, Policy, Protocol, SessionSpec
    from sdbox.session.spice import SpiceSession
    from sdbox.session.supervisor import DEFAULT_SESSION_USER

# exported name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Session": "sdbox.session.base",
    "SessionConfigError": "sdbox.session.errors",
    "SessionError": "sdbox.session.errors",
    "SessionFailed": "sdbox.session.errors",
    "SessionStartError": "sdbox.session.errors",
    "EndReason": "sdbox.session.outcome",
    "SessionEnded": "sdbox.session.outcome",
    "RdpSession": "sdbox.session.rdp",
    "Credential": "sdbox.session.spec",
    "Display": "sdbox.session.spec",
    "Endpoint": "sdbox.session.spec",
    "Policy": "sdbox.session.spec",
    "Protocol": "sdbox.session.spec",
    "SessionSpec": "sdbox.session.spec",
    "SpiceSession": "sdbox.session.spice",
    "DEFAULT_SESSION_USER": "sdbox.session.supervisor",
    "open_session": "sdbox.session.launch",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, an ordinary module attribute
    return value

