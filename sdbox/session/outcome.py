"""How a session ended, in words a researcher understands.

Every session ends with exactly one :class:`SessionEnded`: a typed
:class:`EndReason` the agent acts on (back to the picker, ask for the card
again, report), a plain-language ``message`` for the greeter, and a
``detail`` (client exit status, the client's own error) for the log.

FreeRDP's exit statuses are its ``XF_EXIT_*`` codes (client/common, FreeRDP
3.x): 0-11 are the server's disconnect reasons (RDP's "error info" set),
16-26 licensing, 32-127 RDP protocol errors, 128 and up the client's own
connection errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, IntEnum


class EndReason(Enum):
    """Why a session ended (what the agent acts on)."""

    CLOSED = "closed"  # the agent closed it (project switch)
    KILLED = "killed"  # the agent killed it (card removed)
    LOGGED_OFF = "logged_off"  # the researcher logged off or disconnected in the bubble
    DISCONNECTED_BY_SERVER = "disconnected_by_server"
    IDLE_TIMEOUT = "idle_timeout"
    REPLACED = "replaced"  # the same account connected from elsewhere
    SERVER_REFUSED = "server_refused"
    AUTH_FAILED = "auth_failed"
    ACCOUNT_PROBLEM = "account_problem"  # locked, expired, disabled, password to change
    CERTIFICATE_REJECTED = "certificate_rejected"
    CONNECTION_LOST = "connection_lost"
    UNREACHABLE = "unreachable"
    CONNECT_TIMEOUT = "connect_timeout"
    LICENSING = "licensing"
    PROTOCOL_ERROR = "protocol_error"
    CLIENT_FAILED = "client_failed"  # crash or internal error of the viewer on this box
    NETWORK = "network"  # the agent ended it: the tunnel to the centre stayed down too long


def N_(text: str) -> str:  # gettext's conventional name for a marker
    """Mark ``text`` for translation: the greeter shows these in the researcher's language."""
    return text


MESSAGES: dict[EndReason, str] = {
    EndReason.CLOSED: N_("The session was closed."),
    EndReason.KILLED: N_("The session was ended because the card was removed."),
    EndReason.LOGGED_OFF: N_("You logged off from the project's desktop."),
    EndReason.DISCONNECTED_BY_SERVER: N_(
        "The project's desktop ended the session (an administrator or another logon)."
    ),
    EndReason.IDLE_TIMEOUT: N_("The session was ended after a period of inactivity."),
    EndReason.REPLACED: N_("The session was opened from another place, so it ended here."),
    EndReason.SERVER_REFUSED: N_(
        "The project's desktop refused the connection. Please contact the service desk."
    ),
    EndReason.AUTH_FAILED: N_(
        "The project's desktop did not accept the sign-in. Please try again; if it "
        "happens again, contact the service desk."
    ),
    EndReason.ACCOUNT_PROBLEM: N_(
        "Your account on the project's desktop cannot sign in (locked, expired or "
        "disabled). Please contact the service desk."
    ),
    EndReason.CERTIFICATE_REJECTED: N_(
        "The project's desktop could not prove its identity, so the box did not "
        "connect. Please contact the service desk."
    ),
    EndReason.CONNECTION_LOST: N_("The connection to the project's desktop was lost."),
    EndReason.UNREACHABLE: N_(
        "The project's desktop cannot be reached. Check the network cable, or try "
        "again in a few minutes."
    ),
    EndReason.CONNECT_TIMEOUT: N_(
        "The project's desktop did not answer in time. Please try again in a few minutes."
    ),
    EndReason.LICENSING: N_(
        "The project's desktop has a licensing problem. Please contact the service desk."
    ),
    EndReason.PROTOCOL_ERROR: N_(
        "The connection to the project's desktop failed. Please try again; if it "
        "happens again, contact the service desk."
    ),
    EndReason.CLIENT_FAILED: N_(
        "The remote desktop program on this box stopped unexpectedly. Please try again."
    ),
    EndReason.NETWORK: N_(
        "The connection to the centre was lost for too long, so the session ended. "
        "It can be opened again once the centre is reachable."
    ),
}


@dataclass(frozen=True)
class SessionEnded:
    """The end of a session: why, in words, and what the log needs."""

    reason: EndReason
    detail: str
    was_connected: bool = False
    exit_status: int | None = None
    log_tail: tuple[str, ...] = field(default=(), repr=False)

    @property
    def message(self) -> str:
        """The plain-language message for the researcher."""
        return MESSAGES[self.reason]


class XfExit(IntEnum):
    """FreeRDP 3 client exit statuses (``XF_EXIT_*``) that sdbox distinguishes."""

    SUCCESS = 0
    DISCONNECT = 1
    LOGOFF = 2
    IDLE_TIMEOUT = 3
    LOGON_TIMEOUT = 4
    CONN_REPLACED = 5
    OUT_OF_MEMORY = 6
    CONN_DENIED = 7
    CONN_DENIED_FIPS = 8
    USER_PRIVILEGES = 9
    FRESH_CREDENTIALS_REQUIRED = 10
    DISCONNECT_BY_USER = 11
    LOGOFF_BY_USER = 12
    LICENSE_FIRST = 16
    LICENSE_LAST = 26
    RDP_FIRST = 32
    RDP_LAST = 127
    PARSE_ARGUMENTS = 128
    MEMORY = 129
    PROTOCOL = 130
    CONN_FAILED = 131
    AUTH_FAILURE = 132
    NEGO_FAILURE = 133
    LOGON_FAILURE = 134
    ACCOUNT_LOCKED_OUT = 135
    PRE_CONNECT_FAILED = 136
    CONNECT_UNDEFINED = 137
    POST_CONNECT_FAILED = 138
    DNS_ERROR = 139
    DNS_NAME_NOT_FOUND = 140
    CONNECT_FAILED = 141
    MCS_CONNECT_INITIAL_ERROR = 142
    TLS_CONNECT_FAILED = 143
    INSUFFICIENT_PRIVILEGES = 144
    CONNECT_CANCELLED = 145
    CONNECT_TRANSPORT_FAILED = 147
    PASSWORD_EXPIRED = 148
    PASSWORD_MUST_CHANGE = 149
    KDC_UNREACHABLE = 150
    ACCOUNT_DISABLED = 151
    PASSWORD_CERTAINLY_EXPIRED = 152
    CLIENT_REVOKED = 153
    WRONG_PASSWORD = 154
    ACCESS_DENIED = 155
    ACCOUNT_RESTRICTION = 156
    ACCOUNT_EXPIRED = 157
    LOGON_TYPE_NOT_GRANTED = 158
    NO_OR_MISSING_CREDENTIALS = 159
    TARGET_BOOTING = 160
    UNKNOWN = 255


_RDP_REASONS: dict[int, EndReason] = {
    XfExit.SUCCESS: EndReason.LOGGED_OFF,
    XfExit.DISCONNECT: EndReason.DISCONNECTED_BY_SERVER,
    XfExit.LOGOFF: EndReason.LOGGED_OFF,
    XfExit.IDLE_TIMEOUT: EndReason.IDLE_TIMEOUT,
    XfExit.LOGON_TIMEOUT: EndReason.IDLE_TIMEOUT,
    XfExit.CONN_REPLACED: EndReason.REPLACED,
    XfExit.OUT_OF_MEMORY: EndReason.SERVER_REFUSED,
    XfExit.CONN_DENIED: EndReason.SERVER_REFUSED,
    XfExit.CONN_DENIED_FIPS: EndReason.SERVER_REFUSED,
    XfExit.USER_PRIVILEGES: EndReason.ACCOUNT_PROBLEM,
    XfExit.FRESH_CREDENTIALS_REQUIRED: EndReason.AUTH_FAILED,
    XfExit.DISCONNECT_BY_USER: EndReason.LOGGED_OFF,
    XfExit.LOGOFF_BY_USER: EndReason.LOGGED_OFF,
    XfExit.PARSE_ARGUMENTS: EndReason.CLIENT_FAILED,
    XfExit.MEMORY: EndReason.CLIENT_FAILED,
    XfExit.PROTOCOL: EndReason.PROTOCOL_ERROR,
    XfExit.CONN_FAILED: EndReason.UNREACHABLE,
    XfExit.AUTH_FAILURE: EndReason.AUTH_FAILED,
    XfExit.NEGO_FAILURE: EndReason.PROTOCOL_ERROR,
    XfExit.LOGON_FAILURE: EndReason.AUTH_FAILED,
    XfExit.ACCOUNT_LOCKED_OUT: EndReason.ACCOUNT_PROBLEM,
    XfExit.PRE_CONNECT_FAILED: EndReason.CLIENT_FAILED,
    XfExit.CONNECT_UNDEFINED: EndReason.PROTOCOL_ERROR,
    XfExit.POST_CONNECT_FAILED: EndReason.CLIENT_FAILED,
    XfExit.DNS_ERROR: EndReason.UNREACHABLE,
    XfExit.DNS_NAME_NOT_FOUND: EndReason.UNREACHABLE,
    XfExit.CONNECT_FAILED: EndReason.UNREACHABLE,
    XfExit.MCS_CONNECT_INITIAL_ERROR: EndReason.PROTOCOL_ERROR,
    # FreeRDP reports every TLS failure as 143; with a pinned fingerprint and no
    # trust store, the usual cause is a certificate that is not the pinned one.
    XfExit.TLS_CONNECT_FAILED: EndReason.CERTIFICATE_REJECTED,
    XfExit.INSUFFICIENT_PRIVILEGES: EndReason.ACCOUNT_PROBLEM,
    XfExit.CONNECT_CANCELLED: EndReason.AUTH_FAILED,
    XfExit.CONNECT_TRANSPORT_FAILED: EndReason.CONNECTION_LOST,
    XfExit.PASSWORD_EXPIRED: EndReason.ACCOUNT_PROBLEM,
    XfExit.PASSWORD_MUST_CHANGE: EndReason.ACCOUNT_PROBLEM,
    XfExit.KDC_UNREACHABLE: EndReason.UNREACHABLE,
    XfExit.ACCOUNT_DISABLED: EndReason.ACCOUNT_PROBLEM,
    XfExit.PASSWORD_CERTAINLY_EXPIRED: EndReason.ACCOUNT_PROBLEM,
    XfExit.CLIENT_REVOKED: EndReason.ACCOUNT_PROBLEM,
    XfExit.WRONG_PASSWORD: EndReason.AUTH_FAILED,
    XfExit.ACCESS_DENIED: EndReason.ACCOUNT_PROBLEM,
    XfExit.ACCOUNT_RESTRICTION: EndReason.ACCOUNT_PROBLEM,
    XfExit.ACCOUNT_EXPIRED: EndReason.ACCOUNT_PROBLEM,
    XfExit.LOGON_TYPE_NOT_GRANTED: EndReason.ACCOUNT_PROBLEM,
    XfExit.NO_OR_MISSING_CREDENTIALS: EndReason.AUTH_FAILED,
    XfExit.TARGET_BOOTING: EndReason.UNREACHABLE,
}


def rdp_exit_name(status: int) -> str:
    """``XF_EXIT_*`` name of a FreeRDP exit status, for the log."""
    if XfExit.LICENSE_FIRST <= status <= XfExit.LICENSE_LAST:
        return "XF_EXIT_LICENSE_*"
    if XfExit.RDP_FIRST <= status <= XfExit.RDP_LAST:
        return "XF_EXIT_RDP (protocol error set)"
    try:
        return f"XF_EXIT_{XfExit(status).name}"
    except ValueError:
        return "unknown"


def rdp_reason(status: int, *, was_connected: bool) -> EndReason:
    """The :class:`EndReason` for a FreeRDP exit status the agent did not cause."""
    if status < 0:  # killed by a signal nobody here sent: a crash
        return EndReason.CLIENT_FAILED
    if XfExit.LICENSE_FIRST <= status <= XfExit.LICENSE_LAST:
        return EndReason.LICENSING
    if XfExit.RDP_FIRST <= status <= XfExit.RDP_LAST:
        return EndReason.PROTOCOL_ERROR
    reason = _RDP_REASONS.get(status, EndReason.CLIENT_FAILED)
    if reason is EndReason.CONNECTION_LOST and not was_connected:
        # The transport broke before the session was up: the server is there
        # but hung up, or something in between cut it.
        return EndReason.UNREACHABLE
    return reason
