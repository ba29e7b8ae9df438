"""The broker credential provider (wired to sdbox.broker's client when it lands)."""

from __future__ import annotations

from typing import Any

from cryptography import x509

from sdbox.agent.card import CardHandle
from sdbox.agent.config import AgentConfig
from sdbox.errors import SdboxError
from sdbox.smartcard.directory import Project


class BrokerCredentials:
    """One-time credentials from the centre's broker."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        """Not available yet: the broker client is being built (issue 6)."""
        raise SdboxError(
            "this build has no broker client yet: no session credential can be obtained"
        )
