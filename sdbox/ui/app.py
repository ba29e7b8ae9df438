"""The kiosk greeter: a GTK 4 window that renders :mod:`sdbox.ui.view` and talks to the agent.

It talks to nothing but the agent's D-Bus API (GDBus, so that GTK's main
loop owns everything), has no decorations, no menus and no way out: under
``cage`` it is the only window there is. cage 0.1.4 does not maximise it, so
it sizes itself to the monitor. Keyboard: arrows and Enter in the picker,
Enter in the PIN field, Escape to go back, F2 for the keyboard layout, F3
for larger text, F4 for high contrast (both kept by the agent, so that they
survive a restart; applied as CSS classes on the window), F5 for the network
settings and F1 for the support screen (sdbox.ui.desk; not while a session is
opened or runs).

A new keyboard layout is applied by the compositor, which takes its keymap
once, at start (cage's ``XKB_DEFAULT_LAYOUT``): once the agent has kept the
choice (and written it where the greeter's unit reads it), the greeter quits
and its unit starts cage and the greeter again with the new layout.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gtk", "4.0")
gi.require_version("Gdk", "4.0")
from gi.repository import Gdk, Gio, GLib, Gtk  # noqa: E402  (after require_version)

from sdbox.agent.api import (  # noqa: E402
    BUS_NAME,
    INTERFACE,
    OBJECT_PATH,
    CentreState,
    NetworkStatus,
    Preference,
    SensorState,
    State,
)
from sdbox.ui import SCREEN_FILE_VARIABLE  # noqa: E402
from sdbox.ui.catalogue import translator  # noqa: E402
from sdbox.ui.desk import DeskScreen, DeskView, network_screen, support_screen  # noqa: E402
from sdbox.ui.panels import REFRESH_S, DeskPanels, display_scale, scaled_css  # noqa: E402
from sdbox.ui.view import AgentView, Screen, screen_for  # noqa: E402

_log = logging.getLogger("sdbox.ui")

CALL_TIMEOUT_MS = 30_000
XKB_DEFAULT = "us"  # XKB's own default: cage's layout when XKB_DEFAULT_LAYOUT is unset

CSS = b"""
window { background: #f4f5f7; }
.title { font-size: 30px; font-weight: bold; color: #1c2733; }
.title.alert { color: #a3231f; }
.body { font-size: 20px; color: #1c2733; }
.hint { font-size: 16px; color: #4a5866; }
.brand { font-size: 14px; color: #6b7785; }
list { background: transparent; }
row { padding: 12px 18px; border-radius: 8px; }
row:selected { background: #2b5797; color: white; }
.project { font-size: 20px; font-weight: bold; }
.detail { font-size: 14px; }
.footer { font-size: 14px; color: #4a5866; }
/* F3: larger text, about one and a half times (the layout wraps, nothing is cut) */
window.large .title { font-size: 44px; }
window.large .body { font-size: 30px; }
window.large .hint { font-size: 24px; }
window.large .brand { font-size: 20px; }
window.large .project { font-size: 30px; }
window.large .detail, window.large .footer { font-size: 21px; }
window.large entry { font-size: 28px; min-height: 52px; }
/* F4: high contrast: white and yellow on black, the selection black on yellow */
window.contrast { background: #000000; }
window.contrast label { color: #ffffff; }
window.contrast .title.alert { color: #ffd60a; }
window.contrast row { border: 2px solid #ffffff; margin-bottom: 6px; }
window.contrast row:selected { background: #ffd60a; border-color: #ffd60a; }
window.contrast row:selected label { color: #000000; }
window.contrast entry { background: #000000; color: #ffffff; border: 3px solid #ffd60a; }
/* F5 and F1: the network form and the support lines */
.field { font-size: 16px; color: #1c2733; }
.field-problem { font-size: 16px; color: #a3231f; font-weight: bold; }
.support-key { font-size: 16px; color: #4a5866; }
.support-value { font-size: 16px; color: #1c2733; }
window.large .field, window.large .field-problem { font-size: 24px; }
window.large .support-key, window.large .support-value { font-size: 24px; }
window.contrast .field-problem { color: #ffd60a; }
/* idle: the screen blanked (black; a key or a card wakes it) */
window.blank, window.blank.contrast { background: #000000; }
"""

# The screens without a card, and the states in which they may open (never over a session)
_PANEL_KEYS = {Gdk.KEY_F5: "network", Gdk.KEY_F1: "support"}
_PANEL_STATES = frozenset({State.IDLE, State.PICKER, State.BLOCKED, State.READING})


def _label_texts(widget: Any) -> list[str]:
    """The text of every visible label under ``widget``, in reading order."""
    texts: list[str] = []
    child = widget.get_first_child()
    while child is not None:
        if child.get_visible():
            if isinstance(child, Gtk.Label):
                texts.append(child.get_text())
            texts.extend(_label_texts(child))
        child = child.get_next_sibling()
    return texts


def _report_screen(kind: str, box: Any) -> None:
    """Write what the new screen says where the tests look (only when they ask).

    A file, not the accessibility tree: GTK 4.8's AT-SPI root crashed the
    greeter when a client walked its tree (under cage, on a private
    accessibility bus with at-spi2-registryd). Labels only: the PIN entry's text is never a label, so it never reaches
    the file. Written whole (a temporary file renamed over the old one) so
    that a reader never sees half a screen.
    """
    path = os.environ.get(SCREEN_FILE_VARIABLE)
    if not path:
        return
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps({"kind": kind, "texts": _label_texts(box)}), encoding="utf-8")
    partial.replace(target)


_DEBUG_KEYS = frozenset({"i", "I", "d", "D"})


def _swallow_debug_keys(_controller: Any, keyval: int, _code: int, state: Any) -> bool:
    """True (handled, so dropped) for the inspector's shortcuts."""
    wanted = Gdk.ModifierType.CONTROL_MASK | Gdk.ModifierType.SHIFT_MASK
    return bool((state & wanted) == wanted and Gdk.keyval_name(keyval) in _DEBUG_KEYS)


def _focus_once(widget: Any) -> None:
    """Give ``widget`` the focus once the window is built.

    Not ``idle_add(widget.grab_focus)``: grab_focus returns True, which
    keeps an idle source alive, so the focus would be taken back for ever
    (arrow keys would seem dead) and the greeter would spin a core.
    """

    def grab() -> bool:
        widget.grab_focus()
        return False  # GLib.SOURCE_REMOVE: run once

    GLib.idle_add(grab)


class Greeter(DeskPanels):
    """The window, the D-Bus proxy and the rendering."""

    def __init__(self, app: Gtk.Application, bus_address: str | None, language: str) -> None:
        self._ = translator(language)
        self.app = app
        self.scale = display_scale()  # before any widget: lengths are multiplied by it
        self.screen: Screen | DeskScreen | None = None
        self.window = self._new_window()
        provider = Gtk.CssProvider()
        provider.load_from_data(scaled_css(CSS, self.scale))
        Gtk.StyleContext.add_provider_for_display(
            Gdk.Display.get_default(), provider, Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION
        )
        self.properties: dict[str, Any] = {}
        self.choosing_layout = False  # the keyboard layout chooser is open (F2)
        # F5 / F1: the network or support screen is open ("" : the agent's screen)
        self.panel = ""
        self.net_mode = ""  # the network form's mode as selected ('' : the kept one)
        self.typed: dict[str, str] = {}  # the form's entries as typed (never the passphrase)
        self.secret = ""  # the passphrase as typed: sent once, never shown or reported
        self.refusal = ""  # the agent's last SetNetwork refusal ("FIELD CODE: words")
        self.saved = False
        # the support screen's "send diagnostics": '' , sending, or the agent's outcome and text
        self.diagnostics, self.diagnostics_text = "", ""
        self.entries: dict[str, Any] = {}
        self.last_field = ""  # the network form's field typed in last
        self.idle_init()  # the idle blank (sdbox.ui.panels)
        self.proxy = self._connect(bus_address)
        self.refresh()
        # A safety net: a signal missed while the bus or the agent restarts must
        # not leave a stale screen in front of the researcher (slower while blank).
        self.tick_source = GLib.timeout_add_seconds(REFRESH_S, self._tick)

    def _new_window(self) -> Any:
        window = Gtk.ApplicationWindow(application=self.app, title="sdbox")
        self._style(window)
        window.set_decorated(False)
        window.set_deletable(False)
        keys = Gtk.EventControllerKey()
        keys.connect("key-pressed", self._on_key)
        window.add_controller(keys)
        # Before the window's own bindings: GTK opens its inspector on
        # Ctrl+Shift+I / Ctrl+Shift+D wherever the debug keybinding is on (it
        # was, under Xvfb here): a second window that can restyle and poke at
        # the greeter. The kiosk swallows those keys.
        guard = Gtk.EventControllerKey()
        guard.set_propagation_phase(Gtk.PropagationPhase.CAPTURE)
        guard.connect("key-pressed", _swallow_debug_keys)
        window.add_controller(guard)
        return window

    def _style(self, window: Any) -> None:
        """The researcher's accessibility choices on ``window`` (CSS classes, see CSS)."""
        screen = self.screen
        for css, wanted in (
            ("large", screen is not None and screen.large_text),
            ("contrast", screen is not None and screen.high_contrast),
            ("blank", isinstance(screen, DeskScreen) and screen.kind == "blank"),
        ):
            if wanted:
                window.add_css_class(css)
            else:
                window.remove_css_class(css)

    def _connect(self, address: str | None) -> Any:
        if address:
            flags = (
                Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
                | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
            )
            connection = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
        else:
            connection = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
        proxy = Gio.DBusProxy.new_sync(
            connection, Gio.DBusProxyFlags.NONE, None, BUS_NAME, OBJECT_PATH, INTERFACE, None
        )
        # Every signal (a transition, a session end) and every change of the
        # agent's owner (restarted) re-reads all properties: the greeter never
        # trusts a cache to be current.
        proxy.connect("g-properties-changed", lambda *_args: self.refresh())
        proxy.connect("g-signal", self._on_signal)
        proxy.connect("notify::g-name-owner", lambda *_args: self.refresh())
        return proxy

    def _on_signal(self, _proxy: Any, _sender: Any, _name: str, _parameters: Any) -> None:
        self.refresh()  # the properties say it all (a session's end: Detail session_ended)

    def _tick(self) -> bool:
        self.check_idle()
        self.refresh()
        # redraw too: a frame the compositor failed to present (seen with
        # wlroots 0.15 on a headless output) must not stay on screen
        self.window.queue_draw()
        return True

    def refresh(self) -> None:
        """Read the agent's properties (asynchronously), then render."""

        def done(connection: Any, result: Any) -> None:
            try:
                (values,) = connection.call_finish(result).unpack()
            except GLib.Error as exc:  # the agent is not there (yet): show the start screen
                _log.info("agent unavailable: %s", exc.message)
                values = {}
            self.properties = dict(values)
            self.note_state(str(self.properties.get("State", "")))  # a card wakes the screen
            self.render()

        self.proxy.get_connection().call(
            BUS_NAME, OBJECT_PATH, "org.freedesktop.DBus.Properties", "GetAll",
            GLib.Variant("(s)", (INTERFACE,)), GLib.VariantType("(a{sv})"),
            Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None, done,
        )  # fmt: skip

    def _view(self) -> AgentView:
        def prop(name: str, default: Any) -> Any:
            return self.properties.get(name, default)

        return AgentView(
            state=prop("State", State.IDLE), projects=tuple(tuple(p) for p in prop("Projects", [])),
            tries_left=prop("TriesLeft", -1), active_project=prop("ActiveProject", ""),
            message=prop("Message", ""), problem=prop("Problem", ""),
            sensor=prop("Sensor", SensorState.UNWATCHED),
            preferences=dict(prop("Preferences", {})),
            keyboard_layouts=tuple(prop("KeyboardLayouts", [])),
            choosing_layout=self.choosing_layout,
            detail=prop("Detail", ""), detail_args=dict(prop("DetailArgs", {})),
            centre=prop("Centre", CentreState.UNWATCHED), centre_reason=prop("CentreReason", ""),
            centre_gateway=prop("CentreGateway", ""),
            card_layout=prop("CardLayout", ""),
        )  # fmt: skip

    def fit_monitor(self) -> None:
        """Cover the screen by size: cage 0.1.4 leaves the window unmaximised.

        One row short of the monitor on purpose: wlroots 0.15 (under cage
        0.1.4) tries to scan out a surface that covers the whole output
        directly, the headless/pixman output refuses it ("Basic output test
        failed") and the screen stays black or stale; a surface one row
        shorter is composited normally. ``fullscreen()`` would hit the same
        path.
        """
        monitors = Gdk.Display.get_default().get_monitors()
        if monitors.get_n_items():
            geometry = monitors.get_item(0).get_geometry()
            self.window.set_default_size(geometry.width, geometry.height - 1)

    # -- rendering -------------------------------------------------------------

    def _desk_view(self) -> DeskView:
        return DeskView(
            network=dict(self.properties.get("Network", {})),
            status=self.properties.get("NetworkStatus", NetworkStatus.UNKNOWN),
            support=dict(self.properties.get("Support", {})),
            mode=self.net_mode, typed=dict(self.typed), refusal=self.refusal, saved=self.saved,
            diagnostics=self.diagnostics, diagnostics_text=self.diagnostics_text,
        )  # fmt: skip

    def _desk_screen(self) -> DeskScreen | None:
        """The blank screen, or the network or support screen when one is open and may be."""
        if self.blanked:
            return DeskScreen("blank")
        if self.panel and self.properties.get("State", State.IDLE) not in _PANEL_STATES:
            self.panel = ""  # a session started (or is starting): its screen wins
        if not self.panel:
            return None
        view = self._desk_view()
        screen = network_screen if self.panel == "network" else support_screen
        agent = screen_for(self._view(), self._)  # the kept look (larger text, contrast)
        return replace(
            screen(view, self._), large_text=agent.large_text, high_contrast=agent.high_contrast
        )

    def render(self) -> None:
        """Rebuild the window for the agent's current state."""
        desk = self._desk_screen()
        if desk is not None:
            if desk != self.screen:
                self.screen = desk
                self._show(self._desk_box(desk), desk.kind)
            return
        screen = screen_for(self._view(), self._)
        if screen == self.screen:
            return
        self.screen = screen
        _ = self._
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=self.px(18))
        box.set_margin_top(self.px(64))
        box.set_margin_start(self.px(96))
        box.set_margin_end(self.px(96))
        box.append(self._label(_("Secure data access"), "brand"))
        title = self._label(screen.title, "title")
        if screen.alert:
            title.add_css_class("alert")
        box.append(title)
        if screen.body:
            box.append(self._label(screen.body, "body"))
        if screen.hint:
            box.append(self._label(screen.hint, "hint"))
        if screen.kind in ("connecting", "enrolling"):  # the centre or the card is working
            spinner = Gtk.Spinner()
            spinner.start()
            box.append(spinner)
        if screen.projects and screen.kind in ("picker", "ended", "running", "enrolled"):
            box.append(self._picker(screen))
        if screen.options:
            box.append(self._options(screen))
        if screen.pin_entry:
            entry = Gtk.PasswordEntry()
            entry.set_show_peek_icon(False)
            entry.props.placeholder_text = _("PIN")
            entry.connect("activate", self._on_pin)
            box.append(entry)
            _focus_once(entry)
        if screen.footer:
            spacer = Gtk.Box()
            spacer.set_vexpand(True)
            box.append(spacer)
            footer = self._label(screen.footer, "footer")
            footer.set_margin_bottom(self.px(32))
            box.append(footer)
        self._show(box, screen.kind)

    def _show(self, box: Any, kind: str) -> None:
        """Put ``box`` on screen (a new window each time, see below) and report it."""
        # Each screen is a new window, presented before the old one goes: with
        # cage 0.1.4 / wlroots 0.15 a mapped window's later frames are not
        # always composited (the output commit fails and the old screen stays
        # up, seen on the headless output), while a newly mapped window
        # damages the whole output and always shows. A stale screen in front
        # of the researcher is worse than a rebuilt window.
        if self.window.get_mapped():
            old, self.window = self.window, self._new_window()
            self.window.set_child(box)
            self.fit_monitor()
            self.window.present()
            old.destroy()
        else:
            self._style(self.window)
            self.window.set_child(box)
        _report_screen(kind, box)

    @staticmethod
    def _label(text: str, css: str) -> Any:
        label = Gtk.Label(label=text, xalign=0, wrap=True)
        label.add_css_class(css)
        return label

    def _picker(self, screen: Screen) -> Any:
        listbox = Gtk.ListBox()
        listbox.set_selection_mode(Gtk.SelectionMode.SINGLE)
        for item in screen.projects:
            row = Gtk.ListBoxRow()
            row.project_id = item.id
            row.set_sensitive(item.usable)
            column = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
            column.append(self._label(item.name, "project"))
            column.append(self._label(item.detail, "detail"))
            row.set_child(column)
            listbox.append(row)
        listbox.connect("row-activated", self._on_row)
        first = listbox.get_row_at_index(0)
        if first is not None and screen.kind != "running":
            listbox.select_row(first)
            _focus_once(first)
        return listbox

    def _options(self, screen: Screen) -> Any:
        """The keyboard layout chooser: one row per layout, the one in use selected."""
        listbox = Gtk.ListBox()
        listbox.set_selection_mode(Gtk.SelectionMode.SINGLE)
        rows = []
        for item in screen.options:
            row = Gtk.ListBoxRow()
            row.layout = item.id
            column = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=2)
            column.append(self._label(item.name, "project"))
            if item.detail:
                column.append(self._label(item.detail, "detail"))
            row.set_child(column)
            listbox.append(row)
            rows.append(row)
        in_use = [row for row, item in zip(rows, screen.options, strict=True) if item.detail]
        chosen = (in_use or rows or [None])[0]
        listbox.connect("row-activated", self._on_layout)
        if chosen is not None:
            listbox.select_row(chosen)
            _focus_once(chosen)
        return listbox

    # -- actions ---------------------------------------------------------------

    def _call(
        self, method: str, args: Any = None, then: Any = None, refused: Any = None
    ) -> None:
        def done(proxy: Any, result: Any) -> None:
            try:
                proxy.call_finish(result)
            except GLib.Error as exc:  # the agent said no; the next state change shows why
                _log.info(
                    "%s refused: %s", method, Gio.DBusError.get_remote_error(exc) or exc.message
                )
                if refused is not None:
                    # "GDBus.Error:org.sdbox.Agent1.Error.CODE: message" (PyGObject hands a
                    # copy of the error, so Gio.DBusError.strip_remote_error cannot strip it)
                    message = str(exc.message)
                    if message.startswith("GDBus.Error:"):
                        message = message.partition(": ")[2]
                    refused(message)
                return
            if then is not None:
                then()

        self.proxy.call(method, args, Gio.DBusCallFlags.NONE, CALL_TIMEOUT_MS, None, done)

    def _on_layout(self, _listbox: Any, row: Any) -> None:
        layout = str(row.layout)

        def kept() -> None:
            self.choosing_layout = False
            if layout != os.environ.get("XKB_DEFAULT_LAYOUT", XKB_DEFAULT):
                # cage applies a layout only at start: quit, and the unit starts both again
                _log.info("keyboard layout %s chosen: restarting to apply it", layout)
                self.app.quit()
                return
            self.render()

        self._call(
            "SetPreference", GLib.Variant("(ss)", (Preference.KEYBOARD_LAYOUT.value, layout)), kept
        )

    def _on_row(self, _listbox: Any, row: Any) -> None:
        method = (
            "Switch"
            if self.screen is not None and self.screen.kind == "running"
            else "ChooseProject"
        )
        self._call(method, GLib.Variant("(s)", (row.project_id,)))

    def _on_pin(self, entry: Any) -> None:
        pin = entry.get_text()
        entry.set_text("")  # the PIN leaves the widget at once and is never logged
        self._call("SubmitPin", GLib.Variant("(s)", (pin,)))

    def _on_key(self, _controller: Any, keyval: int, _code: int, _state: Any) -> bool:
        if self.wake():
            return True  # the key that wakes the screen does nothing else
        if keyval in _PANEL_KEYS:
            if self.properties.get("State", State.IDLE) in _PANEL_STATES:
                self._open_panel(_PANEL_KEYS[keyval])
            return True
        if self.panel and keyval == Gdk.KEY_Escape:
            self._open_panel(self.panel)  # closes it: back to the agent's screen
            return True
        if self.panel == "network" and keyval in (Gdk.KEY_Up, Gdk.KEY_Down):
            self.step_mode(-1 if keyval == Gdk.KEY_Up else 1)
            return True
        if self.panel == "network" and keyval in (Gdk.KEY_Return, Gdk.KEY_KP_Enter):
            self._save_network()  # no field has the focus (DHCP): Enter still saves
            return True
        if self.panel == "support" and keyval in (Gdk.KEY_Return, Gdk.KEY_KP_Enter):
            self.send_diagnostics()
            return True
        if self.panel:
            return False  # the form's own keys (Tab, typing; Enter in a field saves)
        if keyval == Gdk.KEY_Escape and self.choosing_layout:
            self.choosing_layout = False  # the greeter's own screen: the agent is not asked
            self.render()
            return True
        if keyval == Gdk.KEY_Escape:
            self._call("Cancel")
            return True
        if keyval in (Gdk.KEY_F3, Gdk.KEY_F4) and self.screen is not None:
            key, now = (
                (Preference.LARGE_TEXT, self.screen.large_text)
                if keyval == Gdk.KEY_F3
                else (Preference.HIGH_CONTRAST, self.screen.high_contrast)
            )
            # kept by the agent; its PropertiesChanged brings the new look
            self._call("SetPreference", GLib.Variant("(ss)", (key.value, "0" if now else "1")))
            return True
        if keyval == Gdk.KEY_F6 and self.screen is not None:
            if self.screen.kind in ("picker", "enrolled"):  # remote fingerprint enrolment
                self._call("StartEnrolment")
            return True
        if keyval == Gdk.KEY_F2 and self.screen is not None:
            if self.screen.kind not in ("connecting", "running"):
                self.choosing_layout = True
                self.render()
            return True
        return False


def run(bus_address: str | None, language: str) -> int:
    """Run the greeter until its window is closed (never, on the box)."""
    app = Gtk.Application(application_id="org.sdbox.Greeter", flags=Gio.ApplicationFlags.NON_UNIQUE)

    def activate(application: Any) -> None:
        greeter = Greeter(application, bus_address, language)
        greeter.fit_monitor()
        greeter.window.present()

    app.connect("activate", activate)
    return int(app.run([]))
