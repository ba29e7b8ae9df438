"""The agent's renewal port: the Renewer bound to the agent's configuration and trust."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from sdbox.agent.adapters import TrustService
from sdbox.agent.config import AgentConfig
from sdbox.centre.cards import BrokerCentre
from sdbox.certificates import UnreadableCertificate, load_certificate, load_certificates
from sdbox.config import ConfigError
from sdbox.identity import BoxIdentity
from sdbox.renewal.flow import Renewer, Result
from sdbox.renewal.ports import Centre, HttpCmpTransport, LocalCentre, RenewalTrust
from sdbox.renewal.state import Journal
from sdbox.smartcard.biosso import BioSsoSession

_log = logging.getLogger("sdbox.agent.renewal")


def make_centre(
    config: AgentConfig, session: BioSsoSession, identity: Callable[[], BoxIdentity]
) -> Centre:
    """The centre renewal talks to: the broker, or a development centre when configured."""
    section = config.renewal
    if section.dev_centre_pki:
        try:
            key = bytes.fromhex(Path(section.dev_management_key_file).read_text().strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[renewal] dev_management_key_file: {exc}") from exc
        _log.warning(
            "DEVELOPMENT centre: renewal signs with %s and a management key from a file; "
            "never on a deployed box",
            section.dev_centre_pki,
        )
        return LocalCentre(Path(section.dev_centre_pki), key)
    credentials = config.credentials
    if not credentials.broker_url:
        raise ConfigError("[credentials] broker_url is not set: renewal needs the centre's broker")
    try:
        anchors = load_certificates(credentials.broker_anchors.read_bytes())
    except (OSError, UnreadableCertificate) as exc:
        raise ConfigError(
            f"[credentials] broker_anchors {credentials.broker_anchors}: cannot be read ({exc})"
        ) from exc
    return BrokerCentre(
        credentials.broker_url, anchors=anchors, identity=identity(), session=session,
        timeout_s=credentials.timeout_s,
    )  # fmt: skip


class RenewalService:
    """Runs :class:`Renewer` on the verified card (called on the card thread).

    Configuration problems surface when renewal runs (as a ``renewal_failed``
    audit event), never at start: a box without a CA still serves sessions.
    """

    def __init__(
        self, config: AgentConfig, trust: TrustService, identity: Callable[[], BoxIdentity]
    ) -> None:
        self.config = config
        self.trust = trust
        self.identity = identity

    def _cmp_server(self) -> x509.Certificate:
        path = self.config.renewal.cmp_server_cert
        try:
            return load_certificate(path.read_bytes())
        except (OSError, UnreadableCertificate) as exc:
            raise ConfigError(f"[renewal] cmp_server_cert {path}: cannot be read ({exc})") from exc

    def renew(self, session: BioSsoSession) -> list[Result]:
        """Renew what is due on ``session``'s card (holder verified)."""
        section = self.config.renewal
        trust = RenewalTrust(
            self.trust.anchors, self.trust.intermediates,
            self.trust.store if self.trust.check_revocation else None,
            self._cmp_server(), lambda: datetime.now(UTC),
        )  # fmt: skip
        renewer = Renewer(
            session=session, centre=make_centre(self.config, session, self.identity),
            transport=HttpCmpTransport(section.cmp_url, timeout_s=section.timeout_s),
            trust=trust, journal=Journal(section.journal),
            validate_signer=self.trust.directory_validator(),
            window=timedelta(days=self.config.policy.renewal_window_days),
            max_wait_s=section.max_wait_s, atr=session.atr,
        )  # fmt: skip
        return renewer.run()
