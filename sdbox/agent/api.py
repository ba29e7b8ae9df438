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
    "END_MESSAGES",
    "ERROR_PREFIX",
    "INTERFACE",
    "OBJECT_PATH",
    "EndReason",
    "Problem",
    "ProjectView",
    "SensorState",
    "State",
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
