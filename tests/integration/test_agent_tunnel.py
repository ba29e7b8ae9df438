"""The agent through the tunnel: card, finger and session across IPsec, as a researcher sees it.

Box and centre in network namespaces (tunnel_env.py: a charon in each, the box
key in swtpm). In the centre, reachable only through the tunnel: the reference
broker (its listening socket made inside the centre's namespace) and an RDP
bubble (``freerdp-shadow-cli3``). In the box: the real ``sdbox agent run``
daemon with ``[tunnel] watch = true`` on the box charon's sockets, the real
pcscd with the emulated card, its session client started there too. The test
process drives the tunnel (as the box's tunnel daemon would) and talks to the
agent over its private D-Bus, reading what the greeter reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from dbus_fast.aio import MessageBus, ProxyInterface
from dbus_fast.errors import DBusError

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH
from sdbox.identity import IdentityConfig
from sdbox.smartcard.emulator.profiles import bubble_dir, issue_card, parse_profile
from sdbox.smartcard.emulator.stack import reader_name
from sdbox.ui.catalogue import translator
from sdbox.ui.view import AgentView, screen_for
from tests.cli import REPO_ROOT
from tests.integration.agent_env import (
    card_profile,
    dbus_daemon,
    publish_crls,
    reference_broker,
    write_config,
)
from tests.integration.conftest import InsertedCard, insert_card
from tests.integration.session_servers import free_port, stop, tool_missing, xvfb
from tests.integration.tpm_env import SoftwareTpm, tpm_identity_config
from tests.integration.tunnel_env import (
    BUBBLE,
    GATEWAY_IDS,
    GATEWAYS,
    Centre,
    Netns,
    TunnelRig,
    centre_rdp_bubble,
    in_netns,
    network_missing,
    provision_box,
    run,
    tunnel_rig,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.network,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        bool(tool_missing("freerdp-shadow-cli3", "xfreerdp3", "Xvfb", "dbus-daemon", "winpr-hash3")),
        reason="the session stack is not installed (make setup)",
    ),
]

PROJECT = "census-2021"
UP_TIMEOUT = 40.0


@dataclass(frozen=True)
class BoxIdentity:
    config: IdentityConfig
    certificate: x509.Certificate


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Centre:
    from sdbox.trust.pki import Pki

    return Centre(Pki.init(tmp_path_factory.mktemp("centre-pki")),
                  Pki.init(tmp_path_factory.mktemp("other-pki")))  # fmt: skip


@pytest.fixture(scope="module")
def box_identity(swtpm: SoftwareTpm, centre: Centre,
                 tmp_path_factory: pytest.TempPathFactory) -> BoxIdentity:  # fmt: skip
    missing = network_missing()
    if missing:
        pytest.skip(f"network namespace tests: {missing}")
    directory = tmp_path_factory.mktemp("box-identity")
    config = replace(
        tpm_identity_config(swtpm, directory, directory / "box.pem"), token_label="agent-tunnel-box"
    )
    return BoxIdentity(config, provision_box(config, centre.pki))


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    with xvfb() as number:
        yield number


@pytest.fixture
def rig(tmp_path: Path, swtpm: SoftwareTpm, box_identity: BoxIdentity,
        centre: Centre) -> Iterator[TunnelRig]:  # fmt: skip
    (tmp_path / "tunnel").mkdir()
    with tunnel_rig(tmp_path / "tunnel", swtpm, box_identity.config, centre,
                    box_identity.certificate) as rig:  # fmt: skip
        yield rig


@dataclass
class Box:
    """The agent daemon in the box namespace, seen over D-Bus as the greeter sees it."""

    iface: ProxyInterface
    card: InsertedCard
    sam: Path  # the bubble's SAM file: the broker rewrites it for each credential it issues
    log: Path
    box: Netns

    async def view(self) -> dict[str, Any]:
        # the properties are read one call at a time: a transition between two calls
        # would give a state that never was (the old state with the new detail), so a
        # view counts only when two reads in a row agree
        previous = await self._read()
        while True:
            current = await self._read()
            if current == previous:
                return current
            previous = current

    async def _read(self) -> dict[str, Any]:
        iface: Any = self.iface
        return {
            "state": await iface.get_state(), "problem": await iface.get_problem(),
            "detail": await iface.get_detail(), "detail_args": await iface.get_detail_args(),
            "centre": await iface.get_centre(), "centre_reason": await iface.get_centre_reason(),
            "centre_gateway": await iface.get_centre_gateway(),
        }  # fmt: skip

    async def until(self, accept: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            seen = await self.view()
            if accept(seen):
                return seen
            if time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-25:])
                raise AssertionError(f"the agent stayed at {seen}\nagent log:\n{tail}")
            await asyncio.sleep(0.2)

    def session_clients(self) -> list[int]:
        """The session clients alive in the box (the namespace is this test's alone)."""
        pids = run("ip", "netns", "pids", self.box.name, check=False).stdout.split()
        clients = []
        for pid in pids:
            with contextlib.suppress(OSError):
                if "freerdp" in Path(f"/proc/{pid}/comm").read_text():
                    clients.append(int(pid))
        return clients

    def credentials_issued(self) -> str:
        return hashlib.sha256(self.sam.read_bytes()).hexdigest()

    def audited(self, event: str) -> int:
        return self.log.read_text(errors="replace").count(f"{event}: ")


@contextlib.asynccontextmanager
async def box_agent(rig: TunnelRig, centre: Centre, display: str, free_reader: int,
                    tmp_path: Path, *, grace_s: float) -> AsyncIterator[Box]:  # fmt: skip
    """Bubble and broker in the centre, the agent in the box, the card in its reader."""
    pki = centre.pki
    port = free_port()
    text = card_profile({PROJECT: port, "health-cohort": free_port()}).replace("127.0.0.1", BUBBLE)
    state = issue_card(parse_profile(text, source="test"), pki, state_path=tmp_path / "card.json")
    source = bubble_dir(pki.path, PROJECT)  # issue_card wrote its certificate for BUBBLE
    with contextlib.ExitStack() as stack:
        bubble = stack.enter_context(centre_rdp_bubble(
            rig.centre_ns, tmp_path / "bubble", source / "server.pem", source / "server.key",
            display, port,
        ))  # fmt: skip
        broker = stack.enter_context(reference_broker(
            tmp_path / "broker", pki, {PROJECT: bubble}, {PROJECT: port}, host=BUBBLE,
            construct=lambda build: in_netns(rig.centre_ns, build),
        ))  # fmt: skip
        publish_crls(pki, tmp_path / "crl")
        extra = (f'\n[card]\nreaders = ["{reader_name(free_reader)}"]\n'
                 f'[tunnel]\nwatch = true\nvici_socket = "{rig.box_charon.paths.vici_socket}"\n'
                 f'notify_socket = "{rig.box_charon.paths.notify_socket}"\ngrace_s = {grace_s}\n')  # fmt: skip
        config = write_config(tmp_path, pki, display=display, broker=broker, extra=extra)
        path = tmp_path / "agent.toml"
        path.write_text(path.read_text().replace('"127.0.0.1:*"', f'"{BUBBLE}:*"'))
        del config
        address = stack.enter_context(dbus_daemon(tmp_path))
        log = tmp_path / "agent.log"
        with log.open("wb") as out:
            agent = subprocess.Popen(
                ["ip", "netns", "exec", rig.box.name, sys.executable, "-m", "sdbox", "agent", "run",
                 "--config", str(path), "--bus", address],
                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )  # fmt: skip
        stack.callback(stop, agent)
        client = await MessageBus(bus_address=address).connect()
        stack.callback(client.disconnect)
        deadline = time.monotonic() + 60
        while True:
            try:
                introspection = await client.introspect(BUS_NAME, OBJECT_PATH)
                break
            except DBusError:
                if agent.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the agent did not start: {log.read_text()[-3000:]}") from None
                await asyncio.sleep(0.2)
        iface = client.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection).get_interface(INTERFACE)
        card = await asyncio.to_thread(insert_card, state, pki, free_reader)
        try:
            yield Box(iface, card, bubble.sam, log, rig.box)
        finally:
            if card.virtual.inserted:
                await asyncio.to_thread(card.remove)


def is_running(seen: dict[str, Any]) -> bool:
    return bool(seen["state"] == "running")


async def start_session(box: Box) -> None:
    await box.until(lambda s: s["state"] == "picker")
    await box.iface.call_choose_project(PROJECT)  # type: ignore[attr-defined]
    await box.until(is_running)


def test_a_session_through_the_tunnel_ends_with_reason_network_and_the_picker_returns(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre, display: str, free_reader: int,
    tmp_path: Path,
) -> None:  # fmt: skip
    rig.configure_gateways()
    rig.configure_box(box_identity.config)

    async def scenario() -> None:
        async with box_agent(rig, centre, display, free_reader, tmp_path, grace_s=4) as box:
            seen = await box.until(lambda s: s["centre"] == "connecting")
            assert seen["centre_reason"] == ""
            rig.start_tunnel(gateways=1)
            seen = await box.until(lambda s: s["centre"] == "up", UP_TIMEOUT)
            assert seen["centre_gateway"] == GATEWAYS[0]
            await start_session(box)
            # the credential came from the broker in the centre, through the tunnel
            assert box.sam.read_text().startswith("researcher:")
            clients = box.session_clients()
            assert len(clients) == 1
            # the tunnel is cut for longer than the grace period: the session ends
            rig.box.ip("link", "set", "eth0", "down")
            seen = await box.until(lambda s: s["state"] == "picker" and s["detail"] == "session_ended")
            assert seen["detail_args"] == {"reason": "network"}
            assert (seen["centre"], seen["centre_reason"]) == ("down", "no_network")
            assert box.session_clients() == []  # no orphan client
            assert box.audited("tunnel_down") >= 1
            # the greeter says it
            shown = screen_for(AgentView(**seen), translator("en"))
            assert shown.body.startswith("The connection to the centre was lost for too long")
            assert shown.hint.startswith("The centre cannot be reached. This box has no network")
            # the path comes back: the tunnel, then the picker, no reboot
            rig.box.ip("link", "set", "eth0", "up")
            seen = await box.until(lambda s: s["centre"] == "up" and s["detail"] == "", UP_TIMEOUT)
            assert seen["state"] == "picker"
            assert box.audited("tunnel_up") >= 2

    asyncio.run(scenario())


def test_a_blip_shorter_than_the_grace_reopens_the_session_without_a_finger(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre, display: str, free_reader: int,
    tmp_path: Path,
) -> None:  # fmt: skip
    rig.configure_gateways()
    rig.configure_box(box_identity.config)

    async def scenario() -> None:
        async with box_agent(rig, centre, display, free_reader, tmp_path, grace_s=60) as box:
            rig.start_tunnel(gateways=1)
            await box.until(lambda s: s["centre"] == "up", UP_TIMEOUT)
            await start_session(box)
            first_client, first_credential = box.session_clients(), box.credentials_issued()
            rig.box.ip("link", "set", "eth0", "down")
            await box.until(lambda s: s["centre"] == "down")
            rig.box.ip("link", "set", "eth0", "up")
            await box.until(lambda s: s["centre"] == "up", UP_TIMEOUT)
            await box.until(lambda s: is_running(s) and box.session_clients() not in ([], first_client))
            assert box.credentials_issued() != first_credential  # a fresh one-time credential
            assert box.audited("holder_verified") == 1  # the finger once, for both sessions
            assert box.audited("session_reconnecting") == 1
            assert len(box.session_clients()) == 1  # the old client is gone

    asyncio.run(scenario())


def test_a_refused_gateway_reaches_the_greeters_detail_and_nothing_reaches_the_broker(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre, display: str, free_reader: int,
    tmp_path: Path,
) -> None:  # fmt: skip
    # the gateway presents a certificate from another organisation's CA
    rig.configure_gateways({1: centre.gateway_certificate(GATEWAY_IDS[0], pki=centre.other_pki)})
    rig.configure_box(box_identity.config)

    async def scenario() -> None:
        async with box_agent(rig, centre, display, free_reader, tmp_path, grace_s=20) as box:
            rig.start_tunnel(gateways=1)
            seen = await box.until(lambda s: s["centre"] == "refused", UP_TIMEOUT)
            assert (seen["centre_reason"], seen["centre_gateway"]) == (
                "gateway_certificate_refused", GATEWAYS[0]
            )  # fmt: skip
            await box.until(lambda s: s["state"] == "picker")  # the picker is still shown
            await box.iface.call_choose_project(PROJECT)  # type: ignore[attr-defined]
            seen = await box.until(lambda s: s["problem"] != "")
            assert (seen["state"], seen["problem"], seen["detail"]) == (
                "picker", "centre_unreachable", "tunnel_down"
            )  # fmt: skip
            assert seen["detail_args"] == {"reason": "gateway_certificate_refused",
                                           "gateway": GATEWAYS[0]}  # fmt: skip
            assert box.sam.read_text() == ""  # nothing was asked of the broker
            assert box.audited("holder_verified") == 0  # no finger asked for nothing
            assert box.audited("tunnel_refused") == 1
            shown = screen_for(AgentView(**seen), translator("fr"))
            assert shown.title == "Le centre est injoignable"
            assert "celle du centre. Ne contournez pas" in shown.body

    asyncio.run(scenario())


def test_a_killed_gateway_ends_the_session_as_unreachable_and_its_return_brings_the_picker(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre, display: str, free_reader: int,
    tmp_path: Path,
) -> None:  # fmt: skip
    rig.configure_gateways()
    rig.configure_box(box_identity.config)

    async def scenario() -> None:
        async with box_agent(rig, centre, display, free_reader, tmp_path, grace_s=8) as box:
            rig.start_tunnel(gateways=1)
            await box.until(lambda s: s["centre"] == "up", UP_TIMEOUT)
            await start_session(box)
            # the gateway dies without a word: the RDP client gives up on its unanswered TCP
            # (9 s) before charon's dead-peer detection (2 s + 9.5 s of retransmissions) says
            # the tunnel is down, and why (its alert, not a route); the grace period counts
            # from the client's end
            rig.centre_charon.kill()
            seen = await box.until(lambda s: s["detail"] == "session_reconnecting")
            assert seen["state"] == "connecting"
            seen = await box.until(lambda s: s["state"] == "picker" and s["detail"] == "session_ended")
            assert seen["detail_args"] == {"reason": "network"}
            assert (seen["centre"], seen["centre_reason"]) == ("down", "gateway_unreachable")
            assert box.session_clients() == []
            await asyncio.to_thread(rig.centre_charon.start)
            await asyncio.to_thread(rig.configure_gateways)
            seen = await box.until(lambda s: s["centre"] == "up" and s["detail"] == "", 90)
            assert seen["state"] == "picker"

    asyncio.run(scenario())
