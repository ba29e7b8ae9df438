"""Keyboard layouts: the box's XKB layout, and what each session client is told of it.

A layout is named as XKB names it (``fr``, ``de``, ``gb``, ``us``, ``ch``...):
cage takes it as ``XKB_DEFAULT_LAYOUT``, so the greeter and Xwayland (the
RDP client's display) map keys with it. The session is another matter:

- RDP sends scancodes (the key's position), and the server turns them into
  characters with the session's own layout, which a Windows server picks
  from the layout the client announces at connection (the client core data's
  ``keyboardLayout``): FreeRDP announces ``/kbd:layout:0x<KLID>``, the Windows
  keyboard layout identifier of the box's XKB layout (:data:`RDP_LAYOUTS`).
- SPICE sends scancodes too, and announces nothing: the guest's own layout
  decides, and is the bubble's administrator's to set.

A layout is usable on a box when XKB knows it (its rules list) and RDP has
an identifier for it; :func:`layout_problem` says why not, in words.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# The XKB rules' layout list (package xkb-data), the one cage and Xwayland read.
XKB_RULES = Path("/usr/share/X11/xkb/rules/evdev.lst")

# XKB layout -> the Windows keyboard layout identifier FreeRDP announces (the
# names FreeRDP 3's `/list:kbd` gives them). Austria types on the German layout.
RDP_LAYOUTS: dict[str, int] = {
    "us": 0x00000409,  # United States - English
    "gb": 0x00000809,  # United Kingdom
    "ie": 0x00001809,  # Irish
    "fr": 0x0000040C,  # French
    "be": 0x0000080C,  # Belgian French
    "ch": 0x00000807,  # Swiss German
    "de": 0x00000407,  # German
    "at": 0x00000407,  # German (Austria uses it)
    "nl": 0x00000413,  # Dutch
    "it": 0x00000410,  # Italian
    "es": 0x0000040A,  # Spanish
    "pt": 0x00000816,  # Portuguese
    "dk": 0x00000406,  # Danish
    "no": 0x00000414,  # Norwegian
    "se": 0x0000041D,  # Swedish
    "fi": 0x0000040B,  # Finnish
    "pl": 0x00000415,  # Polish (Programmers): what XKB's "pl" is
    "cz": 0x00000405,  # Czech
    "hu": 0x0000040E,  # Hungarian
}

_NAME = re.compile(r"[a-z]{2,3}")


@functools.cache
def xkb_layouts(rules: Path = XKB_RULES) -> dict[str, str]:
    """The layouts XKB knows: name -> description (the ``! layout`` section of its list)."""
    layouts: dict[str, str] = {}
    section = ""
    for line in rules.read_text(encoding="utf-8").splitlines():
        if line.startswith("!"):
            section = line[1:].strip()
        elif section == "layout" and line.strip():
            name, _, description = line.strip().partition(" ")
            layouts[name] = description.strip()
    return layouts


def layout_problem(name: str, rules: Path = XKB_RULES) -> str | None:
    """Why ``name`` cannot be the box's layout (None: it can)."""
    if not _NAME.fullmatch(name):
        return f"{name!r} is not an XKB layout name (two or three lower-case letters: fr, de, gb)"
    try:
        known = xkb_layouts(rules)
    except OSError as exc:
        return f"the XKB layout list {rules} cannot be read ({exc.strerror}): is xkb-data installed?"
    if name not in known:
        return f"{name!r} is not a layout XKB knows (see {rules})"
    if name not in RDP_LAYOUTS:
        return (
            f"{name!r} ({known[name]}) has no RDP keyboard layout here; "
            f"use one of {', '.join(sorted(RDP_LAYOUTS))}"
        )
    return None


def rdp_layout_argument(name: str) -> str:
    """FreeRDP's argument announcing ``name`` to the server (``/kbd:layout:0x0000040C``)."""
    return f"/kbd:layout:0x{RDP_LAYOUTS[name]:08X}"
