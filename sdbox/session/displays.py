"""The box's screens as the session clients should know them: how many, how dense.

- **How many**: the DRM connectors the kernel reports ``connected``
  (``/sys/class/drm/card*-*/status``). cage extends its layout over every
  connected output, so that is the number of monitors a session spans. Read
  at each session's start: a second screen plugged in at the picker counts.
- **How dense**: the generation's ``[display] scale`` (a percentage, in
  ``/etc/sdbox/generation.toml``, which the image writes): a property of the
  panel the generation ships with, not something to guess from EDID sizes
  that monitors often misreport.

Files only (no compositor protocol): the agent runs outside cage's session,
and wlroots offers no output query that Debian 12 packages (no wlr-randr).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from sdbox.session.spec import MAX_MONITORS, MAX_SCALE, MIN_SCALE

DRM = Path("/sys/class/drm")
GENERATION_FILE = Path("/etc/sdbox/generation.toml")


def connected_outputs(drm: Path = DRM) -> int:
    """How many screens are connected (at least 1, at most what a session takes).

    A box whose kernel shows no connector (a headless test machine, a
    virtual GPU without DRM) still has the one output its compositor made.
    """
    count = 0
    for status in drm.glob("card*-*/status"):
        try:
            if status.read_text(encoding="ascii").strip() == "connected":
                count += 1
        except (OSError, UnicodeDecodeError):
            continue  # a connector going away while read
    return min(max(count, 1), MAX_MONITORS)


def generation_scale(path: Path = GENERATION_FILE) -> int:
    """The generation's ``[display] scale`` in percent (100 when absent or unreadable).

    The image build validated the profile (sdbox.bootimage.generations); a
    value outside the range here means a hand-edited file, and 100 is safe.
    """
    try:
        display = tomllib.loads(path.read_text(encoding="utf-8")).get("display", {})
        scale = display.get("scale", 100) if isinstance(display, dict) else 100
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return 100
    if isinstance(scale, bool) or not isinstance(scale, int):
        return 100
    return scale if MIN_SCALE <= scale <= MAX_SCALE else 100
