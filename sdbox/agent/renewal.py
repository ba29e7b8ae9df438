"""The agent's renewal port: the Renewer bound to the agent's configuration and trust."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from sdbox.agent.config import AgentConfig
from sdbox.agent.ports import TrustService
from sdbox.config import ConfigError
from sdbox.renewal.flow import Renewer, Result
from sdbox.renewal.ports import HttpCmpTransport, LocalCentre, RenewalTrust
from sdbox.renewal.state import Journal
from sdbox.smartcard.biosso import BioSsoSession


class RenewalService:
    """Runs :class:`Renewer` on the verified card (called on the card thread).

    Configuration problems surface when renewal runs (as a ``renewal_failed``
    audit event), never at start: a box without a CA still serves sessions.
    """

    def __init__(self, config: AgentConfig, trust: TrustService) -> None:
        self.config = config
        self.trust = trust

    def _cmp_server(self) -> x509.Certificate:
        path = self.config.renewal.cmp_server_cert
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[renewal] cmp_server_cert {path}: cannot be read ({exc})") from exc

    def _centre(self) -> Any:
        section = self.config.renewal
        if not section.dev_centre_pki:
            raise ConfigError("[renewal] names no centre: renewal is not available on this box yet")
        try:
            key = bytes.fromhex(Path(section.dev_management_key_file).read_text().strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"[renewal] dev_management_key_file: {exc}") from exc
        return LocalCentre(Path(section.dev_centre_pki), key)

    def renew(self, session: BioSsoSession) -> list[Result]:
        """Renew what is due on ``session``'s card (holder verified)."""
        section = self.config.renewal
        trust = RenewalTrust(
            self.trust.anchors, self.trust.intermediates,
            self.trust.store if self.trust.check_revocation else None,
            self._cmp_server(), lambda: datetime.now(UTC),
        )  # fmt: skip
        renewer = Renewer(
            session=session, centre=self._centre(),
            transport=HttpCmpTransport(section.cmp_url, timeout_s=section.timeout_s),
            trust=trust, journal=Journal(section.journal),
            validate_signer=self.trust.directory_validator(),
            window=timedelta(days=self.config.policy.renewal_window_days),
            max_wait_s=section.max_wait_s,
        )  # fmt: skip
        return renewer.run()
