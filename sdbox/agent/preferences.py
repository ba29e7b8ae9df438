"""What the researcher chose on the greeter, kept by the agent on its state directory.

The keyboard layout (one of ``[keyboard] choices``; the box's ``[keyboard]
layout`` until someone picks another), large text and high contrast. The
greeter asks for a change (D-Bus ``SetPreference``); the agent validates it,
writes ``preferences.json`` atomically and, for the kiosk compositor,
``greeter.env`` (``XKB_DEFAULT_LAYOUT=de``), which the greeter's unit reads
when it (re)starts cage: cage takes its keymap once, at start. Nothing here
is secret.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from sdbox.agent.api import Preference

_log = logging.getLogger("sdbox.agent.preferences")

FILE = "preferences.json"
GREETER_ENV = "greeter.env"  # read by sdbox-greeter.service (EnvironmentFile=)
_SWITCHES = (Preference.LARGE_TEXT, Preference.HIGH_CONTRAST)


class PreferenceError(ValueError):
    """A value the agent does not accept for a preference, with the reason."""


class Preferences:
    """The researcher's choices: validated, persisted, and the box's defaults until then."""

    def __init__(
        self, directory: Path | None, *, layout: str, choices: tuple[str, ...]
    ) -> None:
        self.directory = directory  # None: kept in memory only (tests, `sdbox agent` dry runs)
        self.default_layout = layout
        self.choices = choices if layout in choices else (layout, *choices)
        self._values: dict[str, str] = {}
        self._load()

    # -- reading ---------------------------------------------------------------------

    @property
    def keyboard_layout(self) -> str:
        """The layout the greeter and the sessions use."""
        return self._values.get(Preference.KEYBOARD_LAYOUT, self.default_layout)

    def values(self) -> dict[str, str]:
        """Every preference with its current value (D-Bus ``Preferences``)."""
        current = {key.value: "0" for key in _SWITCHES}
        current.update(self._values)
        current[Preference.KEYBOARD_LAYOUT.value] = self.keyboard_layout
        return current

    def problem(self, key: str, value: str) -> str | None:
        """Why ``value`` cannot be ``key`` (None: it can)."""
        try:
            preference = Preference(key)
        except ValueError:
            return f"{key!r} is not a preference ({', '.join(p.value for p in Preference)})"
        if preference is Preference.KEYBOARD_LAYOUT and value not in self.choices:
            return f"{value!r} is not one of this box's layouts ({', '.join(self.choices)})"
        if preference in _SWITCHES and value not in ("0", "1"):
            return f"{key} is 0 or 1, not {value!r}"
        return None

    # -- changing ----------------------------------------------------------------------

    def set(self, key: str, value: str) -> bool:
        """Set ``key`` to ``value`` and persist it; whether anything changed."""
        problem = self.problem(key, value)
        if problem is not None:
            raise PreferenceError(problem)
        if self.values().get(key) == value:
            return False
        self._values[key] = value
        self._save()
        return True

    def _load(self) -> None:
        if self.directory is None:
            return
        path = self.directory / FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            stored = {}
        except (OSError, ValueError) as exc:
            _log.warning("ignoring %s: %s", path, exc)
            stored = {}
        if not isinstance(stored, Mapping):
            stored = {}
        for key, value in stored.items():
            problem = self.problem(str(key), str(value))
            if problem is None:
                self._values[str(key)] = str(value)
            else:  # the box's configuration changed since: its defaults hold
                _log.warning("ignoring the stored preference %s: %s", key, problem)
        self._write_env()

    def _save(self) -> None:
        if self.directory is None:
            return
        _atomic_write(self.directory / FILE, json.dumps(self._values, sort_keys=True) + "\n")
        self._write_env()

    def _write_env(self) -> None:
        if self.directory is None:
            return
        try:
            _atomic_write(
                self.directory / GREETER_ENV, f"XKB_DEFAULT_LAYOUT={self.keyboard_layout}\n"
            )
        except OSError as exc:  # the greeter then starts with cage's default layout
            _log.warning("cannot write %s: %s", self.directory / GREETER_ENV, exc)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    partial.chmod(0o644)  # nothing secret; the greeter's unit reads greeter.env as root anyway
    partial.replace(path)
