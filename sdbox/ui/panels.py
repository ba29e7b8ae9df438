"""The GTK side of the screens without a card (sdbox.ui.desk): the network form and support lines.

Mixed into :class:`sdbox.ui.app.Greeter`, which owns the window, the
agent's proxy and the rendering loop; kept apart so that the greeter's
module stays about the agent's screens. The passphrase entry's text goes
to the agent once (``SetNetwork``) and is cleared from the widget at once;
it is never a label, so it never reaches the tests' screen file.
"""

from __future__ import annotations

import logging
import os
import re
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gtk", "4.0")
from gi.repository import Gio, GLib, Gtk  # noqa: E402  (after require_version)

from sdbox.agent.api import DiagnosticsOutcome, State  # noqa: E402
from sdbox.ui import BLANK_VARIABLE, SCALE_VARIABLE  # noqa: E402
from sdbox.ui.desk import SENDING, DeskScreen  # noqa: E402

_log = logging.getLogger("sdbox.ui")

# The idle blank: the generation's [power] blank_after_s (the image writes the profile to
# /etc/sdbox/generation.toml), or BLANK_VARIABLE (tests, the benchmark); 0 never blanks.
GENERATION_FILE = Path("/etc/sdbox/generation.toml")
DEFAULT_BLANK_AFTER_S = 300
REFRESH_S = 2  # the safety-net refresh (sdbox.ui.app), and while blank:
BLANK_REFRESH_S = 60  # signals still wake the greeter; the net is for missed ones
# SendDiagnostics runs `sdbox fleet diagnostics` (up to 60 s: two HTTP tries and `ip`)
DIAGNOSTICS_TIMEOUT_MS = 90_000
_BLANK_STATES = frozenset({State.IDLE, State.PICKER})  # never over a prompt or a session


def blank_after(generation: Path = GENERATION_FILE) -> int:
    """Seconds of idleness before the screen blanks (0: never)."""
    value = os.environ.get(BLANK_VARIABLE)
    if value is not None and value.strip().isdigit():
        return int(value)
    try:
        power = tomllib.loads(generation.read_text(encoding="utf-8")).get("power", {})
        seconds = power.get("blank_after_s", DEFAULT_BLANK_AFTER_S)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return DEFAULT_BLANK_AFTER_S
    return seconds if isinstance(seconds, int) and seconds >= 0 else DEFAULT_BLANK_AFTER_S


def display_scale(generation: Path = GENERATION_FILE) -> int:
    """The screen's density in percent: the generation's ``[display] scale`` (100 if none).

    cage 0.1.4 cannot give its output a scale (no option, no output-management
    protocol) and GTK 4 reads ``GDK_SCALE`` on X11 only, so the greeter sizes
    itself: its CSS and margins are multiplied by this (:func:`scaled_css`).
    """
    value = os.environ.get(SCALE_VARIABLE)
    if value is None:
        try:
            display = tomllib.loads(generation.read_text(encoding="utf-8")).get("display", {})
            scale = display.get("scale", 100) if isinstance(display, dict) else 100
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return 100
    else:
        scale = int(value) if value.strip().isdigit() else 100
    if isinstance(scale, bool) or not isinstance(scale, int) or not 100 <= scale <= 500:
        return 100
    return scale


_PIXELS = re.compile(rb"(\d+)px")


def scaled_css(css: bytes, scale: int) -> bytes:
    """``css`` with every length in pixels multiplied by ``scale`` percent."""
    if scale == 100:
        return css
    return _PIXELS.sub(lambda m: b"%dpx" % round(int(m[1]) * scale / 100), css)


def label(text: str, css: str) -> Any:
    """A wrapping, left-aligned label with a CSS class."""
    widget = Gtk.Label(label=text, xalign=0, wrap=True)
    widget.add_css_class(css)
    return widget


def focus_once(widget: Any) -> None:
    """Give ``widget`` the focus once the window is built.

    Not ``idle_add(widget.grab_focus)``: grab_focus returns True, which
    keeps an idle source alive, so the focus would be taken back for ever
    (arrow keys would seem dead) and the greeter would spin a core.
    """

    def grab() -> bool:
        widget.grab_focus()
        return False  # GLib.SOURCE_REMOVE: run once

    GLib.idle_add(grab)


class DeskPanels:
    """The network (F5) and support (F1) screens' widgets and actions."""

    _: Callable[[str], str]
    screen: Any
    panel: str
    net_mode: str
    typed: dict[str, str]
    secret: str
    refusal: str
    saved: bool
    choosing_layout: bool
    entries: dict[str, Any]
    scale: int  # the screen's density in percent (display_scale)

    def px(self, pixels: int) -> int:
        """A length in pixels at the screen's density (margins, spacing, widths)."""
        return round(pixels * self.scale / 100)
    last_field: str
    properties: dict[str, Any]
    tick_source: int
    blanked: bool
    blank_after_s: int
    last_activity: float
    state_seen: str
    diagnostics: str
    diagnostics_text: str
    proxy: Any

    def _tick(self) -> bool:  # the greeter's
        raise NotImplementedError

    # -- the idle blank ------------------------------------------------------------------

    def idle_init(self) -> None:
        self.blanked = False
        self.blank_after_s = blank_after()
        self.last_activity = time.monotonic()
        self.state_seen = ""

    def _retick(self, seconds: int) -> None:
        GLib.source_remove(self.tick_source)
        self.tick_source = GLib.timeout_add_seconds(seconds, self._tick)

    def check_idle(self) -> None:
        """Blank the screen once it has been idle long enough at the start screen or the picker."""
        if self.blanked or self.blank_after_s <= 0 or self.panel or self.choosing_layout:
            return
        if self.properties.get("State", State.IDLE) not in _BLANK_STATES:
            return
        if time.monotonic() - self.last_activity >= self.blank_after_s:
            self.blanked = True
            self._retick(BLANK_REFRESH_S)  # fewer wake-ups while nobody looks
            self.render()

    def wake(self) -> bool:
        """Activity (a key, a new state): wake the screen; whether it was blank."""
        self.last_activity = time.monotonic()
        if not self.blanked:
            return False
        self.blanked = False
        self._retick(REFRESH_S)
        self.render()
        return True

    def note_state(self, state: str) -> None:
        """The agent's state as last read: a change (a card in or out) is activity."""
        if state != self.state_seen:
            self.state_seen = state
            self.wake()

    def render(self) -> None:  # the greeter's
        raise NotImplementedError

    def refresh(self) -> None:  # the greeter's
        raise NotImplementedError

    def _call(
        self, method: str, args: Any = None, then: Any = None, refused: Any = None
    ) -> None:  # the greeter's
        raise NotImplementedError

    def _desk_box(self, screen: DeskScreen) -> Any:
        box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=self.px(14))
        if screen.kind == "blank":
            return box  # nothing but the window's black (CSS: window.blank)
        box.set_margin_top(self.px(48))
        box.set_margin_start(self.px(96))
        box.set_margin_end(self.px(96))
        box.append(label(self._("Secure data access"), "brand"))
        box.append(label(screen.title, "title"))
        if screen.body:
            body = label(screen.body, "body")
            if screen.alert:
                body.add_css_class("field-problem")
            box.append(body)
        if screen.kind == "network":
            box.append(self._modes(screen))
            self.entries = {}
            first_problem = None
            for item in screen.fields:
                box.append(label(item.label, "field"))
                entry = Gtk.PasswordEntry() if item.secret else Gtk.Entry()
                if item.secret:
                    entry.set_show_peek_icon(False)
                else:
                    entry.set_text(item.value)
                entry.connect("changed", self._on_typed, item.key, item.secret)
                entry.connect("activate", lambda _entry: self._save_network())
                self.entries[item.key] = entry
                box.append(entry)
                if item.problem:
                    box.append(label(item.problem, "field-problem"))
                    first_problem = first_problem or entry
            first = (
                first_problem
                or self.entries.get(self.last_field)
                or next(iter(self.entries.values()), None)
            )
            if first is not None:
                focus_once(first)
        for key, value in screen.lines:
            row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=self.px(24))
            name = label(key, "support-key")
            name.set_size_request(self.px(220), -1)
            row.append(name)
            row.append(label(value, "support-value"))
            box.append(row)
        box.append(label(screen.hint, "hint"))
        return box

    def _modes(self, screen: DeskScreen) -> Any:
        """The kinds of network, one row each, the chosen one selected.

        Not focusable: Up and Down change the kind from anywhere on the screen
        (:meth:`step_mode`), so that Tab goes through the fields only (in a
        focusable list, Tab moved the selection to the next kind).
        """
        listbox = Gtk.ListBox()
        listbox.set_selection_mode(Gtk.SelectionMode.SINGLE)
        listbox.set_can_focus(False)
        for mode, name in screen.modes:
            row = Gtk.ListBoxRow()
            row.set_can_focus(False)
            row.set_child(label(name, "project"))
            listbox.append(row)
            if mode == screen.mode:
                listbox.select_row(row)
        return listbox

    def step_mode(self, step: int) -> None:
        """The next (+1) or previous (-1) kind of network, its fields shown."""
        screen = self.screen
        if not isinstance(screen, DeskScreen) or screen.kind != "network" or not screen.modes:
            return
        modes = [mode for mode, _name in screen.modes]
        index = modes.index(screen.mode) if screen.mode in modes else 0
        self.net_mode = modes[(index + step) % len(modes)]
        self.refusal, self.saved = "", False

        def later() -> bool:
            # not from inside the key handler: the new window would get the key too
            self.render()
            return False

        GLib.idle_add(later)

    def _on_typed(self, entry: Any, key: str, secret: bool) -> None:
        self.last_field = key  # a rebuilt screen gives this field the focus back
        if secret:
            self.secret = entry.get_text()  # kept for the one SetNetwork, never reported
        else:
            self.typed[key] = entry.get_text()

    def _save_network(self) -> None:
        screen = self.screen
        if not isinstance(screen, DeskScreen) or screen.kind != "network":
            return
        values = {"mode": screen.mode}
        for item in screen.fields:
            widget = self.entries.get(item.key)
            values[item.key] = widget.get_text() if widget is not None else ""

        def kept() -> None:
            self.typed, self.secret, self.refusal, self.saved = {}, "", "", True
            self.refresh()  # the agent's Network as kept fills the fields again

        def refused(message: str) -> None:
            self.refusal, self.saved = message, False
            self.render()

        self._call("SetNetwork", GLib.Variant("(a{ss})", (values,)), kept, refused)
        for widget in self.entries.values():  # the passphrase leaves the widgets at once
            if isinstance(widget, Gtk.PasswordEntry):
                widget.set_text("")
        values.clear()

    def send_diagnostics(self) -> None:
        """The support screen's Enter: the agent uploads the box's diagnostics; the screen says
        "sending", then what became of it (the agent's outcome code)."""
        if self.diagnostics == SENDING:
            return
        self.diagnostics, self.diagnostics_text = SENDING, ""
        self.render()

        def done(proxy: Any, result: Any) -> None:
            try:
                ((outcome, text),) = proxy.call_finish(result).unpack()
            except GLib.Error as exc:  # an agent without the method, or one that went away
                _log.info("SendDiagnostics failed: %s", exc.message)
                outcome, text = DiagnosticsOutcome.FAILED.value, str(exc.message)
            self.diagnostics, self.diagnostics_text = str(outcome), str(text)
            self.render()

        self.proxy.call(
            "SendDiagnostics", None, Gio.DBusCallFlags.NONE, DIAGNOSTICS_TIMEOUT_MS, None, done
        )

    def _open_panel(self, panel: str) -> None:
        self.panel = "" if self.panel == panel else panel
        self.net_mode, self.typed, self.secret, self.refusal, self.saved = "", {}, "", "", False
        self.diagnostics, self.diagnostics_text = "", ""
        self.choosing_layout = False
        self.render()

