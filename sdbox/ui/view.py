"""What the greeter shows, from what the agent publishes: a pure view model.

The GTK layer (:mod:`sdbox.ui.app`) only renders :class:`Screen`; every
text and every decision about which screen to show is here, testable
without a display. Texts go through gettext (``_``), French and English.
Screens are chosen from the agent's states, problem codes and project
records (:mod:`sdbox.agent.api`, the only sdbox module the greeter imports),
never from the wording of its messages. The agent's English ``Message`` is
never shown either: its ``Detail`` code is said in the greeter's language
(:func:`detail_text`), with the code's parameters inserted as data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from sdbox.agent.api import (
    END_MESSAGES,
    CardLayout,
    CentreState,
    Detail,
    EndReason,
    Preference,
    Problem,
    ProjectStatus,
    ProjectView,
    SensorState,
    State,
    TunnelReason,
    parse_project_status,
)
from sdbox.ui.enrolment import enrolling_screen, enrolment_detail, enrolment_problems

Translate = Callable[[str], str]


@dataclass(frozen=True)
class AgentView:
    """The agent's D-Bus properties, as the greeter reads them."""

    state: str = State.IDLE
    projects: tuple[tuple[str, str, str, str, str, str, bool], ...] = ()
    tries_left: int = -1
    active_project: str = ""
    message: str = ""  # the agent's English words: for the log, never shown
    problem: str = ""
    # what the message says, as a code (agent.api.Detail) and its parameters
    detail: str = ""
    detail_args: Mapping[str, str] = field(default_factory=dict)
    # the fingerprint sensor: connected | disconnected | unwatched (no hotplug watch)
    sensor: str = SensorState.UNWATCHED
    # the researcher's choices (agent.api.Preference) and the layouts this box offers
    preferences: Mapping[str, str] = field(default_factory=dict)
    keyboard_layouts: tuple[str, ...] = ()
    # the tunnel to the centre (agent.api.CentreState), why it is not up and its gateway
    centre: str = CentreState.UNWATCHED
    centre_reason: str = ""
    centre_gateway: str = ""
    # the greeter's own: the keyboard layout chooser is open (F2)
    choosing_layout: bool = False
    # where the card keeps its projects (agent.api.CardLayout): one project means swap to switch
    card_layout: str = CardLayout.NONE


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
    # the keyboard layout chooser's rows (id: the XKB layout), and a line at the bottom
    options: tuple[ProjectItem, ...] = field(default_factory=tuple)
    footer: str = ""
    # the researcher's accessibility choices (F3, F4), applied to every screen
    large_text: bool = False
    high_contrast: bool = False


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
        Problem.CENTRE_UNREACHABLE: (
            _("The centre cannot be reached"),
            _("Your card can stay in: the box keeps trying to reach the centre."),
        ),
        Problem.SESSION_FAILED: (_("The connection failed"), _("Try again in a few minutes.")),
        Problem.SENSOR_FAILED: (
            _("The fingerprint sensor did not work"),
            _("Place your finger again; if it happens again, call the service desk."),
        ),
        Problem.CAPTURE_PARTIAL: (
            _("Only part of your finger was on the sensor"),
            _("Place your finger flat so that it covers the whole sensor."),
        ),
        Problem.CAPTURE_FAINT: (
            _("The fingerprint was too faint"),
            _("Press your finger flatter on the sensor, and hold it still."),
        ),
        Problem.CAPTURE_SMUDGED: (
            _("The fingerprint was smudged"),
            _("Wipe the sensor and your finger with a dry cloth, then try again."),
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


def _project_detail(project: ProjectView, _: Translate) -> str:
    kind = _("Remote desktop") if project.protocol == "rdp" else _("Virtual machine")
    status, days = parse_project_status(project.status)
    if status is ProjectStatus.READY:
        return kind
    if status is ProjectStatus.EXPIRES_SOON:
        return f"{kind} · " + _("access expires in {days} days").format(days=days)
    if status is ProjectStatus.EXPIRED:
        return f"{kind} · " + _("access expired")
    if status is ProjectStatus.NOT_ALLOWED:
        return f"{kind} · " + _("not available on this box")
    return kind if project.usable else f"{kind} · " + _("not available on this box")


def _when(value: str) -> str:
    """A date parameter (ISO 8601) as the screen shows it; the same in every language."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _detail_texts(_: Translate) -> dict[str, str]:
    """Every detail code's sentence; ``{name}`` is a parameter (agent.api.DETAIL_ARGS)."""
    return {
        Detail.CARD_SWAPPED: _("The card was swapped."),
        Detail.CARD_REMOVED: _("The card was removed while it was in use."),
        Detail.CARD_NOT_RESPONDING: _("The card did not answer in time."),
        Detail.CARD_BUSY: _("Another program is using the card."),
        Detail.READER_UNAVAILABLE: _("The card reader cannot be reached."),
        Detail.CARD_NOT_UNDERSTOOD: _("The card answered in a way this box does not understand."),
        Detail.DIRECTORY_MISSING: _("This card holds no list of projects."),
        Detail.DIRECTORY_UNTRUSTED: _("The card's list of projects could not be verified."),
        Detail.INTERNAL_ERROR: _(
            "Something went wrong on this box. Remove the card and try again."
        ),
        Detail.PLACE_FINGER: _("Place your finger on the sensor."),
        Detail.PLACE_FINGER_OR_PIN: _("Place your finger on the sensor or type your PIN."),
        Detail.ENTER_PIN: _("Type your PIN: this card holds no finger."),
        Detail.SENSOR_UNPLUGGED: _(
            "The fingerprint sensor is not connected: plug it back in or call the service desk."
        ),
        Detail.SENSOR_UNPLUGGED_OR_PIN: _(
            "The fingerprint sensor is not connected: type your PIN, or plug the sensor back in."
        ),
        Detail.FINGER_BLOCKED: _("Too many tries: this finger is blocked on the card."),
        Detail.PIN_BLOCKED: _("Too many wrong PINs: the PIN is blocked on the card."),
        Detail.FINGER_NOT_ENROLLED: _("No finger is enrolled on this card."),
        Detail.PIN_FORMAT: _("A PIN has 6 to 8 digits; nothing was sent to the card."),
        Detail.VERIFICATION_FAILED: _("The card refused the verification."),
        Detail.SENSOR_UNAVAILABLE: _("The fingerprint sensor is not answering."),
        Detail.CAPTURE_FAILED: _("The fingerprint could not be read."),
        Detail.CERTIFICATE_REVOKED: _(
            "The certificate of {subject} was revoked on {date}; it can no longer be used. "
            "Contact your project's data manager."
        ),
        Detail.CERTIFICATE_EXPIRED: _(
            "The certificate of {subject} expired on {date}; "
            "it must be renewed before it can be used."
        ),
        Detail.CERTIFICATE_NOT_YET_VALID: _(
            "The certificate of {subject} is not valid before {date}; "
            "check this box's clock, or wait until then."
        ),
        Detail.CERTIFICATE_UNTRUSTED: _("The certificate of {subject} cannot be trusted here."),
        Detail.CERTIFICATE_NOT_LISTED: _(
            "The certificate in slot {slot} is not the one the card's list of projects names."
        ),
        Detail.PROJECT_MISMATCH: _("The card's certificate is not for project {project}."),
        Detail.KEY_NOT_ON_CARD: _(
            "The card does not hold the key of the certificate of {subject}."
        ),
        Detail.REVOCATION_LIST_MISSING: _(
            "This box has no revocation list for {issuer}; "
            "connect the box to the network to refresh it."
        ),
        Detail.REVOCATION_LIST_STALE: _(
            "The revocation list for {issuer} is out of date since {date}; "
            "connect the box to the network to refresh it."
        ),
        Detail.CLOCK_WRONG: _(
            "This box's clock says {now}, but it has already seen {floor}: the clock is wrong, "
            "so no certificate can be checked. Ask IT to fix the time."
        ),
        Detail.SERVER_NAME_MISMATCH: _(
            "The server's certificate is not for {host}; "
            "the connection was refused to protect your session."
        ),
        Detail.SERVER_CERTIFICATE_MALFORMED: _(
            "The card names the project's desktop with a damaged certificate."
        ),
        Detail.ENDPOINT_NOT_ALLOWED: _(
            "Project {project} points to a desktop this box may not reach ({endpoint})."
        ),
        Detail.CENTRE_UNREACHABLE: _("The centre did not answer."),
        Detail.CENTRE_REFUSED: _("The centre refused the request (code {code})."),
        Detail.SESSION_NOT_STARTED: _(
            "The remote desktop program could not be started on this box."
        ),
        Detail.CENTRE_CONNECTING: _("This box is still connecting to the centre."),
        Detail.SESSION_RECONNECTING: _(
            "The connection to the centre was interrupted: your session is reopened as soon "
            "as it is back."
        ),
    }


def _tunnel_reasons(_: Translate) -> dict[str, str]:
    """Why the centre cannot be reached, for the researcher and the operator on the phone."""
    return {
        TunnelReason.NO_NETWORK: _("This box has no network: check its network cable."),
        TunnelReason.GATEWAY_UNREACHABLE: _(
            "The centre's gateway does not answer: it or the network on the way is down."
        ),
        TunnelReason.GATEWAY_REFUSED_BOX: _(
            "The centre's gateway refused this box: it may be revoked or not enrolled. "
            "Call the service desk."
        ),
        TunnelReason.GATEWAY_CERTIFICATE_REFUSED: _(
            "The gateway did not prove that it is the centre's. Do not work around this: "
            "call the service desk."
        ),
        TunnelReason.GATEWAY_CERTIFICATE_EXPIRED: _(
            "The centre's gateway certificate has expired, or this box's clock is wrong. "
            "Call the service desk."
        ),
        TunnelReason.GATEWAY_CERTIFICATE_REVOKED: _(
            "The centre's gateway certificate was revoked. Call the service desk."
        ),
        TunnelReason.GATEWAY_CERTIFICATE_UNCHECKED: _(
            "The centre's gateway certificate could not be checked: this box's revocation "
            "lists are out of date. Call the service desk."
        ),
        TunnelReason.PROPOSAL_MISMATCH: _(
            "The centre's gateway offers no encryption this box accepts. Call the service desk."
        ),
        TunnelReason.CLOSED: _("The centre closed the connection."),
        TunnelReason.DAEMON_UNAVAILABLE: _(
            "The box's connection service is not running. Restart the box; if it happens "
            "again, call the service desk."
        ),
        TunnelReason.STOPPED: _("The connection to the centre was stopped on this box."),
    }


def _tunnel_text(reason: str, gateway: str, _: Translate) -> str:
    """The centre cannot be reached, why, and through which gateway (for the operator)."""
    said = _tunnel_reasons(_).get(reason, _("The centre cannot be reached."))
    if gateway:
        said += " " + _("Gateway: {gateway}.").format(gateway=gateway)
    return said


def _centre_line(view: AgentView, _: Translate) -> str:
    """What the start and picker screens say about the centre ('' when it is reachable)."""
    if view.centre == CentreState.CONNECTING:
        return _("Connecting to the centre…")
    if view.centre in (CentreState.DOWN, CentreState.REFUSED):
        return (
            _("The centre cannot be reached.") + " "
            + _tunnel_text(view.centre_reason, view.centre_gateway, _)
        )  # fmt: skip
    return ''


# variants where an optional parameter is empty: the sentence without it
def _variants(_: Translate) -> dict[str, str]:
    return {
        Detail.CERTIFICATE_REVOKED: _(
            "The certificate of {subject} was revoked on {date} (reason: {reason}); "
            "it can no longer be used. Contact your project's data manager."
        ),
    }


def detail_text(detail: str, args: Mapping[str, str], _: Translate) -> str:
    """The agent's detail said in the greeter's language ('' for a code it does not know).

    The parameters are data: a subject or host name stays as it is; a date is
    written the same way in every language.
    """
    enrolment = enrolment_detail(detail, args, _)
    if enrolment is not None:
        return enrolment
    if detail == Detail.SESSION_ENDED:
        try:
            return _(END_MESSAGES[EndReason(args.get("reason", ""))])
        except ValueError:
            return ""
    if detail == Detail.TUNNEL_DOWN:
        return _tunnel_text(args.get("reason", ""), args.get("gateway", ""), _)
    texts = _detail_texts(_)
    if detail not in texts:
        return ""
    template = texts[detail]
    if detail == Detail.CERTIFICATE_REVOKED and args.get("reason"):
        template = _variants(_)[detail]
    if detail == Detail.CENTRE_REFUSED and not args.get("code"):
        template = _("The centre refused the request.")
    values = {
        key: _when(value) if key in ("date", "now", "floor") else value
        for key, value in args.items()
    }
    try:
        return template.format_map(values)
    except (KeyError, IndexError, ValueError):  # a parameter missing: the sentence without data
        return ""


def _unless_said(said: str, hint: str) -> str:
    """The hint, unless the detail's sentence already gives it (no advice twice on one screen).

    Both are the greeter's own catalogue texts in one language, not the agent's words.
    """
    core = hint.strip().rstrip(".").lower()
    return "" if core and core in said.lower() else hint


# while a session is being opened or runs, the layout stays (the agent refuses a change)
_IN_SESSION = frozenset({State.VALIDATING, State.CONNECTING, State.RUNNING})


def _layout_names(_: Translate) -> dict[str, str]:
    """The keyboard layouts a box may offer (sdbox.session.keyboard.RDP_LAYOUTS), by XKB name."""
    return {
        "us": _("English (US, QWERTY)"),
        "gb": _("English (UK, QWERTY)"),
        "ie": _("Irish (QWERTY)"),
        "fr": _("French (AZERTY)"),
        "be": _("Belgian (AZERTY)"),
        "ch": _("Swiss (QWERTZ)"),
        "de": _("German (QWERTZ)"),
        "at": _("Austrian (QWERTZ)"),
        "nl": _("Dutch (QWERTY)"),
        "it": _("Italian (QWERTY)"),
        "es": _("Spanish (QWERTY)"),
        "pt": _("Portuguese (QWERTY)"),
        "dk": _("Danish (QWERTY)"),
        "no": _("Norwegian (QWERTY)"),
        "se": _("Swedish (QWERTY)"),
        "fi": _("Finnish (QWERTY)"),
        "pl": _("Polish (QWERTY)"),
        "cz": _("Czech (QWERTZ)"),
        "hu": _("Hungarian (QWERTZ)"),
    }


def layout_name(layout: str, _: Translate) -> str:
    """A keyboard layout's name in the greeter's language (its XKB name if it has none)."""
    return _layout_names(_).get(layout, layout)


def _keyboard_screen(view: AgentView, _: Translate) -> Screen:
    current = view.preferences.get(Preference.KEYBOARD_LAYOUT, "")
    layouts = view.keyboard_layouts or ((current,) if current else ())
    return Screen(
        "keyboard",
        _("Keyboard layout"),
        _("Choose the layout of your keyboard: the box and your sessions use it."),
        _("Use the arrow keys and Enter; Escape to go back."),
        options=tuple(
            ProjectItem(code, layout_name(code, _), _("in use") if code == current else "", True)
            for code in layouts
        ),
    )


def _footer(view: AgentView, _: Translate) -> str:
    keys = _("F3: larger text · F4: high contrast")
    layout = view.preferences.get(Preference.KEYBOARD_LAYOUT, "")
    if not layout:
        return keys
    return _("F2: keyboard layout ({layout})").format(layout=layout_name(layout, _)) + "\n" + keys


def screen_for(view: AgentView, _: Translate) -> Screen:
    """The screen for the agent's current state (or the greeter's own chooser)."""
    return replace(
        _screen_for(view, _),
        large_text=view.preferences.get(Preference.LARGE_TEXT) == "1",
        high_contrast=view.preferences.get(Preference.HIGH_CONTRAST) == "1",
    )


def _screen_for(view: AgentView, _: Translate) -> Screen:
    if view.choosing_layout and view.state not in _IN_SESSION:
        return _keyboard_screen(view, _)
    problems = {**_problem_texts(_), **enrolment_problems(_)}
    records = [ProjectView.from_wire(p) for p in view.projects]
    projects = tuple(ProjectItem(p.id, p.name, _project_detail(p, _), p.usable) for p in records)
    said = detail_text(view.detail, view.detail_args, _)
    active = next((p for p in records if p.id == view.active_project), None)
    name = active.name if active else view.active_project
    # the finger is asked for (but on a PIN-only card); the PIN too where the policy allows it
    pin = active is not None and active.accepts_pin
    centre = _centre_line(view, _)
    centre_down = view.centre in (CentreState.DOWN, CentreState.REFUSED)
    if view.state == State.IDLE:
        return Screen(
            "insert",
            _("Insert your card"),
            centre,
            _("Insert your card into the reader to start."),
            footer=_footer(view, _),
            alert=centre_down,
        )
    if view.state == State.READING:
        return Screen("reading", _("Reading your card…"), hint=_("Leave the card in the reader."))
    if view.state == State.BLOCKED:
        title, hint = problems.get(
            view.problem, (_("This card cannot be used"), _("Remove the card."))
        )
        return Screen("error", title, said, _unless_said(said, hint), alert=True)
    if view.state == State.PICKER:
        if view.problem:
            title, hint = problems.get(view.problem, (_("Something went wrong"), _("Try again.")))
            return Screen(
                "picker", title, said, _unless_said(said, hint), projects,
                can_cancel=False, alert=True,
            )  # fmt: skip
        # a one-project card: the only way to another project is another card
        swap = (
            _("This card holds one project: to work on another, swap cards.")
            if view.card_layout == CardLayout.ONE_PROJECT
            else ""
        )
        if view.detail == Detail.ENROLMENT_DONE:  # back from a remote enrolment
            return Screen("enrolled", _("Your fingerprint is enrolled"), said,
                          _("Choose a project to start."), projects)  # fmt: skip
        if view.detail == Detail.SESSION_ENDED:  # a session ended: say why
            return Screen(
                "ended",
                _("The session ended"),
                said + ("\n" + swap if said and swap else swap),
                centre or _("Choose a project to start again."),
                projects,
                alert=centre_down,
            )
        return Screen(
            "picker",
            _("Choose a project"),
            "\n".join(line for line in (centre, swap) if line),
            hint=_("The fingerprint sensor is not connected: plug it in, or call the service desk.")
            if view.sensor == SensorState.DISCONNECTED
            else _("Use the arrow keys and Enter."),
            projects=projects,
            alert=centre_down,
        )
    if view.state == State.ENROLLING:
        return enrolling_screen(view.detail, view.detail_args, view.problem, view.tries_left,
                                said, problems, _, Screen)  # fmt: skip
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
    if view.state == State.VERIFYING and view.detail == Detail.ENTER_PIN:
        # a PIN-only card (the agent's detail says so): its own screen, no finger, no sensor
        tries = view.tries_left
        return Screen(
            "pin",
            problems[Problem.WRONG_PIN][0] if view.problem == Problem.WRONG_PIN
            else _("Enter your PIN"),
            said,
            _("{n} tries left").format(n=tries) if tries >= 0 else name,
            pin_entry=True,
            can_cancel=True,
            alert=bool(view.problem),
        )  # fmt: skip
    if view.state == State.VERIFYING:
        title = _("Place your finger on the sensor")
        if view.problem in (Problem.WRONG_FINGER, Problem.WRONG_PIN):
            title = problems[view.problem][0]
        tries = view.tries_left
        body = _("{n} tries left").format(n=tries) if tries >= 0 else ""
        hint = _("or type your PIN below") if pin else ""
        if view.problem in (
            Problem.CAPTURE_PARTIAL, Problem.CAPTURE_FAINT, Problem.CAPTURE_SMUDGED
        ):  # fmt: skip
            title, hint = problems[view.problem]  # refused before the card: say what to do
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
    if view.state == State.CONNECTING and view.detail == Detail.SESSION_RECONNECTING:
        # the tunnel dropped under the session: it comes back by itself, or ends
        return Screen(
            "connecting", name, said, _("Leave the card in the reader."), can_cancel=True,
            alert=True,
        )  # fmt: skip
    if view.state in (State.VALIDATING, State.CONNECTING):
        step = _("Checking your access…") if view.state == State.VALIDATING else _("Connecting…")
        return Screen("connecting", name, step, _("This takes a few seconds."), can_cancel=True)
    if view.state == State.RUNNING:
        return Screen(
            "running", name, _("Your session is open."), _("Remove your card to end it."), projects
        )
    return Screen("error", _("Please wait"), view.state)
