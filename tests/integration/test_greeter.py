"""The greeter's screens under cage, driven through the real agent, against committed references."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from sdbox.agent.events import State
from sdbox.biometric import synth
from sdbox.trust.pki import Pki
from tests.integration.greeter_env import compare, kiosk, missing
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]
# Opt-in (SDBOX_GREETER_SCREENSHOTS=1): on these machines cage 0.1.4 / wlroots
# 0.15 with the headless pixman output intermittently fails to present a
# frame ("Basic output test failed"), after which GTK waits for a frame
# callback that never comes and the screen stays stale. The screens are right
# (the references were checked by eye) but the capture is not reliable enough
# for CI; docs/greeter.md has the details.
pytestmark = [
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
    pytest.mark.skipif(
        os.environ.get("SDBOX_GREETER_SCREENSHOTS") != "1",
        reason="greeter screenshots are opt-in (SDBOX_GREETER_SCREENSHOTS=1): headless cage is unreliable here",
    ),
]
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
                picker = await asyncio.to_thread(screen.settled)
                compare(screen, picker, "picker", OUT)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait(run.agent, State.VERIFYING)
                finger = await asyncio.to_thread(screen.settled, picker)
                compare(screen, finger, "place-finger", OUT)
                sensor.queue.put_nowait(synth.impression(4242, 1))  # somebody else's finger
                await _wait_for(lambda: run.agent.snapshot.tries_left == 4)
                wrong = await asyncio.to_thread(screen.settled, finger)
                compare(screen, wrong, "wrong-finger", OUT)
                sensor.queue.put_nowait(synth.impression(1001, 1))
                await _wait(run.agent, State.RUNNING)
                running = await asyncio.to_thread(screen.settled, wrong)
                compare(screen, running, "session-running", OUT)
                await asyncio.to_thread(run.card.remove)
                await _wait(run.agent, State.IDLE)
                insert = await asyncio.to_thread(screen.settled, running)
                compare(screen, insert, "insert-card", OUT)

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
                picker = await asyncio.to_thread(screen.settled)
                compare(screen, picker, "picker-fr", OUT)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                for number in range(1, 6):
                    sensor.queue.put_nowait(synth.impression(4242, number))
                await _wait_for(
                    lambda: (
                        run.agent.snapshot.problem is not None
                        and run.agent.snapshot.problem.value == "finger_blocked"
                    )
                )
                blocked = await asyncio.to_thread(screen.settled, picker)
                compare(screen, blocked, "finger-blocked-fr", OUT)

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
