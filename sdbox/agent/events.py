"""What the agent tells the world: states, transitions, problems, audit events.

Every transition is published to listeners (the D-Bus service turns them
into signals) and written to the audit trail. The audit schema
(docs/agent.md) is :class:`AuditEvent`: one name per event, fixed fields,
never a PIN, a template, a key or a credential.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum

_audit = logging.getLogger("sdbox.audit")


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


class Problem(StrEnum):
    """Why a step failed, as a code the greeter can translate."""

    CARD_UNREADABLE = "card_unreadable"
    CARD_NOT_RECOGNISED = "card_not_recognised"
    DIRECTORY_UNTRUSTED = "directory_untrusted"
    WRONG_FINGER = "wrong_finger"
    FINGER_BLOCKED = "finger_blocked"
    WRONG_PIN = "wrong_pin"
    PIN_BLOCKED = "pin_blocked"
    PIN_NOT_ALLOWED = "pin_not_allowed"
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
    BUSY = "busy"


class AuditEvent(StrEnum):
    """The audit trail's events (docs/agent.md lists their fields)."""

    CARD_INSERTED = "card_inserted"
    CARD_REMOVED = "card_removed"
    CARD_SWAPPED = "card_swapped"
    DIRECTORY_VERIFIED = "directory_verified"
    DIRECTORY_REFUSED = "directory_refused"
    PROJECT_CHOSEN = "project_chosen"
    HOLDER_VERIFIED = "holder_verified"
    HOLDER_FAILED = "holder_failed"
    CREDENTIALS_VALIDATED = "credentials_validated"
    CREDENTIALS_REFUSED = "credentials_refused"
    CREDENTIAL_ISSUED = "credential_issued"
    SESSION_STARTED = "session_started"
    SESSION_ENDED = "session_ended"
    SWITCH = "switch"
    RENEWAL_DUE = "renewal_due"
    RENEWAL_STARTED = "renewal_started"
    RENEWAL_SUCCEEDED = "renewal_succeeded"
    RENEWAL_FAILED = "renewal_failed"
    SENSOR_CONNECTED = "sensor_connected"
    SENSOR_DISCONNECTED = "sensor_disconnected"
    AGENT_STARTED = "agent_started"
    AGENT_STOPPED = "agent_stopped"
    BOX_IDENTITY_CHECKED = "box_identity_checked"


class SensorState(StrEnum):
    """Whether the fingerprint sensor is plugged in (D-Bus ``Sensor``)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    UNWATCHED = "unwatched"  # no hotplug watch (emulated, file or no sensor): assumed there


@dataclass(frozen=True)
class Transition:
    """The agent moved to ``state``."""

    state: State
    project: str = ""
    message: str = ""
    problem: Problem | None = None
    tries_left: int | None = None


@dataclass(frozen=True)
class SessionEndedEvent:
    """A session ended (``reason`` is sdbox.session's EndReason value)."""

    project: str
    reason: str
    message: str


@dataclass(frozen=True)
class RenewalEvent:
    """A project's certificate renewal finished (``outcome``: see docs/renewal.md)."""

    project: str
    outcome: str
    message: str


@dataclass(frozen=True)
class SensorChanged:
    """The fingerprint sensor was plugged in or unplugged."""

    state: SensorState


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


@dataclass
class Snapshot:
    """The agent's observable state (D-Bus properties)."""

    state: State = State.IDLE
    reader: str = ""
    projects: list[ProjectView] = field(default_factory=list)
    active_project: str = ""
    message: str = ""
    problem: Problem | None = None
    tries_left: int = -1
    holder_verified: bool = False
    sensor: SensorState = SensorState.UNWATCHED


def audit(event: AuditEvent, message: str, **fields: str | int | None) -> None:
    """Write one audit event (journal fields ``SDBOX_EVENT`` and ``SDBOX_<FIELD>``)."""
    extra = {"SDBOX_EVENT": event.value}
    for key, value in fields.items():
        if value is not None:
            extra[f"SDBOX_{key.upper()}"] = str(value)
    shown = " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
    _audit.info("%s: %s%s", event.value, message, f" ({shown})" if shown else "", extra=extra)
