"""The agent's fault list: each ends in a state and a message the greeter can show, no orphan session."""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509

from sdbox.agent.api import State
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.smartcard.profile import ObjectTag
from sdbox.trust.pki import Pki
from tests.cli import REPO_ROOT
from tests.integration.agent_env import card_profile
from tests.integration.conftest import insert_card
from tests.integration.session_servers import pid_alive
from tests.integration.test_agent import Bubbles, _wait, _wait_for, bubbles, running_agent

__all__ = ["bubbles"]  # the module-scoped fixture, shared with test_agent


@pytest.mark.parametrize(
    ("step", "fault"),
    [
        ("listing", f"remove:ins=cb,object={ObjectTag.DIRECTORY:x}"),
        ("verify", "remove:ins=20,p2=96,nth=2"),  # the first VERIFY 96 is the listing's status read
        ("validation", "remove:ins=87,p2=82"),
        ("certificate read", f"remove:ins=cb,object={0x5FC10D:x}"),
    ],
)
def test_card_pulled_at_each_step(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path, step: str, fault: str
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, fault=fault) as run:
            if step != "listing":
                await _wait(run.agent, State.PICKER)
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            # the agent saw the card, then its removal (pcscd notices within ~0.4 s)
            await _wait_for(lambda: State.READING in [e.state for e in run.events], timeout=30)
            await _wait_for(lambda: run.events[-1].state == State.IDLE, timeout=30)
            await asyncio.sleep(0.3)  # let any stray flow show itself
            assert run.agent.snapshot.state == State.IDLE
            assert run.agent._session is None
            assert run.agent.snapshot.projects == []

    asyncio.run(scenario())


def test_card_pulled_while_connecting_kills_the_client(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.CONNECTING)
            await _wait_for(
                lambda: run.agent._session is not None and run.agent._session.pid is not None
            )
            assert run.agent._session is not None
            pid = run.agent._session.pid
            assert pid is not None
            await asyncio.to_thread(run.card.remove)
            await _wait(run.agent, State.IDLE, timeout=10)
            await _wait_for(lambda: not pid_alive(pid), timeout=5)

    asyncio.run(scenario())


def test_swapped_card_needs_its_own_holder(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)
            first_guid = run.agent._card.guid if run.agent._card else b""
            other = issue_card(parse_profile(card_profile(bubbles.ports), source="other"), pki)
            await asyncio.to_thread(run.card.remove)
            swapped = await asyncio.to_thread(insert_card, other, pki, free_reader)
            try:
                await _wait(run.agent, State.PICKER)
                assert run.agent._card is not None
                assert run.agent._card.guid == other.guid != first_guid
                assert not run.agent.snapshot.holder_verified
                assert run.agent._session is None
            finally:
                await asyncio.to_thread(swapped.remove)

    asyncio.run(scenario())


def test_unreachable_bubble_is_reported_and_back_to_picker(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, connect_timeout_s=5.0) as run:
            await _wait(run.agent, State.PICKER)
            bubbles.servers["health-cohort"].process.send_signal(
                19
            )  # SIGSTOP: reachable port, no answer
            try:
                await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
                await _wait_for(lambda: run.agent.snapshot.problem is not None, timeout=90)
            finally:
                bubbles.servers["health-cohort"].process.send_signal(18)  # SIGCONT
            assert run.agent.snapshot.state == State.PICKER
            assert run.agent.snapshot.problem is not None
            assert run.agent.snapshot.problem.value == "session_failed"
            assert run.agent._session is None

    asyncio.run(scenario())


def test_expired_project_is_shown_and_refused(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, valid_days=0) as run:
            await _wait(run.agent, State.PICKER)
            projects = await run.iface.get_projects()  # type: ignore[attr-defined]
            assert {p[0]: (p[5], p[6]) for p in projects}["census-2021"] == (
                "certificate expired",
                False,
            )
            # valid_days=0 ends the validity on the second of issue, inclusive: let it pass
            await asyncio.sleep(1.1)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait_for(lambda: run.agent.snapshot.problem is not None)
            assert run.agent.snapshot.problem is not None
            assert run.agent.snapshot.problem.value == "certificate_expired"
            assert run.agent._session is None

    asyncio.run(scenario())


def test_pcscd_restart_returns_to_idle_then_lists_again(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path, pcscd: object
) -> None:
    from sdbox.smartcard.emulator.stack import PcscDaemon

    assert isinstance(pcscd, PcscDaemon)
    if not pcscd.owned or pcscd.shared:
        pytest.skip("pcscd is not ours to restart")

    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            await asyncio.to_thread(pcscd.restart)
            await _wait(run.agent, State.IDLE, timeout=30)
            await asyncio.to_thread(run.card.virtual.remove)
            await asyncio.to_thread(run.card.insert)
            await _wait(run.agent, State.PICKER, timeout=30)

    asyncio.run(scenario())


class UnpluggedSensor:
    """A sensor that goes away when asked for a finger."""

    async def capture(self) -> bytes:
        from sdbox.errors import SdboxError

        raise SdboxError("the fingerprint sensor is not connected: call the service desk")


def test_sensor_unplugged_is_reported(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor_port=UnpluggedSensor()
        ) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait_for(lambda: run.agent.snapshot.problem is not None)
            assert run.agent.snapshot.state == State.PICKER
            assert run.agent.snapshot.problem is not None
            assert run.agent.snapshot.problem.value == "sensor_failed"
            assert "sensor is not connected" in run.agent.snapshot.message
            assert run.card.state.fingers[0x96].tries == 5  # no try spent

    asyncio.run(scenario())


__all__ += ["textwrap", "x509"]


def test_agent_killed_while_a_session_runs_leaves_no_client(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    from sdbox.smartcard.emulator.stack import reader_name
    from tests.integration.agent_env import publish_crls, write_config

    publish_crls(pki, tmp_path / "crl")
    write_config(tmp_path, pki, display=bubbles.display)
    state = issue_card(parse_profile(card_profile(bubbles.ports), source="test"), pki)
    spec = {
        "config": str(tmp_path / "agent.toml"),
        "reader": reader_name(free_reader),
        "sams": {p: str(s.sam) for p, s in bubbles.servers.items()},
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.agent_child", json.dumps(spec)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    card = insert_card(state, pki, free_reader)
    try:
        assert child.stdout is not None
        client_pid = int(child.stdout.readline())
        assert pid_alive(client_pid)
        os.kill(child.pid, signal.SIGKILL)  # the agent dies without any chance to clean up
        child.wait(10)
        deadline = time.monotonic() + 10
        while pid_alive(client_pid):
            assert time.monotonic() < deadline, "the session client outlived the agent"
            time.sleep(0.05)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        card.remove()
