"""Errors of the session-credential protocol."""

from __future__ import annotations

from sdbox.errors import SdboxError


class BrokerError(SdboxError):
    """Root of the broker errors."""


class BrokerUnreachable(BrokerError):
    """The broker cannot be reached (network, tunnel, TLS)."""


class BrokerRefused(BrokerError):
    """The broker refused to issue a credential; ``code`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"the centre refused: {message}")
        self.code = code


class ProtocolError(BrokerError):
    """A message does not follow the protocol (docs/broker-protocol.md)."""


class Refused(SdboxError):
    """Broker side: a refusal with its code and HTTP status, sent to the box."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code, self.status = code, status
