"""The greeter where it really runs: cage (headless wlroots) as the greeter's user, screenshots with grim."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import sdbox
from tests.integration.session_servers import parse_ppm, stop

GREETER_USER = "sdbox-greeter"
# The greeter unit's interpreter (debian/sdbox.sdbox-greeter.service): Debian's
# own, which sees python3-gi, and which the greeter's user can run wherever
# the checkout is (a venv inside a 0700 checkout is out of its reach).
GREETER_PYTHON = "/usr/bin/python3"
REFERENCES = Path(__file__).parent / "greeter-references"
# Font antialiasing and the spinner's phase differ between runs: a pixel
# counts as different above this channel difference, and a screen matches
# its reference when at most this share of its pixels differ.
CHANNEL_TOLERANCE = 48
MAX_DIFFERENT = 0.01


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

    def settled(self, previous: np.ndarray | None = None, timeout: float = 20.0) -> np.ndarray:
        """The screen once it stops changing (and differs from ``previous``)."""
        deadline = time.monotonic() + timeout
        last = self.pixels()
        while time.monotonic() < deadline:
            time.sleep(0.4)
            now = self.pixels()
            changed_from_previous = (
                previous is None
                or now.shape != previous.shape
                or _different(now, previous) > MAX_DIFFERENT
            )
            if (
                changed_from_previous
                and now.shape == last.shape
                and _different(now, last) <= MAX_DIFFERENT / 4
                and now.mean() > 20
            ):
                return now
            last = now
        return last

    def save(self, pixels: np.ndarray, path: Path) -> None:
        """Write ``pixels`` as a PNG."""
        h, w, _c = pixels.shape
        ppm = f"P6 {w} {h} 255\n".encode() + pixels.tobytes()
        subprocess.run(["convert", "ppm:-", f"png:{path}"], input=ppm, check=True, timeout=30)


def _different(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 1.0
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2)
    return float((diff > CHANNEL_TOLERANCE).mean())


def _load(reference: Path) -> np.ndarray:
    ppm = subprocess.run(
        ["convert", f"png:{reference}", "ppm:-"], capture_output=True, check=True, timeout=30
    ).stdout
    width, height, data = parse_ppm(ppm)
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def expect(kiosk: Kiosk, name: str, out_dir: Path, timeout: float = 20.0) -> np.ndarray:
    """Wait until the screen matches its committed reference; fail with the last capture.

    Polling against the reference (rather than taking the first stable
    frame) is what makes the capture reliable under headless cage: a frame
    that wlroots did not present leaves the previous screen up until the
    greeter's next redraw, which comes within its refresh period.
    A missing reference is written from the settled screen and the test
    fails, so that regenerating one is an explicit, reviewed step.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
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
    wanted = _load(reference)
    deadline = time.monotonic() + timeout
    while True:
        pixels = kiosk.pixels()
        share = _different(pixels, wanted)
        if share <= MAX_DIFFERENT or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    kiosk.save(pixels, out_dir / f"{name}.png")
    assert share <= MAX_DIFFERENT, (
        f"{name}: {share:.2%} of the pixels still differ from {reference} after "
        f"{timeout:.0f} s (see {out_dir / name}.png)"
    )
    return pixels


@contextlib.contextmanager
def kiosk(bus_address: str, language: str = "en") -> Iterator[Kiosk]:
    """cage + the greeter, as the greeter's user, on a headless 1280x720 output."""
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
    bus_address: str, display: str, language: str = "en"
) -> Iterator[subprocess.Popen[bytes]]:
    """The greeter as its user on an X display (for keyboard tests: xdotool needs X).

    Yields the ``runuser`` process the greeter runs under.
    """
    user = pwd.getpwnam(GREETER_USER)
    base = Path(tempfile.mkdtemp(prefix="sdbox-greeter-code-"))
    base.chmod(0o755)  # the greeter's user must reach its code
    code = stage_package(base)
    env = {
        "PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "LANG": "C.UTF-8", "DISPLAY": display,
        "GDK_BACKEND": "x11", "GTK_THEME": "Adwaita", "NO_AT_BRIDGE": "1",
        "GSETTINGS_BACKEND": "memory", "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1",
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
