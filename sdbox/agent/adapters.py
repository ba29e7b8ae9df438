"""The agent's ports (:mod:`sdbox.agent.ports`) bound to the real components: trust, sensor, sessions.

(The credential provider is :mod:`sdbox.agent.credentials`, over
:mod:`sdbox.centre`; the agent picks one from its configuration in
:mod:`sdbox.agent.service`.)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.agent.config import AgentConfig, SensorConfig, SessionConfig
from sdbox.agent.ports import SessionHandle
from sdbox.certificates import UnreadableCertificate, load_certificates
from sdbox.errors import SdboxError
from sdbox.session import Credential, Display, Endpoint, Policy, SessionSpec
from sdbox.session import Protocol as SessionProtocol
from sdbox.session.displays import connected_outputs, generation_scale
from sdbox.smartcard.directory import Project, Protocol
from sdbox.trust import Purpose, validate, validate_directory_signer
from sdbox.trust.store import RevocationStore

_log = logging.getLogger("sdbox.agent")


class TrustFilesError(SdboxError):
    """The box's trust anchors or intermediates cannot be read."""


def _load_pems(path: Path, what: str, *, required: bool) -> list[x509.Certificate]:
    try:
        return load_certificates(path.read_bytes())
    except FileNotFoundError as exc:
        if not required:
            return []
        raise TrustFilesError(f"{what} {path} is missing: the image is incomplete") from exc
    except (OSError, UnreadableCertificate) as exc:
        raise TrustFilesError(f"{what} {path} cannot be read: {exc}") from exc


class TrustService:
    """sdbox.trust bound to the box's anchors, intermediates and CRL cache."""

    def __init__(self, config: AgentConfig, *, now: Callable[[], datetime] | None = None) -> None:
        trust = config.trust
        # Missing anchors do not stop the agent: it starts, and every trust
        # decision then fails closed with this error (the greeter shows it).
        self.problem: TrustFilesError | None = None
        try:
            self.anchors = _load_pems(trust.anchors, "trust anchors", required=True)
        except TrustFilesError as exc:
            self.anchors, self.problem = [], exc
        self.intermediates = _load_pems(
            trust.intermediates, "intermediate certificates", required=False
        )
        self.store = RevocationStore(
            trust.crl_dir, build_time=datetime.fromisoformat(trust.build_time)
        )
        self.check_revocation = trust.check_revocation
        self.grace = timedelta(hours=trust.crl_grace_hours)
        self._now = now or (lambda: datetime.now(UTC))

    @property
    def _crls(self) -> RevocationStore | None:
        return self.store if self.check_revocation else None

    def _usable(self) -> None:
        if self.problem is not None:
            raise self.problem

    def directory_validator(self) -> Callable[[x509.Certificate, list[x509.Certificate]], None]:
        """Checks the directory signer at the time of the call."""
        at = self._now()

        def check(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
            self._usable()
            validate_directory_signer(
                signer, [*intermediates, *self.intermediates], self.anchors,
                at=at, crls=self._crls, crl_grace=self.grace,
            )  # fmt: skip

        return check

    def check_project(self, certificate: x509.Certificate, project: Project) -> None:
        """The project certificate: chain, validity, keyAgreement, project binding, revocation."""
        self._usable()
        validate(
            certificate, self.intermediates, self.anchors, at=self._now(), purpose=Purpose.PROJECT,
            crls=self._crls, project=project.id, crl_grace=self.grace,
        )  # fmt: skip

    def check_server(self, certificate: x509.Certificate, project: Project) -> None:
        """The bubble's certificate: server CA, serverAuth, its host name, revocation."""
        self._usable()
        validate(
            certificate, self.intermediates, self.anchors, at=self._now(), purpose=Purpose.SERVER,
            crls=self._crls, hostname=project.host, crl_grace=self.grace,
        )  # fmt: skip

    def server_ca_pem(self, server: x509.Certificate) -> str:
        """PEM of the CA chain that issued ``server`` (for remote-viewer's own TLS check)."""
        chain = [c for c in [*self.intermediates, *self.anchors] if c.subject == server.issuer]
        chain += [
            a for a in self.anchors if chain and a.subject == chain[0].issuer and a not in chain
        ]
        return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


# -- sensors --------------------------------------------------------------------------


class NoSensor:
    """A box without a sensor: waits for the PIN only."""

    async def capture(self) -> bytes:
        """Never returns (cancelled when the flow ends)."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def make_sensor(config: SensorConfig) -> Any:
    """The configured sensor."""
    from sdbox.biometric.sensor import EmulatedSensor, FileSensor  # noqa: PLC0415

    if config.kind == "libfprint":
        from sdbox.biometric.libfprint import LibfprintSensor  # noqa: PLC0415

        return LibfprintSensor(config.driver, config.ppi)
    if config.kind == "emulated":
        return EmulatedSensor(config.seed)
    if config.kind == "file":
        return FileSensor(Path(config.path))
    return NoSensor()


# -- sessions -------------------------------------------------------------------------


def host_subject(certificate: x509.Certificate) -> str:
    """The subject as remote-viewer's host-subject expects it (most significant first)."""
    return ",".join(reversed(certificate.subject.rfc4514_string().split(",")))


class SessionService:
    """Opens sdbox.session clients for projects."""

    def __init__(
        self,
        config: SessionConfig,
        trust: TrustService,
        keyboard_layout: Callable[[], str] | None = None,
    ) -> None:
        self.config = config
        self.trust = trust
        self.keyboard_layout = keyboard_layout  # the researcher's current layout (Preferences)

    def display(self) -> Display:
        """Where the clients draw: the display, and the screens as they are now."""
        monitors = self.config.monitors or connected_outputs()
        scale = self.config.scale or generation_scale()
        if self.config.x11_display:
            return Display(
                x11=self.config.x11_display, xwayland=self.config.xwayland,
                monitors=monitors, scale=scale,
            )  # fmt: skip
        return Display(
            wayland=self.config.wayland_display, runtime_dir=Path(self.config.runtime_dir),
            monitors=monitors, scale=scale,
        )  # fmt: skip

    def open(
        self, project: Project, user: str, credential: Any, server: x509.Certificate
    ) -> SessionHandle:
        """A session client for ``project`` (not started)."""
        der = server.public_bytes(serialization.Encoding.DER)
        protocol = (
            SessionProtocol.RDP if project.protocol == Protocol.RDP else SessionProtocol.SPICE
        )
        secret: Credential | None
        if credential is None:  # interactive: the bubble runs its own logon
            secret = None
        elif isinstance(credential, Credential):
            secret = credential
        else:
            secret = Credential(str(credential))
        spec = SessionSpec(
            endpoint=Endpoint(protocol, project.host, project.port),
            user=user,
            credential=secret,
            display=self.display(),
            server_fingerprint="sha256:" + hashlib.sha256(der).hexdigest(),
            policy=Policy(audio=project.audio),
            ca_pem=self.trust.server_ca_pem(server) if protocol is SessionProtocol.SPICE else None,
            host_subject=host_subject(server) if protocol is SessionProtocol.SPICE else None,
            connect_timeout=self.config.connect_timeout_s,
            keyboard_layout=self.keyboard_layout() if self.keyboard_layout else None,
        )
        # the launchers (supervisor, reaper, both clients) load with the first session, not
        # before the agent's READY: a researcher is not waiting for them at boot
        from sdbox.session import open_session  # noqa: PLC0415

        session: SessionHandle = open_session(spec, run_as=self.config.user or None)
        return session
