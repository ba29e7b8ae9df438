"""The agent on the real stack: pcscd + emulated card, RDP bubbles, D-Bus, sessions.

Each test drives the agent the way the greeter does (over D-Bus) and checks
what the researcher would see: the state, the problem, the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dbus_fast.aio import MessageBus, ProxyInterface
from dbus_fast.errors import DBusError

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH, State
from sdbox.agent.card import ReaderWatcher
from sdbox.agent.config import AgentConfig
from sdbox.agent.dbus import export
from sdbox.agent.events import Transition
from sdbox.agent.machine import Agent
from sdbox.agent.service import build_agent
from sdbox.smartcard.emulator.faults import parse_fault
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.smartcard.profile import ObjectTag
from sdbox.trust.pki import Pki
from tests.integration.agent_env import (
    RdpBubble,
    StandInBroker,
    card_profile,
    dbus_daemon,
    publish_crls,
    rdp_bubble,
    until,
    write_config,
)
from tests.integration.conftest import InsertedCard, insert_card
from tests.integration.session_servers import free_port, pid_alive, tool_missing, xvfb

pytestmark = pytest.mark.skipif(
    bool(tool_missing("freerdp-shadow-cli3", "xfreerdp3", "Xvfb", "dbus-daemon", "winpr-hash3")),
    reason="the session stack is not installed (make setup)",
)


@dataclass
class Bubbles:
    display: str
    ports: dict[str, int]
    servers: dict[str, RdpBubble] = field(default_factory=dict)


@pytest.fixture(scope="module")
def bubbles(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bubbles]:
    """Xvfb and one RDP bubble per project, with the PKI's server certificates."""
    ports = {"census-2021": free_port(), "health-cohort": free_port()}
    work = tmp_path_factory.mktemp("bubbles")
    # the PKI's bubble certificates are written when a card is issued
    issue_card(parse_profile(card_profile(ports), source="test"), pki)
    with xvfb() as display, contextlib.ExitStack() as stack:
        env = Bubbles(display, ports)
        for project, port in ports.items():
            env.servers[project] = stack.enter_context(
                rdp_bubble(work / project, pki, project, display, port)
            )
        yield env


@dataclass
class Running:
    agent: Agent
    card: InsertedCard
    iface: ProxyInterface
    events: list[Transition]
    config: AgentConfig
    bus_address: str = ""


async def _wait(agent: Agent, state: State, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while agent.snapshot.state != state:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"agent stayed in {agent.snapshot.state} ({agent.snapshot.message}), not {state}"
            )
        await asyncio.sleep(0.05)


_wait_for = until


@contextlib.asynccontextmanager
async def running_agent(
    pki: Pki,
    bubbles: Bubbles,
    free_reader: int,
    tmp_path: Path,
    *,
    sensor: str | None = None,
    tamper: bool = False,
    fault: str | None = None,
    valid_days: int | None = None,
    sensor_port: Any = None,
    broker: Any = None,
    connect_timeout_s: float = 30.0,
    bus_dir: Path | None = None,
    extra_config: str = "",
    keygen_seed: bytes | None = None,
    enrolment: Any = None,
) -> AsyncIterator[Running]:
    from sdbox.smartcard.emulator.stack import reader_name

    profile_text = card_profile(bubbles.ports)
    if valid_days is not None:  # the first project (census-2021) gets this validity
        profile_text = profile_text.replace(
            'second_factor = "finger"\n',
            f'second_factor = "finger"\nvalid_days = {valid_days}\n',
            1,
        )
    state = issue_card(
        parse_profile(profile_text, source="test"), pki, state_path=tmp_path / "card.json",
        keygen_seed=keygen_seed,
    )  # fmt: skip
    if tamper:
        value = state.objects[ObjectTag.DIRECTORY]
        state.objects[ObjectTag.DIRECTORY] = value.replace(b"Census", b"CENSUS")
    publish_crls(pki, tmp_path / "crl")
    kwargs: dict[str, Any] = {
        "display": bubbles.display, "connect_timeout_s": connect_timeout_s, "extra": extra_config,
    }  # fmt: skip
    if sensor is not None:
        kwargs["sensor"] = sensor
    config = write_config(tmp_path, pki, **kwargs)
    if broker is not None:
        kwargs["broker"] = broker
        config = write_config(tmp_path, pki, **kwargs)
    overrides: dict[str, Any] = (
        {} if broker is not None else {"credentials": StandInBroker(bubbles.servers)}
    )
    if sensor_port is not None:
        overrides["sensor"] = sensor_port
    if enrolment is not None:  # remote enrolment's flow factory (tests/integration/bioenrol_env.py)
        overrides["enrolment"] = enrolment
    agent = build_agent(config, **overrides)
    events: list[Transition] = []
    agent.listeners.append(lambda e: events.append(e) if isinstance(e, Transition) else None)
    with dbus_daemon(bus_dir or tmp_path) as address:
        service_bus = await export(agent, address)
        client = await MessageBus(bus_address=address).connect()
        introspection = await client.introspect(BUS_NAME, OBJECT_PATH)
        iface = client.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(
            INTERFACE
        )
        watcher = ReaderWatcher(
            asyncio.get_running_loop(), agent.on_reader_event, [reader_name(free_reader)]
        )
        watcher.start()
        card: InsertedCard | None = None
        try:
            card = await asyncio.to_thread(insert_card, state, pki, free_reader, fault=fault)
            yield Running(agent, card, iface, events, config, address)
        finally:
            # also when the insertion failed: the agent and both bus clients
            # must be gone before the bus daemon is
            await agent.shutdown()
            await asyncio.to_thread(watcher.stop)
            if card is not None and card.virtual.inserted:
                await asyncio.to_thread(card.remove)
            client.disconnect()
            service_bus.disconnect()


def test_insert_choose_switch_remove(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            agent, iface = run.agent, run.iface
            await _wait(agent, State.PICKER)
            projects = await iface.get_projects()  # type: ignore[attr-defined]
            assert [p[0] for p in projects] == ["census-2021", "health-cohort"]
            assert all(p[5] == "ready" and p[6] for p in projects)
            assert await iface.get_tries_left() == 5  # type: ignore[attr-defined]
            # the renewal timer learns the card's expiries (public data) from the listing
            seen = json.loads((run.config.state_dir / "renewal" / "seen.json").read_text())
            assert set(seen[run.card.state.guid.hex()]) == {"census-2021", "health-cohort"}

            await iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(agent, State.RUNNING)
            first = agent._session
            assert first is not None
            assert first.pid is not None
            first_pid = first.pid
            assert os.stat(f"/proc/{first_pid}").st_uid != 0  # runs as the session user, not root
            assert await iface.get_active_project() == "census-2021"  # type: ignore[attr-defined]
            # after holder verification the agent holds the card: no other program gets in
            from sdbox.smartcard import pcsc
            from sdbox.smartcard.errors import CardBusy

            with pytest.raises(CardBusy):
                await asyncio.to_thread(pcsc.connect, run.card.reader)

            await iface.call_switch("health-cohort")  # type: ignore[attr-defined]
            await _wait(agent, State.CONNECTING, timeout=10)
            await _wait(agent, State.RUNNING)
            assert await iface.get_active_project() == "health-cohort"  # type: ignore[attr-defined]
            assert not pid_alive(first_pid)
            second_pid = agent._session.pid  # type: ignore[union-attr]
            # the holder stayed verified across the switch: one finger for two sessions
            states = [e.state for e in run.events]
            assert states.count(State.VERIFYING) == 1

            await asyncio.to_thread(run.card.remove)
            await _wait(agent, State.IDLE, timeout=10)
            assert second_pid is not None
            assert not pid_alive(second_pid)
            assert await iface.get_state() == "idle"  # type: ignore[attr-defined]
            assert bubbles.servers["census-2021"].issued
            assert bubbles.servers["health-cohort"].issued

    asyncio.run(scenario())


def test_tampered_directory_blocks_the_card(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path, tamper=True) as run:
            await _wait(run.agent, State.BLOCKED)
            assert await run.iface.get_problem() == "directory_untrusted"  # type: ignore[attr-defined]
            assert "signature does not verify" in await run.iface.get_message()  # type: ignore[attr-defined]
            with pytest.raises(DBusError, match="insert your card first"):
                await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_wrong_finger_until_blocked(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        sensor = 'kind = "emulated"\nseed = 4242'  # somebody else's finger
        async with running_agent(pki, bubbles, free_reader, tmp_path, sensor=sensor) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.VERIFYING)
            deadline = time.monotonic() + 30
            while (
                run.agent.snapshot.problem is None
                or run.agent.snapshot.problem.value != "finger_blocked"
            ):
                assert time.monotonic() < deadline, run.agent.snapshot
                await asyncio.sleep(0.05)
            tries = [
                e.tries_left
                for e in run.events
                if e.problem is not None and e.problem.value == "wrong_finger"
            ]
            assert tries == [4, 3, 2, 1]
            assert run.agent.snapshot.state == State.PICKER
            assert run.card.state.fingers[0x96].tries == 0
            assert run.agent._session is None

    asyncio.run(scenario())


def test_pin_only_where_the_project_allows_it(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(
            pki, bubbles, free_reader, tmp_path, sensor='kind = "none"'
        ) as run:
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.VERIFYING)
            with pytest.raises(DBusError, match="does not accept the PIN"):
                await run.iface.call_submit_pin("123456")  # type: ignore[attr-defined]
            await run.iface.call_cancel()  # type: ignore[attr-defined]
            await _wait(run.agent, State.PICKER)
            await run.iface.call_choose_project("health-cohort")  # type: ignore[attr-defined]
            await _wait(run.agent, State.VERIFYING)
            await run.iface.call_submit_pin("123456")  # type: ignore[attr-defined]
            await _wait(run.agent, State.RUNNING)

    asyncio.run(scenario())


def test_card_pulled_during_validation_leaves_no_session(
    pki: Pki, bubbles: Bubbles, free_reader: int, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_agent(pki, bubbles, free_reader, tmp_path) as run:
            await _wait(run.agent, State.PICKER)
            # pulled at the possession proof (ECDH = GENERAL AUTHENTICATE on a project slot)
            run.card.virtual.add_fault(parse_fault("remove:ins=87,p2=82"))
            await run.iface.call_choose_project("census-2021")  # type: ignore[attr-defined]
            await _wait(run.agent, State.IDLE, timeout=30)
            assert run.agent._session is None
            assert run.agent.snapshot.projects == []

    asyncio.run(scenario())


def run_daemon(tmp_path: Path, watchdogs: int = 3) -> tuple[list[str], str]:
    """``sdbox agent run`` under a NOTIFY_SOCKET listener until ``watchdogs`` pings.

    Returns the notify messages and the agent's stderr (after a clean SIGTERM stop).
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify"
    listener.bind(str(notify_path))
    listener.settimeout(30)
    messages: list[str] = []
    with dbus_daemon(tmp_path) as address:
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
        agent = subprocess.Popen(
            [sys.executable, "-m", "sdbox", "agent", "run", "--config", str(tmp_path / "agent.toml"), "--bus", address],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            while sum(m == "WATCHDOG=1" for m in messages) < watchdogs:
                messages.append(listener.recv(4096).decode())
        finally:
            agent.terminate()
            _out, err = agent.communicate(timeout=20)
    listener.close()
    assert agent.returncode == 0, err
    return messages, err.decode(errors="replace")


def test_daemon_notifies_ready_and_feeds_the_watchdog(
    pki: Pki, bubbles: Bubbles, tmp_path: Path
) -> None:
    publish_crls(pki, tmp_path / "crl")
    write_config(tmp_path, pki, display=bubbles.display, provider="interactive")
    messages, err = run_daemon(tmp_path)
    assert any(m.startswith("READY=1") for m in messages)
    assert "agent stopped" in err
    # the interactive provider needs no box identity: nothing is said of one
    assert "box identity" not in err
    assert "box_identity_checked" not in err
    started = [line for line in err.splitlines() if "agent_started:" in line]
    assert len(started) == 1, err
    assert "provider=interactive" in started[0]
    assert "agent_stopped: the agent stopped (reason=signal)" in err


def test_daemon_says_at_start_that_its_box_identity_works(
    pki: Pki, bubbles: Bubbles, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "box-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert = pki.issue_box(key.public_key(), box_id="probe-box-7")
    (tmp_path / "box.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    publish_crls(pki, tmp_path / "crl")
    identity = (
        f'[identity]\nkind = "development"\nkey_file = "{tmp_path / "box-key.pem"}"\n'
        f'certificate = "{tmp_path / "box.pem"}"\n'
    )
    write_config(tmp_path, pki, display=bubbles.display, extra=identity)
    messages, err = run_daemon(tmp_path)
    assert any(m.startswith("READY=1") for m in messages)
    said = [line for line in err.splitlines() if "box identity:" in line]
    assert len(said) == 1, err
    assert "probe-box-7, DEVELOPMENT software key signs and matches its certificate" in said[0]
    assert f"valid until {cert.not_valid_after_utc:%Y-%m-%d}" in said[0]
    # the development key says so in the line that uses it
    assert "DEVELOPMENT box identity (software key) used for" in err
    checked = [line for line in err.splitlines() if "box_identity_checked:" in line]
    assert len(checked) == 1, err
    assert "outcome=ok box=sdbox box probe-box-7 identity=development" in checked[0]


def test_daemon_without_its_box_identity_says_so_and_still_runs(
    pki: Pki, bubbles: Bubbles, tmp_path: Path
) -> None:
    publish_crls(pki, tmp_path / "crl")
    identity = f'[identity]\nkind = "tpm"\ncertificate = "{tmp_path / "absent" / "box.pem"}"\n'
    write_config(tmp_path, pki, display=bubbles.display, extra=identity)
    messages, err = run_daemon(tmp_path)
    # READY all the same: the greeter runs and can say why no session starts
    assert any(m.startswith("READY=1") for m in messages)
    assert "the box identity is not usable" in err
    assert "is missing: the box is not enrolled" in err
    assert "Traceback" not in err
    checked = [line for line in err.splitlines() if "box_identity_checked:" in line]
    assert len(checked) == 1, err
    assert "outcome=failed identity=tpm reason=" in checked[0]


__all__ = ["json"]
