"""The greeter's centre screens under cage: the tunnel down, seen through the real agent.

The agent runs on the real stack (pcscd, emulated card, D-Bus) as in
test_greeter.py; its tunnel port is a fake that the test moves (the real
watch over charon is test_agent_tunnel.py's), so the screens are reached
without namespaces.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from sdbox.agent.api import State
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.trust.pki import Pki
from tests.integration.greeter_env import Kiosk, expect, kiosk, missing
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent
from tests.integration.test_greeter import OUT, ScriptedSensor, _bus_dir
from tests.unit.test_agent_tunnel import FakeTunnel

__all__ = ["bubbles"]
pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


async def says(screen: Kiosk, *words: str, timeout: float = 20.0) -> None:
    """Until the greeter's current screen has each of ``words`` in one of its labels."""
    deadline = time.monotonic() + timeout
    while True:
        texts = screen.screen_texts()
        if all(any(word in text for text in texts) for word in words):
            return
        assert time.monotonic() < deadline, f"the greeter does not say {words}; it says {texts}"
        await asyncio.sleep(0.2)


def test_the_centre_out_of_reach_on_the_picker_and_a_refused_choice(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    bus_dir = _bus_dir()
    sensor = ScriptedSensor()
    revoked = TunnelEvent(TunnelState.REFUSED, "192.0.2.1", Reason.GATEWAY_CERTIFICATE_REVOKED,
                          "certificate revoked")  # fmt: skip

    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=sensor, bus_dir=bus_dir
        ) as run:
            tunnel = FakeTunnel(TunnelEvent(TunnelState.CONNECTING))
            run.agent.tunnel = tunnel
            run.agent.start_tunnel_watch(asyncio.get_running_loop())
            await _wait(run.agent, State.PICKER)
            with kiosk(run.bus_address, "en") as screen:
                # the picker's centre line, by its words (one more reference per state would
                # cost every run of test_references_tell_screens_apart its pairs)
                await says(screen, "Choose a project", "Connecting to the centre…")
                await tunnel.push(revoked)
                await says(screen, "Choose a project", "The centre cannot be reached.",
                           "gateway certificate was revoked", "Gateway: 192.0.2.1.")  # fmt: skip
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
                await _wait_for(lambda: run.agent.snapshot.problem is not None, timeout=30)
                await asyncio.to_thread(
                    expect, screen, "centre-unreachable", OUT,
                    ("The centre cannot be reached", "gateway certificate was revoked",
                     "the box keeps trying to reach the centre"),
                )  # fmt: skip
                # no finger was asked for a session that could not open
                assert State.VERIFYING not in [e.state for e in run.events]

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
