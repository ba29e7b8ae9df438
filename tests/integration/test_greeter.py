"""The greeter's screens under cage, driven through the real agent, against committed references."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from sdbox.agent.api import State
from sdbox.biometric import synth
from sdbox.trust.pki import Pki
from tests.integration.greeter_env import expect, greeter_on_x11, kiosk, missing, window_shown
from tests.integration.session_servers import xvfb
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]
pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))
OUT = Path("build/greeter-screenshots")


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


def test_screens_in_english(pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path) -> None:
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            with kiosk(run.bus_address, "en") as screen:
                await asyncio.to_thread(expect, screen, "picker", OUT)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.VERIFYING)
                await asyncio.to_thread(expect, screen, "place-finger", OUT)
                sensor.queue.put_nowait(synth.impression(4242, 1))  # somebody else's finger
                await _wait_for(lambda: run.agent.snapshot.tries_left == 4)
                await asyncio.to_thread(expect, screen, "wrong-finger", OUT)
                sensor.queue.put_nowait(synth.impression(1001, 1))
                await _wait(run.agent, State.RUNNING)
                await asyncio.to_thread(expect, screen, "session-running", OUT)
                # the session client dies under the researcher: the greeter says so
                session = run.agent._session
                assert session is not None
                assert session.pid is not None
                os.kill(session.pid, signal.SIGKILL)
                await _wait(run.agent, State.PICKER)
                await asyncio.to_thread(expect, screen, "session-ended", OUT)
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                await asyncio.to_thread(expect, screen, "insert-card", OUT)

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


def test_blocked_finger_and_french(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir
        ) as run:
            await _wait(run.agent, State.PICKER)
            with kiosk(run.bus_address, "fr") as screen:
                await asyncio.to_thread(expect, screen, "picker-fr", OUT)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                for number in range(1, 6):
                    sensor.queue.put_nowait(synth.impression(4242, number))
                await _wait_for(
                    lambda: (
                        run.agent.snapshot.problem is not None
                        and run.agent.snapshot.problem.value == "finger_blocked"
                    )
                )
                await asyncio.to_thread(expect, screen, "finger-blocked-fr", OUT)
                # the finger is blocked; the project that allows it still takes the PIN
                await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                await _wait(run.agent, State.VERIFYING)
                await asyncio.to_thread(expect, screen, "pin-fr", OUT)

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
