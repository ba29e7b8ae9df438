"""A SPICE project through the agent: QEMU's TLS-only SPICE server, ticket set over QMP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.agent.api import State
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.trust.pki import Pki
from tests.integration.agent_env import card_profile, rdp_bubble, spice_bubble
from tests.integration.session_servers import free_port, pid_alive, tool_missing, xvfb
from tests.integration.test_agent import Bubbles, _wait, running_agent

pytestmark = pytest.mark.skipif(
    bool(
        tool_missing(
            "remote-viewer", "qemu-system-x86_64", "freerdp-shadow-cli3", "Xvfb", "dbus-daemon"
        )
    ),
    reason="the session stack is not installed (make setup)",
)


@pytest.fixture(scope="module")
def spice_bubbles(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bubbles]:
    """RDP bubbles plus the genomics-lab SPICE bubble."""
    ports = {"census-2021": free_port(), "health-cohort": free_port(), "genomics-lab": free_port()}
    work = tmp_path_factory.mktemp("spice-bubbles")
    issue_card(parse_profile(card_profile(ports), source="test"), pki)
    with xvfb() as display, contextlib.ExitStack() as stack:
        env = Bubbles(display, ports)
        for project in ("census-2021", "health-cohort"):
            env.servers[project] = stack.enter_context(
                rdp_bubble(work / project, pki, project, display, ports[project])
            )
        env.servers["genomics-lab"] = stack.enter_context(  # type: ignore[assignment]
            spice_bubble(work / "genomics-lab", pki, "genomics-lab", ports["genomics-lab"])
        )
        yield env


def test_spice_project_connects_and_switches_to_rdp(
    pki: Pki, spice_bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, spice_bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            projects = await run.iface.get_projects()  # type: ignore[attr-defined]
            assert ("genomics-lab", "spice") in [(p[0], p[2]) for p in projects]
            await run.iface.call_choose_project("genomics-lab")  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)
            assert run.agent._session is not None
            viewer = run.agent._session.pid
            assert viewer is not None
            await run.iface.call_switch("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.CONNECTING, timeout=10)
            await _wait(run.agent, State.RUNNING)
            assert not pid_alive(viewer)
            assert spice_bubbles.servers["genomics-lab"].issued  # a ticket was set for this session

    asyncio.run(scenario())
