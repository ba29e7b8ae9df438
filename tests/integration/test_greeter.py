"""The greeter's screens under cage, driven through the real agent, against committed references."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sdbox.agent.api import State
from sdbox.biometric import synth
from sdbox.trust.pki import Pki
from tests.integration.greeter_env import (
    REFERENCES,
    VOLATILE,
    Picture,
    compare,
    expect,
    greeter_on_x11,
    kiosk,
    load,
    missing,
    window_shown,
)
from tests.integration.session_servers import xvfb
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]
needs_kiosk = pytest.mark.skipif(missing() is not None, reason=str(missing()))
OUT = Path("build/greeter-screenshots")


@pytest.mark.skipif(shutil.which("convert") is None, reason="convert is not installed (make setup)")
def test_references_tell_screens_apart() -> None:
    """No reference passes for a blank screen or for another screen; each passes for itself.

    expect() polls until the screen matches: were two references alike, a
    screen stuck on the previous state would pass for the next one.
    """
    images = {path.stem: load(path) for path in sorted(REFERENCES.glob("*.png"))}
    assert len(images) >= 15
    references = {name: Picture.of(pixels) for name, pixels in images.items()}
    for name, pixels in images.items():
        assert compare(references[name], references[name], VOLATILE.get(name, ())).matches
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        blank = np.broadcast_to(colours[counts.argmax()], pixels.shape)  # the background, alone
        assert not compare(blank, references[name], VOLATILE.get(name, ())).matches, (
            f"a blank screen passes for {name}"
        )
    for (shown, shot), (name, reference) in itertools.permutations(references.items(), 2):
        assert not compare(shot, reference, VOLATILE.get(name, ())).matches, (
            f"{shown} passes for {name}"
        )


class ScriptedSensor:
    """Gives the fingers the test puts in its queue, when it puts them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def capture(self) -> bytes:
        return await self.queue.get()


def _bus_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="sdbox-greeter-bus-"))
    path.chmod(0o755)  # the greeter's user must reach the bus socket
    return path


@needs_kiosk
def test_screens_in_english(pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path) -> None:
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            with kiosk(run.bus_address, "en") as screen:
                await asyncio.to_thread(
                    expect, screen, "picker", OUT,
                    ("Choose a project", "Census microdata 2021", "Health cohort study", "Remote desktop"),
                )  # fmt: skip
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.VERIFYING)
                await asyncio.to_thread(
                    expect, screen, "place-finger", OUT,
                    ("Place your finger on the sensor", "5 tries left", "Census microdata 2021"),
                )  # fmt: skip
                sensor.queue.put_nowait(synth.impression(4242, 1))  # somebody else's finger
                await _wait_for(lambda: run.agent.snapshot.tries_left == 4)
                await asyncio.to_thread(
                    expect, screen, "wrong-finger", OUT, ("The finger did not match", "4 tries left"),
                )  # fmt: skip
                sensor.queue.put_nowait(synth.impression(1001, 1))
                await _wait(run.agent, State.RUNNING)
                await asyncio.to_thread(
                    expect, screen, "session-running", OUT,
                    ("Census microdata 2021", "Your session is open.", "Remove your card to end it."),
                )  # fmt: skip
                # the session client dies under the researcher: the greeter says so
                session = run.agent._session
                assert session is not None
                assert session.pid is not None
                os.kill(session.pid, signal.SIGKILL)
                await _wait(run.agent, State.PICKER)
                await asyncio.to_thread(
                    expect, screen, "session-ended", OUT,
                    ("The session ended", "stopped unexpectedly", "Choose a project to start again."),
                )  # fmt: skip
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                await asyncio.to_thread(
                    expect, screen, "insert-card", OUT,
                    ("Insert your card", "Insert your card into the reader to start.",
                     "F2: keyboard layout (English (US, QWERTY))\nF3: larger text · F4: high contrast"),
                )  # fmt: skip

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


# What each language's screens must say: the picker, the finger blocked (with the agent's
# detail in that language, not its English words), the PIN prompt. A third language is
# one catalogue, and one row here.
_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "fr": (
        ("Choisissez un projet", "Census microdata 2021", "Bureau à distance"),
        ("Ce doigt est bloqué", "Votre doigt doit être enrôlé à nouveau",
         "Trop d’essais : ce doigt est bloqué sur la carte."),  # noqa: RUF001
        ("Saisissez votre code PIN", "Votre doigt est bloqué", "Health cohort study"),
    ),
    "de": (
        ("Wählen Sie ein Projekt", "Census microdata 2021", "Remote-Desktop"),
        ("Dieser Finger ist gesperrt",
         "Zu viele Versuche: Dieser Finger ist auf der Karte gesperrt."),
        ("Geben Sie Ihre PIN ein", "Ihr Finger ist gesperrt", "Health cohort study"),
    ),
}  # fmt: skip


@needs_kiosk
@pytest.mark.parametrize("language", sorted(_WORDS))
def test_blocked_finger_in_another_language(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path, language: str
) -> None:
    picker, blocked, pin = _WORDS[language]
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            with kiosk(run.bus_address, language) as screen:
                await asyncio.to_thread(expect, screen, f"picker-{language}", OUT, picker)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                for number in range(1, 6):
                    sensor.queue.put_nowait(synth.impression(4242, number))
                await _wait_for(
                    lambda: (
                        run.agent.snapshot.problem is not None
                        and run.agent.snapshot.problem.value == "finger_blocked"
                    )
                )
                await asyncio.to_thread(
                    expect, screen, f"finger-blocked-{language}", OUT, blocked
                )
                # the finger is blocked; the project that allows it still takes the PIN
                await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                await _wait(run.agent, State.VERIFYING)
                await asyncio.to_thread(expect, screen, f"pin-{language}", OUT, pin)

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


def _keys(display: str, *keys: str) -> None:
    """Press keys on the greeter's X display, as the researcher's keyboard would."""
    subprocess.run(
        ["xdotool", "key", "--delay", "80", *keys],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
        check=True,
        timeout=30,
    )


def _visible_windows(display: str) -> int:
    found = subprocess.run(
        ["xdotool", "search", "--onlyvisible", "--name", "."],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return len(found.stdout.split())


@needs_kiosk
@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed (make setup)")
def test_keyboard_only(pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path) -> None:
    """Arrows, Enter, Escape and typing the PIN are enough to reach a session."""
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()  # no finger ever comes: the PIN is the way in

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            with xvfb() as display, greeter_on_x11(run.bus_address, display):
                await _wait_for(lambda: window_shown(display), timeout=30)
                await asyncio.sleep(1.5)  # the picker replaces the first (empty) screen
                # no way out: close, quit, menus, the GTK inspector, a new window
                await asyncio.to_thread(
                    _keys, display, "alt+F4", "ctrl+q", "ctrl+w", "F10", "ctrl+shift+i",
                    "ctrl+shift+d", "ctrl+n", "super",
                )  # fmt: skip
                await asyncio.sleep(1.0)
                assert _visible_windows(display) == 1
                assert run.agent.snapshot.state == State.PICKER
                await asyncio.to_thread(_keys, display, "Down", "Return")
                await _wait(run.agent, State.VERIFYING, timeout=20)
                assert run.agent.snapshot.active_project == "health-cohort"
                await asyncio.to_thread(_keys, display, "Escape")
                await _wait(run.agent, State.PICKER, timeout=20)
                await asyncio.sleep(1)  # the new screen's window takes the focus
                await asyncio.to_thread(_keys, display, "Down", "Return")
                await _wait(run.agent, State.VERIFYING, timeout=20)
                await asyncio.sleep(1)
                await asyncio.to_thread(_keys, display, *"123456", "Return")
                await _wait(run.agent, State.RUNNING, timeout=60)
                assert run.agent.snapshot.active_project == "health-cohort"

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


@needs_kiosk
@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed (make setup)")
def test_the_keyboard_layout_is_chosen_from_the_keyboard_and_kept(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """F2, an arrow and Enter: the agent keeps the layout, and the greeter restarts to apply it."""
    bus_dir = _bus_dir()
    keyboard = '[keyboard]\nlayout = "fr"\nchoices = ["de", "gb"]\n'

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=ScriptedSensor(), bus_dir=bus_dir,
            extra_config=keyboard,
        ) as run:  # fmt: skip
            await _wait(run.agent, State.PICKER)
            env_file = run.config.state_dir / "preferences" / "greeter.env"
            assert env_file.read_text() == "XKB_DEFAULT_LAYOUT=fr\n"  # what cage starts with
            with (
                xvfb() as display,
                greeter_on_x11(
                    run.bus_address, display, extra_env={"XKB_DEFAULT_LAYOUT": "fr"}
                ) as greeter,
            ):
                await _wait_for(lambda: window_shown(display), timeout=30)
                await asyncio.sleep(1.5)  # the picker replaces the first (empty) screen
                # the chooser opens on the layout in use (fr); Escape leaves it, nothing asked
                await asyncio.to_thread(_keys, display, "F2", "Escape")
                await asyncio.sleep(1)
                assert run.agent.snapshot.state == State.PICKER  # Escape was not a Cancel
                assert run.agent.preferences.keyboard_layout == "fr"
                await asyncio.to_thread(_keys, display, "F2")
                await asyncio.sleep(1)
                await asyncio.to_thread(_keys, display, "Down", "Return")
                await _wait_for(lambda: run.agent.preferences.keyboard_layout == "de", timeout=20)
                # cage takes a layout only at start: the greeter quits for its unit to restart it
                await _wait_for(lambda: greeter.poll() is not None, timeout=20)
                assert greeter.returncode == 0
            assert env_file.read_text() == "XKB_DEFAULT_LAYOUT=de\n"
            assert json.loads((env_file.parent / "preferences.json").read_text()) == {
                "keyboard_layout": "de"
            }

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


@needs_kiosk
def test_larger_text_and_high_contrast(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """The researcher's choices, kept by the agent, change every screen (references: the looks)."""
    bus_dir = _bus_dir()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=ScriptedSensor(), bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            set_preference = run.iface.call_set_preference  # type: ignore[attr-defined]
            with kiosk(run.bus_address) as screen:
                await asyncio.to_thread(
                    expect, screen, "picker", OUT, ("Choose a project", "Census microdata 2021")
                )
                await set_preference("large_text", "1")
                await asyncio.to_thread(
                    expect, screen, "picker-large", OUT, ("Choose a project", "Health cohort study")
                )
                await set_preference("large_text", "0")
                await set_preference("high_contrast", "1")
                await asyncio.to_thread(
                    expect, screen, "picker-contrast", OUT, ("Choose a project",)
                )
                await set_preference("large_text", "1")
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                await asyncio.to_thread(
                    expect, screen, "insert-card-large-contrast", OUT,
                    ("Insert your card", "F3: larger text · F4: high contrast"),
                )  # fmt: skip
            # kept: a greeter started now (after a restart, a power cut) has them at once
            assert run.agent.preferences.values()["large_text"] == "1"
            stored = json.loads((run.config.state_dir / "preferences" / "preferences.json").read_text())
            assert stored["high_contrast"] == "1"

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


@needs_kiosk
@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed (make setup)")
def test_larger_text_and_high_contrast_from_the_keyboard(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    """F3 and F4 switch them on and off, through the agent, on any screen."""
    bus_dir = _bus_dir()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=ScriptedSensor(), bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            prefs = run.agent.preferences.values
            with xvfb() as display, greeter_on_x11(run.bus_address, display):
                await _wait_for(lambda: window_shown(display), timeout=30)
                await asyncio.sleep(1.5)  # the picker replaces the first (empty) screen
                await asyncio.to_thread(_keys, display, "F3")
                await _wait_for(lambda: prefs()["large_text"] == "1", timeout=20)
                await asyncio.sleep(1)  # the new look is a new window: let it take the focus
                await asyncio.to_thread(_keys, display, "F4")
                await _wait_for(lambda: prefs()["high_contrast"] == "1", timeout=20)
                await asyncio.sleep(1)
                await asyncio.to_thread(_keys, display, "F3")
                await _wait_for(lambda: prefs()["large_text"] == "0", timeout=20)
                assert prefs()["high_contrast"] == "1"
                assert run.agent.snapshot.state == State.PICKER  # nothing else was asked

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
