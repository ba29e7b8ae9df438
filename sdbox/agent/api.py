"""The agent's public API, without D-Bus: what the agent and its clients (the greeter) share.

The names on the bus, the states, the problem codes, the project record and
the end reasons are written here once. :mod:`sdbox.agent.dbus` (the only
module that imports dbus-fast) exports them; :mod:`sdbox.ui` imports only
this module, and decides what to show from these states and fields, never
from the wording of a message (docs/agent.md has the API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from sdbox.session.outcome import MESSAGES as END_MESSAGES
from sdbox.session.outcome import EndReason

__all__ = [
    "BUS_NAME",
    "DETAIL_ARGS",
    "END_MESSAGES",
    "ERROR_PREFIX",
    "INTERFACE",
    "OBJECT_PATH",
    "CardLayout",
    "CentreState",
    "Detail",
    "DiagnosticsOutcome",
    "EndReason",
    "NetworkRefusal",
    "NetworkStatus",
    "Preference",
    "Problem",
    "ProjectStatus",
    "ProjectView",
    "SensorState",
    "State",
    "SupportField",
    "TunnelReason",
    "parse_project_status",
    "project_status",
]

BUS_NAME = "org.sdbox.Agent1"
OBJECT_PATH = "/org/sdbox/Agent1"
INTERFACE = "org.sdbox.Agent1"
ERROR_PREFIX = "org.sdbox.Agent1.Error."  # + a Problem value: a refused method call

# The end reasons of SessionEnded are sdbox.session's EndReason values;
# END_MESSAGES holds their plain words (English, the gettext msgids).


class State(StrEnum):
    """The agent's states (docs/agent.md has the diagram)."""

    IDLE = "idle"  # no card
    READING = "reading"  # a card is in: reading its directory
    PICKER = "picker"  # projects listed: waiting for the researcher's choice
    VERIFYING = "verifying"  # project chosen: waiting for the finger (or PIN)
    VALIDATING = "validating"  # holder verified: checking certificates and possession
    CONNECTING = "connecting"  # credential obtained: session client starting
    RUNNING = "running"  # session connected
    BLOCKED = "blocked"  # the card cannot be used (untrusted, unreadable): remove it
    ENROLLING = "enrolling"  # remote fingerprint enrolment under an operator's authorisation


class Problem(StrEnum):
    """Why a step failed, as a code the greeter can translate."""

    CARD_UNREADABLE = "card_unreadable"
    CARD_NOT_RECOGNISED = "card_not_recognised"
    CARD_NOT_SUPPORTED = "card_not_supported"  # a card variant this box does not handle
    DIRECTORY_UNTRUSTED = "directory_untrusted"
    WRONG_FINGER = "wrong_finger"
    FINGER_BLOCKED = "finger_blocked"
    WRONG_PIN = "wrong_pin"
    PIN_BLOCKED = "pin_blocked"
    PIN_NOT_ALLOWED = "pin_not_allowed"
    NO_FINGER_ENROLLED = "no_finger_enrolled"  # a PIN-only card, a project that needs the finger
    SENSOR_FAILED = "sensor_failed"
    SENSOR_UNPLUGGED = "sensor_unplugged"  # the fingerprint sensor is not connected (no try spent)
    # a capture refused before the card for its quality (no try spent), by what to do about it:
    # the values are sdbox.biometric.quality.Advice's
    CAPTURE_PARTIAL = "capture_partial"  # cover the sensor
    CAPTURE_FAINT = "capture_faint"  # press flatter
    CAPTURE_SMUDGED = "capture_smudged"  # clean the sensor
    CERTIFICATE_REVOKED = "certificate_revoked"
    CERTIFICATE_EXPIRED = "certificate_expired"
    CERTIFICATE_INVALID = "certificate_invalid"
    CLOCK_WRONG = "clock_wrong"
    SERVER_UNTRUSTED = "server_untrusted"
    ENDPOINT_NOT_ALLOWED = "endpoint_not_allowed"
    CREDENTIAL_REFUSED = "credential_refused"
    BROKER_UNREACHABLE = "broker_unreachable"
    SESSION_FAILED = "session_failed"
    UNKNOWN_PROJECT = "unknown_project"
    CENTRE_UNREACHABLE = "centre_unreachable"  # the tunnel to the centre is not up
    BUSY = "busy"
    INVALID_PREFERENCE = "invalid_preference"  # SetPreference refused (never a screen)
    INVALID_NETWORK = "invalid_network"  # SetNetwork refused: the error's message names the field
    # remote fingerprint enrolment (docs/remote-enrolment.md)
    NO_FINGERPRINT = "no_fingerprint"  # the card has no on-card comparison: nothing to enrol
    ENROLMENT_REFUSED = "enrolment_refused"  # the authorisation was refused (DetailArgs reason)
    ENROLMENT_FAILED = "enrolment_failed"  # the captures or the new reference's check failed


class CentreState(StrEnum):
    """The tunnel to the centre as the agent sees it (D-Bus ``Centre``).

    The values are :class:`sdbox.network.events.TunnelState`'s, plus
    ``unwatched``: no tunnel on this site (``[tunnel] watch = false``: lab,
    tests, demo), where the centre is taken to be reachable.
    """

    UNWATCHED = "unwatched"
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    REFUSED = "refused"


class TunnelReason(StrEnum):
    """Why the centre cannot be reached (D-Bus ``CentreReason``, ``DetailArgs`` ``reason``).

    The values are :class:`sdbox.network.events.Reason`'s (a unit test holds
    them equal); the greeter says each in its own words, for the researcher
    and for the operator on the phone.
    """

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
class CardLayout(StrEnum):
    """Where the inserted card keeps its projects (D-Bus ``CardLayout``): a capability.

    On a one-project card the picker lists its one project, and switching
    projects means swapping cards: the greeter says so.
    """

    NONE = ""  # no card, or not read yet
    DIRECTORY = "directory"  # several projects on the card (signed directory)
    ONE_PROJECT = "one_project"  # the card is its project (the earlier cards)


class SensorState(StrEnum):
    """Whether the fingerprint sensor is plugged in (D-Bus ``Sensor``)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    UNWATCHED = "unwatched"  # no hotplug watch (emulated, file or no sensor): assumed there


@dataclass(frozen=True)
class ProjectView:
    """A project as the picker shows it."""

    id: str
    name: str
    protocol: str
    second_factor: str
    expires: str  # ISO 8601
    status: str  # plain words: "ready", "certificate expires in 5 days", ...
    usable: bool = True

    @property
    def accepts_pin(self) -> bool:
        """Whether the PIN may replace the finger for this project (its policy)."""
        return self.second_factor == "finger_or_pin"

    def to_wire(self) -> tuple[str, str, str, str, str, str, bool]:
        """The D-Bus ``Projects`` element, ``(ssssssb)``."""
        return (
            self.id, self.name, self.protocol, self.second_factor, self.expires, self.status,
            self.usable,
        )  # fmt: skip

    @classmethod
    def from_wire(cls, item: Sequence[object]) -> ProjectView:
        """A project from its D-Bus ``Projects`` element."""
        id_, name, protocol, second_factor, expires, status, usable = item
        return cls(
            str(id_), str(name), str(protocol), str(second_factor), str(expires), str(status),
            bool(usable),
        )  # fmt: skip


class Detail(StrEnum):
    """What the agent's ``Message`` says, as a code the greeter can say in its own language.

    D-Bus ``Detail``, with its parameters in ``DetailArgs`` (``a{ss}``, see
    :data:`DETAIL_ARGS`): ``Message`` stays the agent's English words for the
    journal and the command line; the greeter renders the sentence for the
    code from its catalogue and inserts the parameters as data (a
    certificate's subject, a host name, a date), never the other way round.
    """

    NONE = ""  # nothing more to say than the problem code (or nothing this version knows)
    # the card and the reader
    CARD_SWAPPED = "card_swapped"
    CARD_REMOVED = "card_removed"
    CARD_NOT_RESPONDING = "card_not_responding"
    CARD_BUSY = "card_busy"
    READER_UNAVAILABLE = "reader_unavailable"
    CARD_NOT_UNDERSTOOD = "card_not_understood"
    DIRECTORY_MISSING = "directory_missing"
    DIRECTORY_UNTRUSTED = "directory_untrusted"
    INTERNAL_ERROR = "internal_error"
    # the holder: the prompt, and what went wrong with it
    PLACE_FINGER = "place_finger"
    PLACE_FINGER_OR_PIN = "place_finger_or_pin"
    ENTER_PIN = "enter_pin"  # a PIN-only card: no finger to ask for
    SENSOR_UNPLUGGED = "sensor_unplugged"
    SENSOR_UNPLUGGED_OR_PIN = "sensor_unplugged_or_pin"
    FINGER_BLOCKED = "finger_blocked"
    PIN_BLOCKED = "pin_blocked"
    FINGER_NOT_ENROLLED = "finger_not_enrolled"
    PIN_FORMAT = "pin_format"
    VERIFICATION_FAILED = "verification_failed"
    SENSOR_UNAVAILABLE = "sensor_unavailable"
    CAPTURE_FAILED = "capture_failed"
    # certificates (the project's, the bubble's) and revocation
    CERTIFICATE_REVOKED = "certificate_revoked"  # subject, date, reason (may be "")
    CERTIFICATE_EXPIRED = "certificate_expired"  # subject, date
    CERTIFICATE_NOT_YET_VALID = "certificate_not_yet_valid"  # subject, date
    CERTIFICATE_UNTRUSTED = "certificate_untrusted"  # subject
    CERTIFICATE_NOT_LISTED = "certificate_not_listed"  # slot
    PROJECT_MISMATCH = "project_mismatch"  # project
    KEY_NOT_ON_CARD = "key_not_on_card"  # subject
    REVOCATION_LIST_MISSING = "revocation_list_missing"  # issuer
    REVOCATION_LIST_STALE = "revocation_list_stale"  # issuer, date
    CLOCK_WRONG = "clock_wrong"  # now, floor
    SERVER_NAME_MISMATCH = "server_name_mismatch"  # host
    SERVER_CERTIFICATE_MALFORMED = "server_certificate_malformed"
    # the centre and the session
    ENDPOINT_NOT_ALLOWED = "endpoint_not_allowed"  # project, endpoint
    CENTRE_UNREACHABLE = "centre_unreachable"
    CENTRE_REFUSED = "centre_refused"  # code (the centre's refusal code)
    SESSION_ENDED = "session_ended"  # reason (an EndReason value)
    SESSION_NOT_STARTED = "session_not_started"
    # the tunnel to the centre
    CENTRE_CONNECTING = "centre_connecting"  # not up yet, no failure known
    TUNNEL_DOWN = "tunnel_down"  # reason (a TunnelReason value), gateway (may be "")
    SESSION_RECONNECTING = "session_reconnecting"  # the tunnel dropped: waiting for it (grace)
    # remote fingerprint enrolment (state ``enrolling``, docs/remote-enrolment.md)
    ENROLMENT_AUTHORISING = "enrolment_authorising"  # asking the centre for the authorisation
    ENROLMENT_CODE = "enrolment_code"  # code, operator: read the code to the operator
    ENROLMENT_PIN = "enrolment_pin"  # operator: the code is confirmed, enter your PIN
    ENROLMENT_CAPTURE = "enrolment_capture"  # finger: place that finger (several times)
    ENROLMENT_WRITING = "enrolment_writing"  # writing the new reference(s) on the card
    ENROLMENT_CONFIRM = "enrolment_confirm"  # finger: once more, checked on the card
    ENROLMENT_DONE = "enrolment_done"  # fingers, operator: enrolled and verified
    ENROLMENT_REFUSED = "enrolment_refused"  # reason (sdbox.centre.bioauth.REASONS, centre codes)
    NO_FINGERPRINT = "no_fingerprint"  # this card has no fingerprint: enrolment is not possible


# The parameters each detail comes with (the keys of DetailArgs): dates are ISO 8601 in
# UTC, the rest is data shown as it is. The greeter's catalogue uses exactly these.
DETAIL_ARGS: dict[Detail, frozenset[str]] = {
    Detail.CERTIFICATE_REVOKED: frozenset({"subject", "date", "reason"}),
    Detail.CERTIFICATE_EXPIRED: frozenset({"subject", "date"}),
    Detail.CERTIFICATE_NOT_YET_VALID: frozenset({"subject", "date"}),
    Detail.CERTIFICATE_UNTRUSTED: frozenset({"subject"}),
    Detail.CERTIFICATE_NOT_LISTED: frozenset({"slot"}),
    Detail.PROJECT_MISMATCH: frozenset({"project"}),
    Detail.KEY_NOT_ON_CARD: frozenset({"subject"}),
    Detail.REVOCATION_LIST_MISSING: frozenset({"issuer"}),
    Detail.REVOCATION_LIST_STALE: frozenset({"issuer", "date"}),
    Detail.CLOCK_WRONG: frozenset({"now", "floor"}),
    Detail.SERVER_NAME_MISMATCH: frozenset({"host"}),
    Detail.ENDPOINT_NOT_ALLOWED: frozenset({"project", "endpoint"}),
    Detail.CENTRE_REFUSED: frozenset({"code"}),
    Detail.SESSION_ENDED: frozenset({"reason"}),
    Detail.TUNNEL_DOWN: frozenset({"reason", "gateway"}),
    Detail.ENROLMENT_CODE: frozenset({"code", "operator"}),
    Detail.ENROLMENT_PIN: frozenset({"operator"}),
    Detail.ENROLMENT_CAPTURE: frozenset({"finger"}),
    Detail.ENROLMENT_CONFIRM: frozenset({"finger"}),
    Detail.ENROLMENT_DONE: frozenset({"fingers", "operator"}),
    Detail.ENROLMENT_REFUSED: frozenset({"reason"}),
}


class ProjectStatus(StrEnum):
    """A project's status in the picker: ``ProjectView.status`` is one of these words.

    The expiring status carries its number of days (``project_status`` writes
    it, ``ProjectView.status_code`` / ``expires_in_days`` read it): the wire
    form is defined here once, for the agent and the greeter.
    """

    READY = "ready"
    EXPIRES_SOON = "certificate expires in"  # + " N day(s)"
    EXPIRED = "certificate expired"
    NOT_ALLOWED = "not allowed on this box"


def project_status(status: ProjectStatus, days: int = 0) -> str:
    """The ``status`` field for ``status`` (with ``days`` for an expiring certificate)."""
    if status is ProjectStatus.EXPIRES_SOON:
        return f"{status.value} {days} day{'s' if days != 1 else ''}"
    return status.value


def parse_project_status(status: str) -> tuple[ProjectStatus | None, int]:
    """The code (None: a status this version does not know) and days of a ``status`` field."""
    for code in ProjectStatus:
        if code is ProjectStatus.EXPIRES_SOON and status.startswith(code.value + " "):
            days = status.removeprefix(code.value + " ").split()[0]
            return (code, int(days)) if days.lstrip("-").isdigit() else (None, 0)
        if status == code.value:
            return code, 0
    return None, 0


class Preference(StrEnum):
    """What the researcher may choose on the greeter, kept by the agent (D-Bus ``Preferences``).

    ``SetPreference(key, value)`` validates the value and persists it on the
    agent's state directory; ``KeyboardLayouts`` lists the layouts offered.
    """

    KEYBOARD_LAYOUT = "keyboard_layout"  # an XKB layout name, one of KeyboardLayouts
    LARGE_TEXT = "large_text"  # "1" or "0"
    HIGH_CONTRAST = "high_contrast"  # "1" or "0"


class NetworkStatus(StrEnum):
    """Where the outer network and the tunnel stand (D-Bus ``NetworkStatus``), most basic first.

    The greeter's network and support screens say where the problem is from
    this code alone (docs/desk.md, "Where the problem is").
    """

    UNKNOWN = "unknown"  # not looked at yet
    NO_LINK = "no_link"  # no cable (no carrier), or no Wi-Fi association
    NO_ADDRESS = "no_address"  # a link, but no address (DHCP unanswered, static not applied)
    NO_ROUTE = "no_route"  # an address, but no route towards the centre's gateway
    UDP_BLOCKED = "udp_blocked"  # the gateway never answers IKE (UDP 500/4500): blocked locally
    GATEWAY_REFUSED = "gateway_refused"  # the gateway answered and refused (or was refused)
    TUNNEL_DOWN = "tunnel_down"  # the tunnel is down for another reason (stopped, closed)
    CONNECTING = "connecting"  # the local network is fine; the tunnel is being set up
    CONNECTED = "connected"  # the tunnel is up
    LOCAL_ONLY = "local_only"  # the local network is fine; this agent does not watch a tunnel


class SupportField(StrEnum):
    """The keys of D-Bus ``Support`` (``a{ss}``): what a helpdesk asks for on the phone.

    Nothing personal: the last card is its kind and when it was seen, never
    its holder, serial or projects.
    """

    BOX = "box"  # the box's identity (its certificate's subject, else the host name)
    VERSION = "version"  # the software (image) version
    SLOT = "slot"  # the A/B root slot booted (RAUC's), '' outside the image
    GENERATION = "generation"  # the hardware generation's name
    ADDRESSES = "addresses"  # the outer interface's addresses, space-separated
    INTERFACE = "interface"  # the outer interface
    TUNNEL = "tunnel"  # a NetworkStatus value
    CARD = "card"  # the last card's kind ('' if none since the agent started)
    CARD_SEEN = "card_seen"  # when (ISO 8601, UTC)
    PROBLEMS = "problems"  # the last problems, newest first: one "ISO-time code" per line


class NetworkRefusal(StrEnum):
    """Why ``SetNetwork`` refused a setting; its D-Bus error message starts ``FIELD CODE: ``.

    The field is one of ``mode address gateway dns ssid passphrase``; the
    greeter marks it and says the code in its language (the English rest is
    for the journal). The values are :class:`sdbox.network.outer.Why`'s.
    """

    NOT_A_SETTING = "not_a_setting"
    MISSING = "missing"
    NO_PREFIX = "no_prefix"
    NOT_AN_ADDRESS = "not_an_address"
    NOT_A_HOST = "not_a_host"
    ROUTER_OUTSIDE = "router_outside"
    OVERLAPS_CENTRE = "overlaps_centre"
    NEEDS_RESOLVER = "needs_resolver"
    SSID_LENGTH = "ssid_length"
    SSID_CHARACTERS = "ssid_characters"
    PASSPHRASE_LENGTH = "passphrase_length"  # noqa: S105  (a code, not a secret)
    PASSPHRASE_CHARACTERS = "passphrase_characters"  # noqa: S105


class DiagnosticsOutcome(StrEnum):
    """What became of the support screen's "send diagnostics" (D-Bus ``SendDiagnostics``).

    The method answers ``(outcome, text)``: with ``sent`` the text is the
    request's number, which the service desk finds on the box's page; otherwise
    it is why, in the agent's English words (the greeter says the code in its
    language and shows the words as data).
    """

    SENT = "sent"
    NOT_CONFIGURED = "not_configured"  # no fleet configuration on this box (lab, demo)
    UNREACHABLE = "unreachable"  # the fleet service cannot be reached (tunnel down, centre away)
    FAILED = "failed"  # refused by the service (an unknown or revoked box) or failed on the box
    BUSY = "busy"  # an upload is already under way
