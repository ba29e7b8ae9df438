"""The support screen's "send diagnostics", through the agent's D-Bus API, to a real fleet service.

Real parts: the agent's D-Bus interface on a private bus (dbus-daemon), the
agent running the box's `sdbox fleet diagnostics` as its child, the fleet
service (`sdbox fleet serve`, its own process) and the box's journal files.
The greeter's side (the key, the words on the screen) is in
test_greeter_desk.py and tests/unit/test_ui_desk.py.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus
from dbus_fast.message import Message

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH, DiagnosticsOutcome
from sdbox.agent.dbus import export
from sdbox.agent.machine import Agent
from sdbox.fleet.store import FleetStore
from tests.fleet_env import FleetPki
from tests.integration.agent_env import dbus_daemon
from tests.integration.test_fleet import JOURNAL_REMOTE, Box, Service

pytestmark = pytest.mark.skipif(not JOURNAL_REMOTE.exists(), reason="systemd-journal-remote is missing")


def _agent(fleet_config: Path | None) -> Agent:
    return Agent(
        trust=None, sensor=None, credentials=None, sessions=None,  # type: ignore[arg-type]
        endpoint_allowed=lambda _e: True, fleet_config=fleet_config,
    )  # fmt: skip


def _press_send(agent: Agent) -> tuple[str, str]:
    """What the greeter does on the support screen's Enter: SendDiagnostics over the bus."""

    async def scenario() -> tuple[str, str]:
        with (
            tempfile.TemporaryDirectory(prefix="sdbox-diag-bus-") as bus_dir,
            dbus_daemon(Path(bus_dir)) as address,
        ):
            service = await export(agent, address)
            client = await MessageBus(bus_address=address).connect()
            try:
                reply = await client.call(
                    Message(destination=BUS_NAME, path=OBJECT_PATH, interface=INTERFACE,
                            member="SendDiagnostics")
                )  # fmt: skip
            finally:
                client.disconnect()
                service.disconnect()
        assert reply is not None
        assert reply.signature == "(ss)", reply
        outcome, text = reply.body[0]
        return str(outcome), str(text)

    return asyncio.run(scenario())


@pytest.fixture
def centre(tmp_path: Path) -> FleetPki:
    return FleetPki(tmp_path / "centre")


def test_send_diagnostics_reaches_the_box_page_and_the_screen_gets_its_reference(
    centre: FleetPki, tmp_path: Path
) -> None:
    service = Service(centre, tmp_path)
    service.start()
    try:
        box = Box(centre.box("box-0070"), tmp_path / "box", service.url)
        outcome, reference = _press_send(_agent(box.config))
        assert outcome == DiagnosticsOutcome.SENT
        status, page = service.get("/boxes/box-0070")
        assert status == 200
        assert "sent from the box&#x27;s support screen" in page
        status, upload = service.get(f"/boxes/box-0070/diagnostics/{reference}")
        assert status == 200
        for section in ("versions", "network", "tunnel", "journal (sdbox units)"):
            assert f"<h2>{section}</h2>" in upload
        # the centre away: the screen is told so, by code, and nothing is left half-sent
        service.stop()
        outcome, why = _press_send(_agent(box.config))
        assert outcome == DiagnosticsOutcome.UNREACHABLE
        assert "cannot be reached" in why
        # a revoked box: the service refuses it, and the screen shows why
        service.start()
        centre.pki.revoke(box.identity.certificate)
        centre.refresh_crls()
        outcome, why = _press_send(_agent(box.config))
        assert outcome == DiagnosticsOutcome.FAILED
        assert "revoked" in why
        assert len(FleetStore(service.database).diagnostics_list("box-0070")) == 1
    finally:
        service.stop()


def test_a_box_without_a_fleet_configuration_says_so(tmp_path: Path) -> None:
    outcome, why = _press_send(_agent(tmp_path / "no-fleet.toml"))
    assert outcome == DiagnosticsOutcome.NOT_CONFIGURED
    assert "no-fleet.toml" in why
