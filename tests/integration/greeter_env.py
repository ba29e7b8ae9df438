"""The greeter where it really runs: cage (headless wlroots) as the greeter's user, screenshots with grim."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import sdbox
from sdbox.ui import SCREEN_FILE_VARIABLE
from tests.integration.session_servers import parse_ppm, stop

GREETER_USER = "sdbox-greeter"
# The greeter unit's interpreter (debian/sdbox.sdbox-greeter.service): Debian's
# own, which sees python3-gi, and which the greeter's user can run wherever
# the checkout is (a venv inside a 0700 checkout is out of its reach).
GREETER_PYTHON = "/usr/bin/python3"
REFERENCES = Path(__file__).parent / "greeter-references"

# How a screenshot is compared with its reference.
#
# A share of *all* pixels cannot tell screens apart: text covers a few
# per cent of the screen, so a blank background, or the previous screen,
# passed for most references (issue 24). The comparison works line by line
# instead. Strokes are the pixels where the picture changes (a pixel differs
# from its right or lower neighbour by more than CHANNEL_TOLERANCE in either
# image): the outlines of glyphs, boxes and the spinner, not the inside of a
# flat fill. A line is a run of screen rows with strokes or differences in
# it. In each line, the pixels that differ between the two images (again
# above CHANNEL_TOLERANCE, which absorbs antialiasing) are counted against
# that line's strokes; the screen matches when no line has more than
# MAX_LINE_DIFFERENT of them. A word changed in one line then weighs against
# that line's strokes, not against the whole screen: "4 tries left" against
# "5 tries left" is about 9 % of its line, a different sentence 40 % and
# more, a blank screen 100 % and more (differences can outnumber strokes).
# Calibrated on this machine (cage 0.1.4, pixman, GTK 4.8): captures of the
# same state differ by 0 % on every line, except where the window comes out
# one column narrower (the selected row's edge moves: 0.9 % of its line).
CHANNEL_TOLERANCE = 48
MAX_LINE_DIFFERENT = 0.03
# What is on screen but not the greeter's to decide, left out of the
# comparison (top, bottom, left, right; the words there are still checked
# through the greeter's screen file): the spinner turns, and the agent's
# details name the time of the run. A reference retaken after a layout
# change needs these rectangles measured again.
VOLATILE: dict[str, tuple[tuple[int, int, int, int], ...]] = {
    "connecting": ((226, 252, 620, 660),),  # the spinner
    "certificate-revoked": ((150, 180, 730, 922),),  # "2026-12-06 19:34" (revoked on)
    "clock-wrong": ((150, 180, 306, 498), (150, 180, 782, 976)),  # the clock, the CRL's time
    # the PIN entry's caret, caught at any point of its blink (GTK fades it in and out)
    "pin-fr": ((236, 262, 100, 112),),
    "pin-de": ((236, 262, 100, 112),),
    "pin-only": ((236, 262, 100, 112),),
    "enrolment-pin": ((236, 262, 100, 112),),
    "enrolment-code": ((150, 180, 90, 190),),  # the code: drawn anew for each request
}


@dataclass(frozen=True)
class Comparison:
    """How far a screenshot is from a reference: its worst line."""

    worst: float  # that line's differing pixels per stroke pixel
    rows: tuple[int, int]  # where that line is (first row, row after the last)

    @property
    def matches(self) -> bool:
        """Whether the screenshot shows the reference's screen."""
        return self.worst <= MAX_LINE_DIFFERENT

    def __str__(self) -> str:
        if self.rows == (0, 0):
            return "no line" if self.worst == 0 else "the size"
        return f"{self.worst:.1%} of the strokes of rows {self.rows[0]}-{self.rows[1] - 1}"


def _packed(image: np.ndarray) -> np.ndarray:
    """One integer per RGB pixel, to find the identical ones fast."""
    rgb = image.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _far(a: np.ndarray, b: np.ndarray, packed_a: np.ndarray, packed_b: np.ndarray) -> np.ndarray:
    """Where two (h, w, 3) images differ by more than CHANNEL_TOLERANCE in a channel."""
    # Only the pixels that are not identical are looked at closely: most are
    # the same background, and the reference test compares 15 x 14 pairs.
    unequal = np.flatnonzero(packed_a != packed_b)
    gap = np.abs(
        a.reshape(-1, 3)[unequal].astype(np.int16) - b.reshape(-1, 3)[unequal].astype(np.int16)
    )
    far = np.zeros(a.shape[:2], dtype=bool)
    far.flat[unequal[gap.max(axis=1, initial=0) > CHANNEL_TOLERANCE]] = True
    return far


@dataclass(frozen=True)
class Picture:
    """A screen prepared for :func:`compare` (kept, to compare it many times)."""

    pixels: np.ndarray  # (h, w, 3) without the output's last row and column
    packed: np.ndarray  # (h, w): one integer per pixel
    strokes: np.ndarray  # pixels that differ from a neighbour (right or below)

    @classmethod
    def of(cls, image: np.ndarray) -> Picture:
        """``image`` (a capture or a reference, as the output shows it) prepared for comparison."""
        # The output's last row (and column, in some runs) lies outside the
        # greeter's window, which is one row short on purpose
        # (app.fit_monitor): the compositor leaves it black or not, which is
        # not the greeter's doing.
        pixels = np.ascontiguousarray(image[:-1, :-1])
        packed = _packed(pixels)
        across = _far(pixels[:, 1:], pixels[:, :-1], packed[:, 1:], packed[:, :-1])
        down = _far(pixels[1:], pixels[:-1], packed[1:], packed[:-1])
        strokes = np.zeros(pixels.shape[:2], dtype=bool)
        strokes[:, :-1] |= across
        strokes[:, 1:] |= across
        strokes[:-1] |= down
        strokes[1:] |= down
        return cls(pixels, packed, strokes)


def _lines(rows: np.ndarray) -> list[tuple[int, int]]:
    """Runs of True in ``rows``, as (first, after last)."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], rows.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def compare(
    shot: np.ndarray | Picture,
    reference: np.ndarray | Picture,
    volatile: Iterable[tuple[int, int, int, int]] = (),
) -> Comparison:
    """Compare two screens line by line (see MAX_LINE_DIFFERENT)."""
    a = shot if isinstance(shot, Picture) else Picture.of(shot)
    b = reference if isinstance(reference, Picture) else Picture.of(reference)
    if a.pixels.shape != b.pixels.shape:
        return Comparison(float("inf"), (0, 0))
    different = _far(a.pixels, b.pixels, a.packed, b.packed)
    strokes = a.strokes | b.strokes
    for top, bottom, left, right in volatile:
        different[top:bottom, left:right] = False
        strokes[top:bottom, left:right] = False
    worst = Comparison(0.0, (0, 0))
    for top, bottom in _lines((different | strokes).any(axis=1)):
        share = different[top:bottom].sum() / max(int(strokes[top:bottom].sum()), 1)
        if share > worst.worst:
            worst = Comparison(float(share), (top, bottom))
    return worst


def missing() -> str | None:
    """Why the greeter cannot run here, or None."""
    for tool in ("cage", "grim", "convert", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make setup)"
    try:
        pwd.getpwnam(GREETER_USER)
    except KeyError:
        return f"the {GREETER_USER} user does not exist (make setup)"
    return None


def stage_package(base: Path) -> Path:
    """A copy of the ``sdbox`` package under ``base`` that the greeter's user can read.

    The checkout may be private (root's home, ``mktemp -d``: mode 0700), and
    the greeter runs as its own user: on the box it reads the installed
    package, here this copy. Returns the directory to put on its ``PYTHONPATH``.
    """
    code = base / "code"
    shutil.copytree(
        Path(sdbox.__file__).parent,
        code / "sdbox",
        ignore=shutil.ignore_patterns("__pycache__"),
        copy_function=shutil.copyfile,  # not the checkout's modes: a 077 umask made them private
    )
    for path in (code, *code.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return code


@dataclass
class Kiosk:
    """A running cage with the greeter in it."""

    process: subprocess.Popen[bytes]
    runtime: Path

    def _as_greeter(self, *argv: str) -> subprocess.CompletedProcess[bytes]:
        env = [
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            f"XDG_RUNTIME_DIR={self.runtime}",
            "WAYLAND_DISPLAY=wayland-0",
        ]
        return subprocess.run(
            ["runuser", "-u", GREETER_USER, "--", *env, *argv],
            capture_output=True,
            timeout=30,
            check=False,
        )

    def pixels(self) -> np.ndarray:
        """The screen, as an (h, w, 3) array."""
        png = self._as_greeter("grim", "-")
        if png.returncode != 0:
            raise RuntimeError(f"grim failed: {png.stderr.decode(errors='replace')}")
        ppm = subprocess.run(
            ["convert", "png:-", "ppm:-"],
            input=png.stdout,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
        width, height, data = parse_ppm(ppm)
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)

    def screen_texts(self) -> list[str]:
        """The words of the screen the greeter last built (its labels), [] before the first."""
        try:
            report = json.loads((self.runtime / "screen.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        return [str(text) for text in report["texts"]]

    def settled(self, previous: np.ndarray | None = None, timeout: float = 20.0) -> np.ndarray:
        """The screen once it stops changing (and differs from ``previous``)."""
        deadline = time.monotonic() + timeout
        last = self.pixels()
        while time.monotonic() < deadline:
            time.sleep(0.4)
            now = self.pixels()
            if (
                (previous is None or not compare(now, previous).matches)
                and compare(now, last).matches
                and compare(now, np.full_like(now, now[0, 0])).worst > 0  # not a blank fill
            ):
                return now
            last = now
        return last

    def save(self, pixels: np.ndarray, path: Path) -> None:
        """Write ``pixels`` as a PNG."""
        h, w, _c = pixels.shape
        ppm = f"P6 {w} {h} 255\n".encode() + pixels.tobytes()
        subprocess.run(["convert", "ppm:-", f"png:{path}"], input=ppm, check=True, timeout=30)


def load(reference: Path) -> np.ndarray:
    """A PNG as an (h, w, 3) array."""
    ppm = subprocess.run(
        ["convert", f"png:{reference}", "ppm:-"], capture_output=True, check=True, timeout=30
    ).stdout
    width, height, data = parse_ppm(ppm)
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def _missing_words(texts: list[str], words: Iterable[str]) -> list[str]:
    return [word for word in words if not any(word in text for text in texts)]


def expect(
    kiosk: Kiosk, name: str, out_dir: Path, words: Iterable[str], timeout: float = 20.0
) -> np.ndarray:
    """Wait until the greeter says ``words`` and the screen matches its reference.

    First the words: the greeter reports the labels of each screen it builds
    (its screen file), and each of ``words`` must be in one of them. That is
    the greeter's own view of the state, so the pixels are never compared
    while it is still on the previous screen, and it checks the text itself
    (a reference can only say what it said when it was taken).

    Then the pixels, polled: the compositor may still show the previous
    window for a frame or two (with wlroots 0.15 a frame is sometimes not
    presented until the greeter's next redraw). Polling cannot let a stale
    screen through because the comparison tells every reference from every
    other one and from a blank screen (test_references_tell_screens_apart).

    A missing reference is written from the settled screen and the test
    fails, so that regenerating one is an explicit, reviewed step.
    """
    words = tuple(words)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while _missing_words(kiosk.screen_texts(), words) and time.monotonic() < deadline:
        time.sleep(0.2)
    texts = kiosk.screen_texts()
    absent = _missing_words(texts, words)
    if absent:
        kiosk.save(kiosk.pixels(), out_dir / f"{name}.png")
        raise AssertionError(f"{name}: the greeter does not say {absent}; its screen says {texts}")
    reference = REFERENCES / f"{name}.png"
    if not reference.exists():
        pixels = kiosk.settled()
        REFERENCES.mkdir(exist_ok=True)
        kiosk.save(pixels, reference)
        if os.environ.get("SDBOX_GREETER_NEW_REFERENCES") == "1":  # writing a new set on purpose
            return pixels
        raise AssertionError(
            f"no reference for {name}: wrote {reference}; look at it and commit it"
        )
    wanted = load(reference)
    volatile = VOLATILE.get(name, ())
    deadline = time.monotonic() + timeout
    while True:
        pixels = kiosk.pixels()
        comparison = compare(pixels, wanted, volatile)
        if comparison.matches or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    kiosk.save(pixels, out_dir / f"{name}.png")
    assert comparison.matches, (
        f"{name}: the screen still differs from {reference} after {timeout:.0f} s in "
        f"{comparison} (see {out_dir / name}.png)"
    )
    return pixels


@contextlib.contextmanager
def kiosk(
    bus_address: str, language: str = "en", extra_env: dict[str, str] | None = None
) -> Iterator[Kiosk]:
    """cage + the greeter, as the greeter's user, on a headless 1280x720 output.

    ``extra_env`` is added to their environment (the idle blank's delay, for the benchmark).
    """
    user = pwd.getpwnam(GREETER_USER)
    base = Path(tempfile.mkdtemp(prefix="sdbox-kiosk-"))
    base.chmod(0o755)  # the greeter's user must reach its runtime directory
    runtime = base / "run"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, user.pw_uid, user.pw_gid)
    code = stage_package(base)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "XDG_RUNTIME_DIR": str(runtime), "LANG": "C.UTF-8",
        "WLR_BACKENDS": "headless", "WLR_RENDERER": "pixman", "WLR_LIBINPUT_NO_DEVICES": "1",
        "WLR_HEADLESS_OUTPUTS": "1", "GTK_THEME": "Adwaita", "GSK_RENDERER": "cairo", "GDK_BACKEND": "wayland", "NO_AT_BRIDGE": "1",
        "GSETTINGS_BACKEND": "memory", "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1",
        SCREEN_FILE_VARIABLE: str(runtime / "screen.json"), **(extra_env or {}),
    }  # fmt: skip
    argv = ["runuser", "-u", GREETER_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
            "cage", "--", GREETER_PYTHON, "-m", "sdbox.ui", "--bus", bus_address, "--lang", language]  # fmt: skip
    log = (base / "cage.log").open("wb")
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base
    )
    try:
        deadline = time.monotonic() + 20
        while not (runtime / "wayland-0").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"cage did not start: {(base / 'cage.log').read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)
        yield Kiosk(process, runtime)
    finally:
        stop(process)
        log.close()
        keep = Path("build/greeter-screenshots")
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / "cage.log", keep / f"cage-{language}.log")  # for diagnosis
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def greeter_on_x11(
    bus_address: str, display: str, language: str = "en", extra_env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """The greeter as its user on an X display (for keyboard tests: xdotool needs X).

    Yields the ``runuser`` process the greeter runs under; ``extra_env`` is
    added to its environment (``XKB_DEFAULT_LAYOUT``, as the greeter's unit
    gives it).
    """
    user = pwd.getpwnam(GREETER_USER)
    base = Path(tempfile.mkdtemp(prefix="sdbox-greeter-code-"))
    base.chmod(0o755)  # the greeter's user must reach its code
    code = stage_package(base)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "LANG": "C.UTF-8", "DISPLAY": display,
        "GDK_BACKEND": "x11", "GTK_THEME": "Adwaita", "NO_AT_BRIDGE": "1",
        "GSETTINGS_BACKEND": "memory", "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1",
        **(extra_env or {}),
    }  # fmt: skip
    argv = ["runuser", "-u", GREETER_USER, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
            GREETER_PYTHON, "-m", "sdbox.ui", "--bus", bus_address, "--lang", language]  # fmt: skip
    log_path = Path("build/greeter-screenshots/greeter-x11.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=base
            )
            try:
                yield process
            finally:
                stop(process)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def window_shown(display: str) -> bool:
    """Whether the greeter's window is mapped on ``display``."""
    found = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--name", "^sdbox$"],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=10,
        check=False,
    )
    return found.returncode == 0 and bool(found.stdout.strip())
