"""The ports of the agent's state machine: what it talks to, as protocols.

The machine (:mod:`sdbox.agent.machine`) and the connection flow
(:mod:`sdbox.agent.connect`) know only these; :mod:`sdbox.agent.adapters`
binds them to the real components (trust store, sensor, session clients),
:mod:`sdbox.agent.credentials` and :mod:`sdbox.agent.renewal` to the centre,
and the unit tests to fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from cryptography import x509

from sdbox.agent.card import CardHandle
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Project

SIGNER_VALIDATOR = Callable[[x509.Certificate, list[x509.Certificate]], None]


class RenewalPort(Protocol):
    """Renews the due project certificates of the verified card (runs on the card thread).

    Returns one result per project with ``project``, ``outcome`` (an enum whose
    ``value`` is the outcome name, see docs/renewal.md) and ``detail``.
    """

    def renew(self, session: BioSsoSession) -> list[Any]: ...


class SensorPort(Protocol):
    """The fingerprint sensor: one capture gives one probe template (compact card format)."""

    async def capture(self) -> bytes:
        """Wait for a finger; return the probe (cancellable)."""
        ...


class TrustPort(Protocol):
    """The trust decisions the agent needs (sdbox.trust, bound to anchors and CRLs)."""

    def directory_validator(self) -> SIGNER_VALIDATOR:
        """A validator for the directory signer, at the current time."""
        ...

    def check_project(self, certificate: x509.Certificate, project: Project) -> None:
        """Raise unless the project certificate is valid, unrevoked and names ``project``."""
        ...

    def check_server(self, certificate: x509.Certificate, project: Project) -> None:
        """Raise unless the bubble's certificate is valid, unrevoked and names its host."""
        ...


class CredentialPort(Protocol):
    """Obtains the session credential for a project (the broker, or none: interactive)."""

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        """(user, credential) for the bubble."""
        ...


class SessionHandle(Protocol):
    """A running session client (sdbox.session.Session)."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...
    async def wait_connected(self) -> None: ...
    async def wait_ended(self) -> Any: ...
    async def kill(self) -> Any: ...
    async def close(self) -> Any: ...


class SessionPort(Protocol):
    """Opens session clients."""

    def open(
        self, project: Project, user: str, credential: Any, server: x509.Certificate
    ) -> SessionHandle:
        """A session for ``project`` (not started)."""
        ...
