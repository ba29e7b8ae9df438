"""What the machine publishes to its listeners (the D-Bus service turns them into signals).

The vocabulary (states, problems, the project record) is :mod:`sdbox.agent.api`;
the audit trail is :mod:`sdbox.audit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdbox.agent.api import (
    CardLayout,
    CentreState,
    Detail,
    Problem,
    ProjectView,
    SensorState,
    State,
)


@dataclass(frozen=True)
class Transition:
    """The agent moved to ``state``."""

    state: State
    project: str = ""
    message: str = ""
    problem: Problem | None = None
    tries_left: int | None = None
    detail: Detail = Detail.NONE  # what ``message`` says, as a code the greeter translates
    detail_args: dict[str, str] = field(default_factory=dict)


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
class PreferencesChanged:
    """The researcher changed a preference on the greeter (the values after the change)."""

    values: dict[str, str]


@dataclass(frozen=True)
class CentreChanged:
    """The tunnel to the centre changed (``reason``: a TunnelReason value or '')."""

    state: CentreState
    reason: str = ""
    gateway: str = ""


@dataclass(frozen=True)
class NetworkChanged:
    """The outer network settings changed (their public values: never the passphrase)."""

    values: dict[str, str]


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
    detail: Detail = Detail.NONE
    detail_args: dict[str, str] = field(default_factory=dict)
    holder_verified: bool = False
    sensor: SensorState = SensorState.UNWATCHED
    card_layout: CardLayout = CardLayout.NONE


AgentEvent = (
    Transition | SessionEndedEvent | RenewalEvent | SensorChanged | PreferencesChanged
    | CentreChanged
    | NetworkChanged
)
