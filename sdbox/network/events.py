"""What the tunnel reports: its states, the reasons, and charon's alerts behind them.

Pure data and one translation table, no I/O: :mod:`sdbox.network.tunnel`
produces these, the agent (and later the greeter, through it) consumes them.
charon's error-notify plugin says *why* an IKE SA failed as a number
(:class:`Alert`, strongSwan 5.9.8's numbering, in a packed 768-byte message);
:func:`explain` turns the alerts of one attempt into the :class:`Reason` an
operator can act on, the most specific first, so nothing reads log text.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class TunnelState(enum.Enum):
    """Where the tunnel stands."""

    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    REFUSED = "refused"


class Reason(enum.Enum):
    """Why the tunnel is down or refused: each has one thing an operator can do."""

    NO_NETWORK = "no_network"
    GATEWAY_UNREACHABLE = "gateway_unreachable"
    GATEWAY_REFUSED_BOX = "gateway_refused_box"
    GATEWAY_CERTIFICATE_REFUSED = "gateway_certificate_refused"
    GATEWAY_CERTIFICATE_EXPIRED = "gateway_certificate_expired"
    GATEWAY_CERTIFICATE_REVOKED = "gateway_certificate_revoked"
    GATEWAY_CERTIFICATE_UNCHECKED = "gateway_certificate_unchecked"
    PROPOSAL_MISMATCH = "proposal_mismatch"
    CLOSED = "closed"
    DAEMON_UNAVAILABLE = "daemon_unavailable"
    STOPPED = "stopped"


_ADVICE: dict[Reason, str] = {
    Reason.NO_NETWORK: "the box has no route to the centre: check its network cable and DHCP",
    Reason.GATEWAY_UNREACHABLE: "the gateway does not answer: the centre's gateway or the path to it is down",
    Reason.GATEWAY_REFUSED_BOX: "the gateway refused the box's certificate: the box may be revoked or not enrolled at this centre",
    Reason.GATEWAY_CERTIFICATE_REFUSED: "the gateway's certificate is not the centre's (another CA or another name): possible interception, do not override",
    Reason.GATEWAY_CERTIFICATE_EXPIRED: "the gateway's certificate has expired (or the box's clock is wrong): tell the centre",
    Reason.GATEWAY_CERTIFICATE_REVOKED: "the gateway's certificate is revoked: tell the centre",
    Reason.GATEWAY_CERTIFICATE_UNCHECKED: "the gateway's certificate could not be checked against a current CRL: refresh the box's CRLs",
    Reason.PROPOSAL_MISMATCH: "the gateway offers no algorithm the box accepts: the centre's gateway configuration is outdated",
    Reason.CLOSED: "the gateway closed the tunnel",
    Reason.DAEMON_UNAVAILABLE: "the box's IPsec daemon (charon) is not running",
    Reason.STOPPED: "the tunnel was stopped on the box",
}


@dataclass(frozen=True)
class TunnelEvent:
    """One change of the tunnel's state."""

    state: TunnelState
    gateway: str | None = None  # its address, as in the site profile
    reason: Reason | None = None
    detail: str = ""  # what charon said (a certificate's subject, a timeout)
    inner_address: str | None = None  # the box's address inside the tunnel
    at: float = field(default_factory=time.monotonic)

    @property
    def refused(self) -> bool:
        """Whether an authentication decision (either side's) stopped it."""
        return self.state is TunnelState.REFUSED

    def describe(self) -> str:
        """One line for logs and operators."""
        where = f" via {self.gateway}" if self.gateway else ""
        if self.state is TunnelState.UP:
            return f"tunnel up{where}, inner address {self.inner_address or '?'}"
        if self.reason is None:
            return f"tunnel {self.state.value}{where}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"tunnel {self.state.value}{where}: {_ADVICE[self.reason]}{detail}"


class TunnelPort(Protocol):
    """What the agent needs of the tunnel (implemented by :class:`Tunnel`)."""

    def current(self) -> TunnelEvent:
        """The latest state."""
        ...

    def subscribe(self, listener: Callable[[TunnelEvent], None]) -> Callable[[], None]:
        """Call ``listener`` (from a worker thread) on every change; returns an unsubscribe."""
        ...

    def start(self) -> None:
        """Bring the tunnel up and keep it up."""
        ...

    def stop(self) -> None:
        """Take it down and stop watching."""
        ...


# --- charon's error-notify alerts ------------------------------------------------


class Alert(enum.IntEnum):
    """The error-notify plugin's message types (strongSwan 5.9.8, error_notify_msg.h)."""

    RADIUS_NOT_RESPONDING = 1
    LOCAL_AUTH_FAILED = 2
    PEER_AUTH_FAILED = 3
    PARSE_ERROR_HEADER = 4
    PARSE_ERROR_BODY = 5
    RETRANSMIT_SEND_TIMEOUT = 6
    HALF_OPEN_TIMEOUT = 7
    PROPOSAL_MISMATCH_IKE = 8
    PROPOSAL_MISMATCH_CHILD = 9
    TS_MISMATCH = 10
    INSTALL_CHILD_SA_FAILED = 11
    INSTALL_CHILD_POLICY_FAILED = 12
    UNIQUE_REPLACE = 13
    UNIQUE_KEEP = 14
    VIP_FAILURE = 15
    AUTHORIZATION_FAILED = 16
    CERT_EXPIRED = 17
    CERT_REVOKED = 18
    NO_ISSUER_CERT = 19
    RETRANSMIT_SEND = 20
    RETRANSMIT_CLEARED = 21
    RETRANSMIT_RECEIVE = 22
    PEER_ADDR_FAILED = 23
    PEER_INIT_UNREACHABLE = 24
    INVALID_IKE_SPI = 25
    TS_NARROWED = 26
    KEEP_ON_CHILD_SA_FAILURE = 27
    IKE_SA_EXPIRED = 28
    CERT_VALIDATION_FAILED = 29
    UNTRUSTED_ROOT_CERT = 30
    CERT_EXCEEDED_PATH_LEN = 31
    CERT_POLICY_VIOLATION = 32


# struct error_notify_msg_t (packed): int type (network order), char str[384],
# name[64], id[256], ip[60]
NOTIFY_MESSAGE = struct.Struct("!i384s64s256s60s")


@dataclass(frozen=True)
class AlertMessage:
    """One alert from charon."""

    kind: Alert | int
    text: str
    connection: str
    peer_id: str
    peer_address: str


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_alert(raw: bytes) -> AlertMessage:
    """Decode one error-notify message."""
    kind, text, name, peer_id, address = NOTIFY_MESSAGE.unpack(raw)
    try:
        known: Alert | int = Alert(kind)
    except ValueError:
        known = kind  # a newer charon's type: kept, never fatal
    return AlertMessage(known, _cstr(text), _cstr(name), _cstr(peer_id), _cstr(address))


# Which alert explains a failure, most specific first.
_REASON_OF_ALERT: tuple[tuple[Alert, Reason], ...] = (
    (Alert.CERT_REVOKED, Reason.GATEWAY_CERTIFICATE_REVOKED),
    (Alert.CERT_EXPIRED, Reason.GATEWAY_CERTIFICATE_EXPIRED),
    (Alert.CERT_VALIDATION_FAILED, Reason.GATEWAY_CERTIFICATE_UNCHECKED),
    (Alert.NO_ISSUER_CERT, Reason.GATEWAY_CERTIFICATE_REFUSED),
    (Alert.UNTRUSTED_ROOT_CERT, Reason.GATEWAY_CERTIFICATE_REFUSED),
    (Alert.CERT_POLICY_VIOLATION, Reason.GATEWAY_CERTIFICATE_REFUSED),
    (Alert.CERT_EXCEEDED_PATH_LEN, Reason.GATEWAY_CERTIFICATE_REFUSED),
    (Alert.PEER_AUTH_FAILED, Reason.GATEWAY_CERTIFICATE_REFUSED),
    # the gateway answered AUTHENTICATION_FAILED (charon raises the same alert
    # when the box's own key cannot sign; `sdbox identity check` tells them apart)
    (Alert.LOCAL_AUTH_FAILED, Reason.GATEWAY_REFUSED_BOX),
    (Alert.PROPOSAL_MISMATCH_IKE, Reason.PROPOSAL_MISMATCH),
    (Alert.PROPOSAL_MISMATCH_CHILD, Reason.PROPOSAL_MISMATCH),
    (Alert.PEER_ADDR_FAILED, Reason.NO_NETWORK),
    (Alert.RETRANSMIT_SEND_TIMEOUT, Reason.GATEWAY_UNREACHABLE),
    (Alert.HALF_OPEN_TIMEOUT, Reason.GATEWAY_UNREACHABLE),
    (Alert.PEER_INIT_UNREACHABLE, Reason.GATEWAY_UNREACHABLE),
)

REFUSALS = frozenset(
    {
        Reason.GATEWAY_REFUSED_BOX,
        Reason.GATEWAY_CERTIFICATE_REFUSED,
        Reason.GATEWAY_CERTIFICATE_EXPIRED,
        Reason.GATEWAY_CERTIFICATE_REVOKED,
        Reason.GATEWAY_CERTIFICATE_UNCHECKED,
        Reason.PROPOSAL_MISMATCH,
    }
)


def explain(alerts: Sequence[AlertMessage]) -> tuple[Reason, str] | None:
    """The reason the alerts of one attempt give, with charon's words for the detail."""
    for kind, reason in _REASON_OF_ALERT:
        for alert in alerts:
            if alert.kind == kind:
                return reason, alert.text
    return None
