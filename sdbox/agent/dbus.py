"""The agent's D-Bus API (``org.sdbox.Agent1`` on the system bus), documented in docs/agent.md.

The only module of the agent that imports dbus-fast; the names, states and
problem codes it exports are :mod:`sdbox.agent.api`'s. Refusals become D-Bus
errors named after their problem code (``org.sdbox.Agent1.Error.finger_blocked``)
in this one place; the greeter shows their message.

No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus
signatures from the annotations at class creation.
"""

import logging
from typing import Annotated

from dbus_fast import BusType, DBusError, PropertyAccess
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusInt32, DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from sdbox.agent.api import BUS_NAME, ERROR_PREFIX, INTERFACE, OBJECT_PATH
from sdbox.agent.events import (
    CentreChanged,
    NetworkChanged,
    PreferencesChanged,
    RenewalEvent,
    SensorChanged,
    SessionEndedEvent,
    Transition,
)
from sdbox.agent.machine import Agent
from sdbox.agent.problems import Refusal

_log = logging.getLogger("sdbox.agent.dbus")

# ProjectView.to_wire(): (id, name, protocol, second factor, expires ISO 8601, status in words, usable)
ProjectsType = Annotated[
    list[tuple[str, str, str, str, str, str, bool]], DBusSignature("a(ssssssb)")
]


DetailArgsType = Annotated[dict[str, str], DBusSignature("a{ss}")]


def _refused(refusal: Refusal) -> DBusError:
    return DBusError(ERROR_PREFIX + refusal.problem.value, refusal.message)


class AgentInterface(ServiceInterface):
    """org.sdbox.Agent1: state, projects and tries as properties; commands as methods."""

    def __init__(self, agent: Agent) -> None:
        super().__init__(INTERFACE)
        self.agent = agent
        agent.listeners.append(self._on_event)

    # -- properties ----------------------------------------------------------

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:  # D-Bus names are CamelCase
        """idle | reading | picker | verifying | validating | connecting | running | blocked."""
        return self.agent.snapshot.state.value

    @dbus_property(access=PropertyAccess.READ)
    def Projects(self) -> ProjectsType:
        """The projects of the inserted card."""
        return [p.to_wire() for p in self.agent.snapshot.projects]

    @dbus_property(access=PropertyAccess.READ)
    def TriesLeft(self) -> DBusInt32:
        """Finger tries left (-1: unknown or verified)."""
        return self.agent.snapshot.tries_left

    @dbus_property(access=PropertyAccess.READ)
    def ActiveProject(self) -> DBusStr:
        """The project being connected or running ('' if none)."""
        return self.agent.snapshot.active_project

    @dbus_property(access=PropertyAccess.READ)
    def Message(self) -> DBusStr:
        """The last message in plain words."""
        return self.agent.snapshot.message

    @dbus_property(access=PropertyAccess.READ)
    def Detail(self) -> DBusStr:
        """What Message says, as a code the greeter translates ('' if none; agent.api.Detail)."""
        return self.agent.snapshot.detail.value

    @dbus_property(access=PropertyAccess.READ)
    def DetailArgs(self) -> DetailArgsType:
        """The detail's parameters (agent.api.DETAIL_ARGS): data, shown as it is."""
        return dict(self.agent.snapshot.detail_args)

    @dbus_property(access=PropertyAccess.READ)
    def Problem(self) -> DBusStr:
        """The last problem code ('' if none)."""
        problem = self.agent.snapshot.problem
        return problem.value if problem else ""

    @dbus_property(access=PropertyAccess.READ)
    def Preferences(self) -> DetailArgsType:
        """The researcher's choices (agent.api.Preference): keyboard_layout, large_text, ..."""
        return self.agent.preferences.values()

    @dbus_property(access=PropertyAccess.READ)
    def KeyboardLayouts(self) -> Annotated[list[str], DBusSignature("as")]:
        """The XKB layouts the greeter may offer ([keyboard] choices)."""
        return list(self.agent.preferences.choices)

    @dbus_property(access=PropertyAccess.READ)
    def CardLayout(self) -> DBusStr:
        """Where the card keeps its projects: directory | one_project ('' before it is read)."""
        return self.agent.snapshot.card_layout.value

    @dbus_property(access=PropertyAccess.READ)
    def Sensor(self) -> DBusStr:
        """The fingerprint sensor: connected | disconnected | unwatched (no hotplug watch)."""
        return self.agent.snapshot.sensor.value

    @dbus_property(access=PropertyAccess.READ)
    def Centre(self) -> DBusStr:
        """The tunnel to the centre: unwatched (no tunnel) | connecting | up | down | refused."""
        return self.agent.centre().state.value

    @dbus_property(access=PropertyAccess.READ)
    def CentreReason(self) -> DBusStr:
        """Why the centre cannot be reached (agent.api.TunnelReason; '' when up)."""
        return self.agent.centre().reason

    @dbus_property(access=PropertyAccess.READ)
    def CentreGateway(self) -> DBusStr:
        """The gateway the tunnel is up through, or last tried ('' if none)."""
        return self.agent.centre().gateway

    @dbus_property(access=PropertyAccess.READ)
    def Network(self) -> DetailArgsType:
        """The outer network settings (sdbox.network.outer.Field), never the passphrase."""
        return self.agent.network.settings.public()

    @dbus_property(access=PropertyAccess.READ)
    def NetworkStatus(self) -> DBusStr:
        """Where the outer network and the tunnel stand (agent.api.NetworkStatus)."""
        return self.agent.network_status().value

    @dbus_property(access=PropertyAccess.READ)
    def Support(self) -> DetailArgsType:
        """What the support screen shows (agent.api.SupportField): nothing personal."""
        return self.agent.support_values()

    # -- methods ---------------------------------------------------------------

    @method()
    async def ChooseProject(self, project_id: DBusStr) -> None:
        """Connect to ``project_id`` (from the picker)."""
        try:
            await self.agent.choose_project(project_id)
        except Refusal as refusal:
            raise _refused(refusal) from refusal

    @method()
    async def Switch(self, project_id: DBusStr) -> None:
        """Replace the running session with ``project_id``."""
        try:
            await self.agent.switch(project_id)
        except Refusal as refusal:
            raise _refused(refusal) from refusal

    @method()
    async def SubmitPin(self, pin: DBusStr) -> None:
        """The PIN, where the chosen project accepts it."""
        try:
            await self.agent.submit_pin(pin)
        except Refusal as refusal:
            raise _refused(refusal) from refusal

    @method()
    async def StartEnrolment(self) -> None:
        """Remote fingerprint enrolment of the inserted card (from the picker; the centre decides)."""
        try:
            await self.agent.start_enrolment()
        except Refusal as refusal:
            raise _refused(refusal) from refusal

    @method()
    def SetPreference(self, key: DBusStr, value: DBusStr) -> None:
        """Keep a choice of the researcher's (validated; refused with invalid_preference)."""
        try:
            self.agent.set_preference(key, value)
        except Refusal as refusal:
            raise _refused(refusal) from refusal

    @method()
    def SetNetwork(self, values: DetailArgsType) -> None:
        """The outer network (keys: sdbox.network.outer.Field); refused with invalid_network.

        The refusal's message is "FIELD: reason"; nothing is kept then.
        """
        try:
            self.agent.set_network(values)
        except Refusal as refusal:
            raise _refused(refusal) from refusal

    @method()
    async def SendDiagnostics(self) -> Annotated[tuple[str, str], DBusSignature("(ss)")]:
        """Upload the box's diagnostics to the fleet service (the support screen's key).

        Answers ``(outcome, text)`` (agent.api.DiagnosticsOutcome): ``sent`` and the
        request's number, or why not; never a D-Bus error.
        """
        return (await self.agent.send_diagnostics()).to_wire()

    @method()
    async def Cancel(self) -> None:
        """Abandon the current step or end the session; back to the picker."""
        await self.agent.cancel()

    # -- signals -------------------------------------------------------------------

    @signal()
    def StateChanged(
        self, state: str, project: str, message: str, problem: str, tries_left: int
    ) -> Annotated[tuple[str, str, str, str, int], DBusSignature("ssssi")]:
        """Every transition."""
        return (state, project, message, problem, tries_left)

    @signal()
    def SessionEnded(
        self, project: str, reason: str, message: str
    ) -> Annotated[tuple[str, str, str], DBusSignature("sss")]:
        """A session ended, with its reason code and plain words."""
        return (project, reason, message)

    @signal()
    def RenewalFinished(
        self, project: str, outcome: str, message: str
    ) -> Annotated[tuple[str, str, str], DBusSignature("sss")]:
        """A project's certificate renewal finished (outcome: docs/renewal.md)."""
        return (project, outcome, message)

    def _on_event(
        self,
        event: Transition | SessionEndedEvent | RenewalEvent | SensorChanged | PreferencesChanged
        | CentreChanged
        | NetworkChanged,
    ) -> None:
        if isinstance(event, CentreChanged):
            self.emit_properties_changed({"Centre": event.state.value,
                                          "CentreReason": event.reason,
                                          "CentreGateway": event.gateway})  # fmt: skip
        elif isinstance(event, NetworkChanged):
            self.emit_properties_changed({"Network": dict(event.values)})
        elif isinstance(event, PreferencesChanged):
            self.emit_properties_changed({"Preferences": dict(event.values)})
        elif isinstance(event, SensorChanged):
            self.emit_properties_changed({"Sensor": event.state.value})
        elif isinstance(event, Transition):
            tries = (
                event.tries_left if event.tries_left is not None else self.agent.snapshot.tries_left
            )
            problem = event.problem.value if event.problem else ""
            self.StateChanged(event.state.value, event.project, event.message, problem, tries)
            self.emit_properties_changed(
                {"State": event.state.value, "ActiveProject": event.project, "Message": event.message,
                 "Problem": problem, "TriesLeft": tries, "Detail": event.detail.value,
                 "DetailArgs": dict(event.detail_args),
                 "CardLayout": self.agent.snapshot.card_layout.value}
            )  # fmt: skip
        elif isinstance(event, RenewalEvent):
            self.RenewalFinished(event.project, event.outcome, event.message)
            self.emit_properties_changed({"Projects": self.Projects})  # the new expiry
        else:
            self.SessionEnded(event.project, event.reason, event.message)


async def export(agent: Agent, bus_address: str | None = None) -> MessageBus:
    """Connect to the bus (system bus by default), export the agent, take its name."""
    if bus_address:
        bus = MessageBus(bus_address=bus_address)
    else:
        bus = MessageBus(bus_type=BusType.SYSTEM)
    await bus.connect()
    bus.export(OBJECT_PATH, AgentInterface(agent))
    await bus.request_name(BUS_NAME)
    return bus
