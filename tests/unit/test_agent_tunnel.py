"""The agent with the tunnel as an input: a fake TunnelPort drives the machine's transitions.

The card is the in-process applet, sessions are fakes (test_agent_machine.py);
what is checked is what the researcher sees (state, problem, detail), what the
centre is asked (credentials) and which session clients are left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from sdbox.agent.api import CentreState, Detail, Problem, State, TunnelReason
from sdbox.agent.card import CardHandle
from sdbox.agent.events import CentreChanged, SessionEndedEvent
from sdbox.agent.machine import Agent
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.smartcard.directory import Project
from sdbox.trust.pki import Pki
from tests.unit.test_agent_machine import Sensor, Sessions, make_agent, until

GATEWAY = "192.0.2.1"
UP = TunnelEvent(TunnelState.UP, GATEWAY, inner_address="10.99.0.1")
UNREACHABLE = TunnelEvent(TunnelState.DOWN, GATEWAY, Reason.GATEWAY_UNREACHABLE, "timeout")


class FakeTunnel:
    """A TunnelPort whose events the test pushes (from a thread, as the real watch does)."""

    def __init__(self, first: TunnelEvent) -> None:
        self.state = first
        self.listeners: list[Callable[[TunnelEvent], None]] = []
        self.started = self.stopped = False

    def current(self) -> TunnelEvent:
        return self.state

    def subscribe(self, listener: Callable[[TunnelEvent], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    async def push(self, event: TunnelEvent) -> None:
        self.state = event
        for listener in list(self.listeners):
            await asyncio.to_thread(listener, event)
        await asyncio.sleep(0.01)  # the loop runs the handler


class CountingCredentials:
    def __init__(self) -> None:
        self.issued = 0

    async def obtain(
        self, project: Project, certificate: x509.Certificate, card: CardHandle
    ) -> tuple[str, Any]:
        self.issued += 1
        return "researcher", f"one-time-{self.issued}"


def tunnelled_agent(
    pki: Pki, tmp_path: Path, first: TunnelEvent, grace_s: float = 30.0
) -> tuple[Agent, Sessions, list[Any], FakeTunnel, CountingCredentials]:
    credentials = CountingCredentials()
    agent, sessions, events, _applet = make_agent(pki, tmp_path, credentials=credentials)
    tunnel = FakeTunnel(first)
    agent.tunnel, agent.grace_s = tunnel, grace_s
    agent.start_tunnel_watch(asyncio.get_running_loop())
    return agent, sessions, events, tunnel, credentials


async def running(agent: Agent, project: str = "census-2021") -> None:
    await agent.card_inserted("reader")
    await until(lambda: agent.snapshot.state == State.PICKER)
    await agent.choose_project(project)
    await until(lambda: agent.snapshot.state == State.RUNNING)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def test_without_a_tunnel_the_centre_is_unwatched_and_sessions_open(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, _events, _applet = make_agent(pki, tmp_path)
        agent.start_tunnel_watch(asyncio.get_running_loop())
        assert agent.centre() == CentreChanged(CentreState.UNWATCHED)
        await running(agent)
        assert len(sessions.opened) == 1

    asyncio.run(scenario())


def test_a_card_inserted_while_the_centre_is_down_is_never_sent_to_the_broker(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused = TunnelEvent(TunnelState.REFUSED, GATEWAY, Reason.GATEWAY_CERTIFICATE_REVOKED,
                          "certificate revoked")  # fmt: skip

    async def scenario() -> None:
        agent, sessions, events, tunnel, credentials = tunnelled_agent(pki, tmp_path, refused)
        assert tunnel.started
        assert agent.centre() == CentreChanged(CentreState.REFUSED, "gateway_certificate_revoked",
                                               GATEWAY)  # fmt: skip
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)  # the picker is still shown
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.problem is not None)
        snap = agent.snapshot
        assert (snap.state, snap.problem, snap.detail) == (
            State.PICKER, Problem.CENTRE_UNREACHABLE, Detail.TUNNEL_DOWN
        )  # fmt: skip
        assert snap.detail_args == {"reason": "gateway_certificate_revoked", "gateway": GATEWAY}
        assert credentials.issued == 0
        assert sessions.opened == []
        sensor = agent.sensor
        assert isinstance(sensor, Sensor)
        assert sensor.captures == 0
        # the tunnel comes up: the picker says nothing more, and the project opens
        await tunnel.push(UP)
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.problem is None
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.state == State.RUNNING)
        assert credentials.issued == 1
        assert [e.state for e in events if isinstance(e, CentreChanged)] == [
            CentreState.REFUSED, CentreState.UP
        ]  # fmt: skip

    with caplog.at_level(logging.INFO, logger="sdbox.audit"):
        asyncio.run(scenario())
    audited = [(getattr(r, "SDBOX_EVENT", ""), getattr(r, "SDBOX_GATEWAY", ""),
                getattr(r, "SDBOX_REASON", ""))
               for r in caplog.records if getattr(r, "SDBOX_EVENT", "").startswith("tunnel_")]  # fmt: skip
    assert audited == [("tunnel_refused", GATEWAY, "gateway_certificate_revoked"),
                       ("tunnel_up", GATEWAY, "")]  # fmt: skip


def test_still_connecting_refuses_with_its_own_words(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, _sessions, _events, _tunnel, credentials = tunnelled_agent(
            pki, tmp_path, TunnelEvent(TunnelState.CONNECTING)
        )
        await agent.card_inserted("reader")
        await until(lambda: agent.snapshot.state == State.PICKER)
        await agent.choose_project("census-2021")
        await until(lambda: agent.snapshot.problem is not None)
        assert agent.snapshot.detail == Detail.CENTRE_CONNECTING
        assert credentials.issued == 0

    asyncio.run(scenario())


def test_a_tunnel_down_longer_than_the_grace_ends_the_session_with_reason_network(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, sessions, events, tunnel, credentials = tunnelled_agent(pki, tmp_path, UP, 0.3)
        await running(agent)
        await tunnel.push(UNREACHABLE)
        state: State = agent.snapshot.state
        assert state == State.RUNNING  # within the grace: nothing yet
        await until(lambda: agent.snapshot.state == State.PICKER)
        assert sessions.opened[0].killed  # no client left
        snap = agent.snapshot
        assert (snap.detail, snap.detail_args) == (Detail.SESSION_ENDED, {"reason": "network"})
        ended = [e.reason for e in events if isinstance(e, SessionEndedEvent)]
        assert ended == ["network"]
        # the tunnel comes back: the picker, no reboot, no session opened by itself
        await tunnel.push(UP)
        assert agent.snapshot.state == State.PICKER
        assert agent.snapshot.detail == Detail.NONE
        assert len(sessions.opened) == 1
        assert credentials.issued == 1
        await agent.choose_project("census-2021")  # still verified: no finger
        await until(lambda: agent.snapshot.state == State.RUNNING)
        sensor = agent.sensor
        assert isinstance(sensor, Sensor)
        assert sensor.captures == 1

    asyncio.run(scenario())


def test_a_blip_within_the_grace_reopens_the_session_with_a_fresh_credential_and_no_finger(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent, sessions, events, tunnel, credentials = tunnelled_agent(pki, tmp_path, UP, 30.0)
        await running(agent)
        first = sessions.opened[0]
        await tunnel.push(UNREACHABLE)
        # the client notices the broken transport and ends on its own: its place is kept
        first.end("connection_lost", "The connection to the project's desktop was lost.")
        await until(lambda: agent.snapshot.state == State.CONNECTING)
        assert agent.snapshot.detail == Detail.SESSION_RECONNECTING
        await tunnel.push(UP)
        await until(lambda: agent.snapshot.state == State.RUNNING and len(sessions.opened) == 2)
        assert agent.snapshot.active_project == "census-2021"
        assert credentials.issued == 2  # a fresh one-time credential
        assert sessions.opened[1].credential == "one-time-2"
        # for the researcher the session went on: no end is reported
        assert [e for e in events if isinstance(e, SessionEndedEvent)] == []
        sensor = agent.sensor
        assert isinstance(sensor, Sensor)
        assert sensor.captures == 1

    with caplog.at_level(logging.INFO, logger="sdbox.audit"):
        asyncio.run(scenario())
    assert any(getattr(r, "SDBOX_EVENT", "") == "session_reconnecting" for r in caplog.records)


def test_a_blip_under_a_live_client_replaces_it(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, events, tunnel, credentials = tunnelled_agent(pki, tmp_path, UP, 30.0)
        await running(agent)
        await tunnel.push(TunnelEvent(TunnelState.DOWN, GATEWAY, Reason.NO_NETWORK))
        await tunnel.push(UP)
        await until(lambda: len(sessions.opened) == 2 and agent.snapshot.state == State.RUNNING)
        assert sessions.opened[0].killed
        assert not sessions.opened[1].killed
        assert credentials.issued == 2
        assert [e for e in events if isinstance(e, SessionEndedEvent)] == []

    asyncio.run(scenario())


def test_the_card_pulled_during_the_grace_ends_everything_at_once(pki: Pki, tmp_path: Path) -> None:
    async def scenario() -> None:
        agent, sessions, events, tunnel, credentials = tunnelled_agent(pki, tmp_path, UP, 30.0)
        await running(agent)
        await tunnel.push(UNREACHABLE)
        await agent.card_removed("reader")
        assert sessions.opened[0].killed
        assert agent.snapshot.state == State.IDLE
        await tunnel.push(UP)  # the tunnel back: no session for a card that left
        await asyncio.sleep(0.05)
        assert len(sessions.opened) == 1
        assert credentials.issued == 1
        assert agent.snapshot.state == State.IDLE
        assert [e.reason for e in events if isinstance(e, SessionEndedEvent)] == ["killed"]

    asyncio.run(scenario())


def test_the_greeters_reasons_are_the_tunnels() -> None:
    assert {r.value for r in TunnelReason} == {r.value for r in Reason}
    assert {s.value for s in CentreState} - {"unwatched"} == {s.value for s in TunnelState}


def test_a_daemon_retrying_gateway_after_gateway_is_one_audit_event_per_change(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        agent, _sessions, _events, tunnel, _credentials = tunnelled_agent(pki, tmp_path, UP)
        for _ in range(3):  # the daemon tries both gateways in turn, each as unreachable
            for gateway in (GATEWAY, "192.0.2.3"):
                await tunnel.push(TunnelEvent(TunnelState.CONNECTING, gateway))
                await tunnel.push(TunnelEvent(TunnelState.DOWN, gateway, Reason.GATEWAY_UNREACHABLE))
        assert agent.centre() == CentreChanged(CentreState.DOWN, "gateway_unreachable", "192.0.2.3")
        await tunnel.push(UP)

    with caplog.at_level(logging.INFO, logger="sdbox.audit"):
        asyncio.run(scenario())
    audited = [getattr(r, "SDBOX_EVENT", "") for r in caplog.records
               if getattr(r, "SDBOX_EVENT", "").startswith("tunnel_")]  # fmt: skip
    assert audited == ["tunnel_up", "tunnel_down", "tunnel_up"]


LOST = ("connection_lost", "The connection to the project's desktop was lost.")


def test_a_client_that_loses_its_transport_first_waits_for_the_tunnels_verdict(
    pki: Pki, tmp_path: Path
) -> None:
    """A dead gateway: the client gives up before charon's dead-peer detection does."""

    async def scenario() -> None:
        agent, sessions, events, tunnel, credentials = tunnelled_agent(pki, tmp_path, UP, 30.0)
        await running(agent)
        sessions.opened[0].end(*LOST)  # the tunnel is still said up
        await until(lambda: agent.snapshot.state == State.CONNECTING)
        assert agent.snapshot.detail == Detail.SESSION_RECONNECTING
        await tunnel.push(UNREACHABLE)  # charon's verdict follows
        await tunnel.push(UP)
        await until(lambda: len(sessions.opened) == 2 and agent.snapshot.state == State.RUNNING)
        assert credentials.issued == 2
        assert [e for e in events if isinstance(e, SessionEndedEvent)] == []

    asyncio.run(scenario())


def test_a_lost_transport_under_a_tunnel_that_stays_up_ends_with_the_clients_reason(
    pki: Pki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        agent, sessions, events, _tunnel, credentials = tunnelled_agent(pki, tmp_path, UP, 0.3)
        await running(agent)
        sessions.opened[0].end(*LOST)
        await until(lambda: agent.snapshot.state == State.PICKER)
        snap = agent.snapshot
        assert (snap.detail, snap.detail_args) == (Detail.SESSION_ENDED, {"reason": "connection_lost"})
        assert [e.reason for e in events if isinstance(e, SessionEndedEvent)] == ["connection_lost"]
        assert len(sessions.opened) == 1
        assert credentials.issued == 1

    asyncio.run(scenario())
