"""The broker credential provider: one-time credentials from the centre (sdbox.centre.client)."""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.card import CardHandle
from sdbox.agent.config import AgentConfig
from sdbox.centre.client import request_credential
from sdbox.certificates import UnreadableCertificate, load_certificates
from sdbox.config import ConfigError
from sdbox.identity import BoxIdentity, IdentitySource
from sdbox.session import Credential
from sdbox.smartcard.directory import Project


class BrokerCredentials:
    """Asks the broker, proving the project key on the card and the box's identity.

    Configuration problems (no broker URL, unreadable roots, no identity) are
    reported when a credential is asked for, not at start: the agent must come
    up, and show why it cannot connect, on a box that is not configured yet.
    """

    def __init__(self, config: AgentConfig, identity: IdentitySource | None = None) -> None:
        section = config.credentials
        self.url = section.broker_url
        self.timeout_s = section.timeout_s
        self._anchors_path = section.broker_anchors
        self._identity = identity or IdentitySource(config.identity.identity_config())

    @property
    def identity(self) -> BoxIdentity:
        """The box identity, opened on first use (the TPM may come up after the agent)."""
        return self._identity()

    def _anchors(self) -> list[x509.Certificate]:
        try:
            return load_certificates(self._anchors_path.read_bytes())
        except (OSError, UnreadableCertificate) as exc:
            raise ConfigError(
                f"[credentials] broker_anchors {self._anchors_path}: cannot be read ({exc})"
            ) from exc

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        """(user, credential) for the project's bubble."""
        if not self.url:
            raise ConfigError(
                "this box has no broker configured ([credentials] broker_url): call the service desk"
            )

        async def card_ecdh(peer: ec.EllipticCurvePublicKey) -> bytes:
            return await card.ecdh(project.slot, peer)

        async def card_sign(message: bytes) -> bytes:  # an RSA project key (docs/broker-protocol.md)
            return await card.run(
                lambda s: s.sign(message, slot=project.slot, certificate=certificate)
            )

        issued = await request_credential(
            self.url, project_id=project.id, endpoint=project.endpoint, project_certificate=certificate,
            card_ecdh=card_ecdh, identity=self.identity, server_anchors=self._anchors(), timeout_s=self.timeout_s,
            card_sign=card_sign,
        )  # fmt: skip
        return issued.user, Credential(issued.secret)
