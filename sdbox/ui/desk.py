"""The greeter's own screens without a card: network settings (F5), support (F1), the blank screen.

Pure view models, like :mod:`sdbox.ui.view`: every text and every decision
is here, :mod:`sdbox.ui.app` only renders them. They read the agent's
``Network``, ``NetworkStatus`` and ``Support`` properties and the codes of
:mod:`sdbox.agent.api` (``NetworkStatus``, ``NetworkRefusal``,
``SupportField``), never the wording of the agent's messages
(docs/desk.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sdbox.agent.api import DiagnosticsOutcome, NetworkRefusal, NetworkStatus, Problem, SupportField

Translate = Callable[[str], str]

MODES = ("dhcp", "static", "wifi")  # the values of SetNetwork's "mode"


@dataclass(frozen=True)
class FormField:
    """One entry of the network form."""

    key: str  # SetNetwork's key
    label: str
    # what the entry starts with (never a passphrase); not compared: what the researcher types
    # must not rebuild the screen under their fingers
    value: str = field(default="", compare=False)
    secret: bool = False  # a password entry: its text is never shown, read back or reported
    problem: str = ""  # why the agent refused this field, in the greeter's language


@dataclass(frozen=True)
class DeskScreen:
    """A screen of this module (rendered by sdbox.ui.app)."""

    kind: str  # network | support | blank
    title: str = ""
    body: str = ""
    hint: str = ""
    alert: bool = False
    modes: tuple[tuple[str, str], ...] = ()  # network: (mode, its name), in order
    mode: str = ""  # network: the mode chosen
    fields: tuple[FormField, ...] = ()
    lines: tuple[tuple[str, str], ...] = ()  # support: (what, value)
    large_text: bool = False
    high_contrast: bool = False


@dataclass(frozen=True)
class DeskView:
    """What these screens need: the agent's properties and the greeter's own state."""

    network: Mapping[str, str] = field(default_factory=dict)  # D-Bus Network
    status: str = NetworkStatus.UNKNOWN  # D-Bus NetworkStatus
    support: Mapping[str, str] = field(default_factory=dict)  # D-Bus Support
    mode: str = ""  # the mode the researcher has selected ('' : the kept one)
    typed: Mapping[str, str] = field(default_factory=dict)  # what was typed (no passphrase)
    refusal: str = ""  # the last SetNetwork error message: "FIELD CODE: English words"
    saved: bool = False  # the last SetNetwork was kept
    # the support screen's "send diagnostics": '' (not asked), SENDING, or SendDiagnostics's
    # outcome (a DiagnosticsOutcome value) with its text (the request's number, or why not)
    diagnostics: str = ""
    diagnostics_text: str = ""


SENDING = "sending"  # DeskView.diagnostics while SendDiagnostics has not answered


def status_text(status: str, _: Translate) -> str:
    """Where the network stands, in one sentence (says where the problem is)."""
    texts: dict[str, str] = {
        NetworkStatus.NO_LINK: _(
            "No network: plug in the network cable, or check the Wi-Fi network and its passphrase."
        ),
        NetworkStatus.NO_ADDRESS: _(
            "Connected, but the local network gave the box no address (DHCP did not answer)."
        ),
        NetworkStatus.NO_ROUTE: _(
            "The box has an address but no route to the centre's gateway: check the router."
        ),
        NetworkStatus.UDP_BLOCKED: _(
            "The centre's gateway does not answer: the local network may block UDP ports "
            "500 and 4500, or the gateway is down."
        ),
        NetworkStatus.GATEWAY_REFUSED: _(
            "The centre's gateway refused this box: call the service desk."
        ),
        NetworkStatus.TUNNEL_DOWN: _("The connection to the centre is down."),
        NetworkStatus.CONNECTING: _("The local network works; connecting to the centre…"),
        NetworkStatus.CONNECTED: _("Connected to the centre."),
        NetworkStatus.LOCAL_ONLY: _("The local network works."),
    }
    return texts.get(status, _("The network has not been checked yet."))


def _mode_names(_: Translate) -> dict[str, str]:
    return {
        "dhcp": _("Wired, automatic address (DHCP)"),
        "static": _("Wired, fixed address"),
        "wifi": _("Wi-Fi (WPA2/WPA3)"),
    }


def _refusal_texts(_: Translate) -> dict[str, str]:
    texts: dict[str, str] = {
        NetworkRefusal.NOT_A_SETTING: _("This setting is not known."),
        NetworkRefusal.MISSING: _("This field is needed."),
        NetworkRefusal.NO_PREFIX: _("Add the prefix length, e.g. 192.168.1.20/24."),
        NetworkRefusal.NOT_AN_ADDRESS: _("This is not an IP address."),
        NetworkRefusal.NOT_A_HOST: _("This address cannot be the box's."),
        NetworkRefusal.ROUTER_OUTSIDE: _("The router must be another address of the same network."),
        NetworkRefusal.OVERLAPS_CENTRE: _(
            "This network overlaps the centre's networks, which only the tunnel may carry: "
            "choose another address."
        ),
        NetworkRefusal.NEEDS_RESOLVER: _("The centre's gateway is a name: give a DNS server."),
        NetworkRefusal.SSID_LENGTH: _("A network name has 1 to 32 characters."),
        NetworkRefusal.SSID_CHARACTERS: _("The network name has a character that is not allowed."),
        NetworkRefusal.PASSPHRASE_LENGTH: _("A Wi-Fi passphrase has 8 to 63 characters."),
        NetworkRefusal.PASSPHRASE_CHARACTERS: _(
            "A Wi-Fi passphrase has letters, digits and ASCII signs only."
        ),
    }
    return texts


def parse_refusal(message: str) -> tuple[str, str]:
    """The field and code of a SetNetwork refusal ("FIELD CODE: words"); ('', '') if not one."""
    head, _sep, _words = message.partition(":")
    parts = head.split()
    if len(parts) != 2 or parts[1] not in {r.value for r in NetworkRefusal}:
        return "", ""
    return parts[0], parts[1]


def network_screen(view: DeskView, _: Translate) -> DeskScreen:
    """The network settings: the modes, the selected one's fields, where the network stands."""
    kept = view.network.get("mode", "dhcp")
    mode = view.mode if view.mode in MODES else (kept if kept in MODES else "dhcp")
    wrong_field, code = parse_refusal(view.refusal)
    reason = _refusal_texts(_).get(code, "")

    def entry(key: str, label: str, secret: bool = False) -> FormField:
        value = "" if secret else view.typed.get(key, view.network.get(key, ""))
        return FormField(key, label, value, secret, reason if key == wrong_field else "")

    fields: tuple[FormField, ...] = ()
    if mode == "static":
        fields = (
            entry("address", _("Address (e.g. 192.168.1.20/24)")),
            entry("gateway", _("Router")),
            entry("dns", _("DNS servers (optional)")),
        )
    elif mode == "wifi":
        passphrase = _("Passphrase")
        if view.network.get("passphrase_set") == "1":
            passphrase = _("Passphrase (empty: keep the one saved)")
        fields = (entry("ssid", _("Network name (SSID)")), entry("passphrase", passphrase, True))
    if wrong_field:
        body, alert = _("Not saved: check the marked field."), True
    elif view.saved:
        body, alert = _("Saved. The box uses these settings now and after a restart."), False
    else:
        body, alert = status_text(view.status, _), view.status not in (
            NetworkStatus.CONNECTED, NetworkStatus.LOCAL_ONLY, NetworkStatus.CONNECTING,
            NetworkStatus.UNKNOWN,
        )  # fmt: skip
    return DeskScreen(
        "network",
        _("Network"),
        body,
        _("Up and down: the kind of network · Tab: the fields · Enter: save · Escape: back"),
        alert=alert,
        modes=tuple(_mode_names(_).items()),
        mode=mode,
        fields=fields,
    )


def _problem_name(code: str, _: Translate) -> str:
    """A problem code as the helpdesk hears it: short words, and the code for their search."""
    names: dict[str, str] = {
        Problem.WRONG_FINGER: _("finger did not match"),
        Problem.FINGER_BLOCKED: _("finger blocked"),
        Problem.WRONG_PIN: _("wrong PIN"),
        Problem.PIN_BLOCKED: _("PIN blocked"),
        Problem.BROKER_UNREACHABLE: _("centre unreachable"),
        Problem.CREDENTIAL_REFUSED: _("centre refused"),
        Problem.SESSION_FAILED: _("connection failed"),
        Problem.CERTIFICATE_REVOKED: _("access withdrawn"),
        Problem.CERTIFICATE_EXPIRED: _("access expired"),
        Problem.CLOCK_WRONG: _("clock wrong"),
        Problem.CARD_UNREADABLE: _("card unreadable"),
        Problem.SENSOR_UNPLUGGED: _("sensor unplugged"),
    }
    name = names.get(code)
    return f"{name} ({code})" if name else code


def _when(value: str) -> str:
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def support_screen(view: DeskView, _: Translate) -> DeskScreen:
    """What the helpdesk asks for on the phone; nothing personal."""
    s = view.support
    version = s.get(SupportField.VERSION, "")
    slot = s.get(SupportField.SLOT, "")
    if slot:
        version = _("{version}, slot {slot}").format(version=version, slot=slot)
    addresses = s.get(SupportField.ADDRESSES, "") or _("none")
    interface = s.get(SupportField.INTERFACE, "")
    card = s.get(SupportField.CARD, "")
    if card:
        card = _("{kind}, {when}").format(kind=card, when=_when(s.get(SupportField.CARD_SEEN, "")))
    problems = [
        line.split(" ", 1) for line in s.get(SupportField.PROBLEMS, "").splitlines() if " " in line
    ]
    said = "\n".join(f"{_when(at)}  {_problem_name(code, _)}" for at, code in problems)
    lines = (
        (_("Box"), s.get(SupportField.BOX, "") or _("unknown")),
        (_("Software"), version or _("unknown")),
        (_("Generation"), s.get(SupportField.GENERATION, "") or _("unknown")),
        (_("Addresses"), f"{interface}: {addresses}" if interface else addresses),
        (_("Network"), status_text(s.get(SupportField.TUNNEL, view.status), _)),
        (_("Last card"), card or _("none since the box started")),
        (_("Last problems"), said or _("none")),
    )
    body, alert = _diagnostics_text(view, _)
    return DeskScreen(
        "support",
        _("Support information"),
        body or _("Read this to the service desk: it holds nothing personal."),
        _("Enter: send diagnostics to the service desk · Escape: back"),
        alert=alert,
        lines=lines,
    )


def _diagnostics_text(view: DeskView, _: Translate) -> tuple[str, bool]:
    """What became of "send diagnostics" (its outcome code, never the agent's wording), and
    whether it is bad news; ('', False) before it was asked."""
    outcome, text = view.diagnostics, view.diagnostics_text
    if outcome in (SENDING, DiagnosticsOutcome.BUSY):
        return _("Sending diagnostics to the service desk…"), False
    if outcome == DiagnosticsOutcome.SENT:
        return _("Diagnostics sent: tell the service desk reference {number}.").format(number=text), False
    if outcome == DiagnosticsOutcome.NOT_CONFIGURED:
        return _("Diagnostics not sent: this box does not report to a fleet service."), True
    if outcome == DiagnosticsOutcome.UNREACHABLE:
        return _(
            "Diagnostics not sent: the centre cannot be reached. Read this screen to the service desk."
        ), True
    if outcome:
        return _("Diagnostics not sent: {reason}").format(reason=text), True
    return "", False
