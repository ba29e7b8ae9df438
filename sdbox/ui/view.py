"""What the greeter shows, from what the agent publishes: a pure view model.

The GTK layer (:mod:`sdbox.ui.app`) only renders :class:`Screen`; every
text and every decision about which screen to show is here, testable
without a display. Texts go through gettext (``_``), French and English.
Screens are chosen from the agent's states, problem codes and project
records (:mod:`sdbox.agent.api`, the only sdbox module the greeter imports),
never from the wording of its messages, which are shown, not parsed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sdbox.agent.api import END_MESSAGES, EndReason, Problem, ProjectView, SensorState, State

Translate = Callable[[str], str]


@dataclass(frozen=True)
class AgentView:
    """The agent's D-Bus properties, as the greeter reads them."""

    state: str = State.IDLE
    projects: tuple[tuple[str, str, str, str, str, str, bool], ...] = ()
    tries_left: int = -1
    active_project: str = ""
    message: str = ""
    problem: str = ""
    # the reason code of the last SessionEnded signal, with the message it came with
    end_reason: str = ""
    end_message: str = ""
    # the fingerprint sensor: connected | disconnected | unwatched (no hotplug watch)
    sensor: str = SensorState.UNWATCHED


@dataclass(frozen=True)
class ProjectItem:
    """One row of the picker."""

    id: str
    name: str
    detail: str
    usable: bool


@dataclass(frozen=True)
class Screen:
    """One screen of the greeter."""

    kind: str
    title: str
    body: str = ""
    hint: str = ""
    projects: tuple[ProjectItem, ...] = field(default_factory=tuple)
    pin_entry: bool = False
    can_cancel: bool = False
    alert: bool = False


def _problem_texts(_: Translate) -> dict[str, tuple[str, str]]:
    return {
        Problem.FINGER_BLOCKED: (
            _("This finger is blocked"),
            _("Your finger must be enrolled again at the card office."),
        ),
        Problem.PIN_BLOCKED: (
            _("The PIN is blocked"),
            _("Have it reset with the PUK at the card office."),
        ),
        Problem.WRONG_FINGER: (
            _("The finger did not match"),
            _("Place the same finger flat and centred."),
        ),
        Problem.WRONG_PIN: (_("Wrong PIN"), _("Type your PIN again.")),
        Problem.NO_FINGER_ENROLLED: (
            _("This project needs a finger, and none is enrolled on this card"),
            _("Take the card to the enrolment station."),
        ),
        Problem.PIN_NOT_ALLOWED: (
            _("This project needs your finger"),
            _("Place your finger on the sensor."),
        ),
        Problem.CERTIFICATE_REVOKED: (
            _("Access to this project was withdrawn"),
            _("Contact your project's data manager."),
        ),
        Problem.CERTIFICATE_EXPIRED: (
            _("Your access to this project has expired"),
            _("Ask your data manager to renew it."),
        ),
        Problem.CERTIFICATE_INVALID: (
            _("Your access to this project is not valid"),
            _("Take your card to the card office."),
        ),
        Problem.CLOCK_WRONG: (_("The box's clock is wrong"), _("Call the service desk.")),
        Problem.SERVER_UNTRUSTED: (
            _("The project's desktop could not be trusted"),
            _("Call the service desk; do not try again."),
        ),
        Problem.ENDPOINT_NOT_ALLOWED: (
            _("This box may not open this project"),
            _("Use a box of your centre for this project."),
        ),
        Problem.CREDENTIAL_REFUSED: (
            _("The centre refused the connection"),
            _("Try again; if it happens again, call the service desk."),
        ),
        Problem.BROKER_UNREACHABLE: (
            _("The centre cannot be reached"),
            _("Check the network cable, or try again in a few minutes."),
        ),
        Problem.SESSION_FAILED: (_("The connection failed"), _("Try again in a few minutes.")),
        Problem.SENSOR_FAILED: (
            _("The fingerprint sensor did not work"),
            _("Place your finger again; if it happens again, call the service desk."),
        ),
        Problem.SENSOR_UNPLUGGED: (
            _("The fingerprint sensor is not connected"),
            _("The fingerprint sensor is not connected: plug it in, or call the service desk."),
        ),
        Problem.DIRECTORY_UNTRUSTED: (
            _("This card is not recognised"),
            _("Remove the card and take it to the card office."),
        ),
        Problem.CARD_NOT_SUPPORTED: (
            _("This card is not supported on this box"),
            _("Remove it: the box is ready for the next card."),
        ),
        Problem.CARD_NOT_RECOGNISED: (
            _("This card is not recognised"),
            _("Remove the card and take it to the card office."),
        ),
        Problem.CARD_UNREADABLE: (
            _("The card could not be read"),
            _("Remove the card and insert it again."),
        ),
    }


def _detail(project: ProjectView, _: Translate) -> str:
    status = project.status
    kind = _("Remote desktop") if project.protocol == "rdp" else _("Virtual machine")
    if status == "ready":
        return kind
    if status.startswith("certificate expires in "):
        days = status.removeprefix("certificate expires in ").split()[0]
        return f"{kind} · " + _("access expires in {days} days").format(days=days)
    if status == "certificate expired":
        return f"{kind} · " + _("access expired")
    if status == "not allowed on this box":
        return f"{kind} · " + _("not available on this box")
    return f"{kind} · {status}"


def _end_text(view: AgentView, _: Translate) -> str:
    """The agent's end message, translated when its reason code is known."""
    try:
        reason = EndReason(view.end_reason)
    except ValueError:
        return view.message
    if view.end_message != view.message:  # an older end: the agent's words are current
        return view.message
    return _(END_MESSAGES[reason])


def _sentence(message: str) -> str:
    """The agent's detail as a sentence: a capital first, a full stop last."""
    text = message.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?…" else text + "."


def _unless_said(message: str, hint: str) -> str:
    """The hint, unless the agent's message already says it (no advice twice on one screen)."""
    core = hint.strip().rstrip(".").lower()
    return "" if core and core in message.lower() else hint


def screen_for(view: AgentView, _: Translate) -> Screen:
    """The screen for the agent's current state."""
    problems = _problem_texts(_)
    records = [ProjectView.from_wire(p) for p in view.projects]
    projects = tuple(ProjectItem(p.id, p.name, _detail(p, _), p.usable) for p in records)
    active = next((p for p in records if p.id == view.active_project), None)
    name = active.name if active else view.active_project
    # the finger is always asked for; the PIN too where the project's policy allows it
    pin = active is not None and active.accepts_pin
    if view.state == State.IDLE:
        return Screen(
            "insert",
            _("Insert your card"),
            "",
            _("Insert your card into the reader to start."),
        )
    if view.state == State.READING:
        return Screen("reading", _("Reading your card…"), hint=_("Leave the card in the reader."))
    if view.state == State.BLOCKED:
        title, hint = problems.get(
            view.problem, (_("This card cannot be used"), _("Remove the card."))
        )
        body = _sentence(view.message)
        return Screen("error", title, body, _unless_said(body, hint), alert=True)
    if view.state == State.PICKER:
        if view.problem:
            title, hint = problems.get(view.problem, (_("Something went wrong"), _("Try again.")))
            body = _sentence(view.message)
            return Screen(
                "picker", title, body, _unless_said(body, hint), projects,
                can_cancel=False, alert=True,
            )  # fmt: skip
        if view.message:  # a session ended: say why, in the researcher's language
            return Screen(
                "ended",
                _("The session ended"),
                _end_text(view, _),
                _("Choose a project to start again."),
                projects,
            )
        return Screen(
            "picker",
            _("Choose a project"),
            hint=_("The fingerprint sensor is not connected: plug it in, or call the service desk.")
            if view.sensor == SensorState.DISCONNECTED
            else _("Use the arrow keys and Enter."),
            projects=projects,
        )
    if view.state == State.VERIFYING and view.problem == Problem.SENSOR_UNPLUGGED:
        # no try was spent; the finger prompt comes back by itself once it is plugged in
        tries = view.tries_left
        return Screen(
            "finger",
            _("The fingerprint sensor is not connected"),
            _("Plug the fingerprint sensor back in: your card can stay in.")
            if not pin
            else _("Plug the fingerprint sensor back in, or type your PIN below."),
            _("{n} tries left").format(n=tries) if tries >= 0 else name,
            pin_entry=pin,
            can_cancel=True,
            alert=True,
        )
    if view.state == State.VERIFYING:
        title = _("Place your finger on the sensor")
        if view.problem in (Problem.WRONG_FINGER, Problem.WRONG_PIN):
            title = problems[view.problem][0]
        tries = view.tries_left
        body = _("{n} tries left").format(n=tries) if tries >= 0 else ""
        hint = _("or type your PIN below") if pin else ""
        if pin and tries == 0:  # the finger is blocked: only the PIN is left
            title, body, hint = (
                _("Enter your PIN"),
                _("Your finger is blocked: have it enrolled again at the card office."),
                "",
            )
        return Screen(
            "finger",
            title,
            body,
            hint or name,
            pin_entry=pin,
            can_cancel=True,
            alert=bool(view.problem),
        )
    if view.state in (State.VALIDATING, State.CONNECTING):
        step = _("Checking your access…") if view.state == State.VALIDATING else _("Connecting…")
        return Screen("connecting", name, step, _("This takes a few seconds."), can_cancel=True)
    if view.state == State.RUNNING:
        return Screen(
            "running", name, _("Your session is open."), _("Remove your card to end it."), projects
        )
    return Screen("error", _("Please wait"), view.state)
