"""`make soak`: insert/remove cycles with removal at chosen points, pcscd restarts, bubble deaths.

The agent is the real daemon (`sdbox agent run`) in a process of its own, on
a private D-Bus, with the reference broker issuing each session's one-time
credential; the soak drives it as the greeter does (D-Bus) and pulls the
emulated card from the real pcscd's reader.

Checks after every cycle: the agent is back to idle (no hang), and no session
process of the agent (client or reaper) is left alive, including a client
that was still being started when the card left. At the end: the agent
process's open file descriptors and resident memory, both measured on that
process while it runs (after warm-up and at the end), did not grow beyond a
stated bound; and every fault kind was *reached* (the fault fired, the state
was the one aimed at when the card left) at least a minimum number of times:
a soak that never exercised a kind fails rather than reporting it as fine.
``--cycles N`` (CI runs a short soak; 500 on demand), ``--seed S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus, ProxyInterface

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.faults import parse_fault
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki
from tests.integration.agent_env import (
    card_profile,
    dbus_daemon,
    publish_crls,
    rdp_bubble,
    reference_broker,
    until,
    write_config,
)
from tests.integration.session_servers import free_port, user_descendants, xvfb

FD_BOUND = 8  # descriptors: a few may be cached (pcscd contexts, bus) after warm-up
RSS_BOUND_MB = 25.0
WARMUP = 5
SESSION_USER = "sdbox-session"

# Where a card may be pulled: (kind, emulator fault or None for a pull timed on a state).
FAULT_POINTS: dict[str, str] = {
    "listing": "remove:ins=cb,object=5fff40",
    "verify": "remove:ins=20,p2=96,nth=2",  # the first VERIFY 96 is the listing's status read
    "validation": "remove:ins=87,p2=82",
    "certificate read": "remove:ins=cb,object=5fc10d",
}
# A timed pull waits for the first state, then for a random delay up to the given seconds, and
# is reached when the agent was in the second state as it took the removal. "session start"
# pulls during validation so that pcscd's removal event (it takes ~0.1-0.4 s to notice) lands
# while the client is being spawned, before the agent knows its pid.
TIMED_POINTS: dict[str, tuple[str, float, str]] = {
    "session start": ("validating", 0.3, "connecting"),
    "running session": ("running", 0.3, "running"),
}
STARTING_LINE = "the card left while the session client was starting"
KINDS = [*FAULT_POINTS, *TIMED_POINTS]


@dataclass
class Tally:
    """What the soak aimed at, and what it reached."""

    chosen: Counter[str] = field(default_factory=Counter)
    reached: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # restarts, deaths, clients ...


class AgentView:
    """The agent's state as the greeter sees it: StateChanged signals on the bus."""

    def __init__(self) -> None:
        self.state = ""
        self.readings = 0
        self.before_idle = ""  # the state the agent left for idle last time (a pull's point)

    def on_state(self, state: str, *_rest: Any) -> None:
        if state == "idle":
            self.before_idle = self.state
        self.state = state
        if state == "reading":
            self.readings += 1


def descendants(root: int) -> dict[int, str]:
    """Live processes of the session user under ``root``: pid -> command name."""
    return user_descendants(root, SESSION_USER)


def clients_of(agent_pid: int) -> set[int]:
    """The session clients (not their reapers, which run Python) under the agent."""
    return {p for p, name in descendants(agent_pid).items() if not name.startswith("python")}


def proc_figures(pid: int) -> tuple[int, float]:
    """Open descriptors and resident MB of process ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return fds, int(line.split()[1]) / 1024
    return fds, 0.0


async def connect_bus(address: str, agent: subprocess.Popen[bytes]) -> tuple[Any, ProxyInterface]:
    """The greeter's view of the agent, once its name is on the bus."""
    bus = await MessageBus(bus_address=address).connect()
    deadline = time.monotonic() + 60
    while True:
        try:
            introspection = await bus.introspect(BUS_NAME, OBJECT_PATH)
            break
        except Exception:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not come up on the bus (see agent.log)") from None
            await asyncio.sleep(0.1)
    proxy = bus.get_proxy_object(BUS_NAME, OBJECT_PATH, introspection)
    return bus, proxy.get_interface(INTERFACE)


async def soak(
    cycles: int,
    seed: int,
    daemon: PcscDaemon | None,
    work: Path,
    pki: Pki,
    env: dict[str, Any],
) -> dict[str, object]:
    """Run ``cycles`` cycles; ``daemon`` None: never restart pcscd."""
    rng = random.Random(seed)  # noqa: S311  (test schedule, not a secret)
    servers, ports, respawn = env["servers"], env["ports"], env["respawn"]
    tally = Tally()
    view = AgentView()
    log = Path(os.environ.get("SOAK_LOG", work / "agent.log")).open("wb")  # noqa: SIM115
    agent = subprocess.Popen(
        [sys.executable, "-m", "sdbox", "agent", "run", "--config", str(work / "agent.toml"),
         "--bus", env["bus"]],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    baseline: tuple[int, float] | None = None
    deck: list[str] = []
    try:
        bus, iface = await connect_bus(env["bus"], agent)
        iface.on_state_changed(view.on_state)  # type: ignore[attr-defined]
        restart_every = max(5, min(50, cycles // 3))  # at least twice in CI's 40 cycles
        for cycle in range(cycles):
            if cycle == WARMUP:
                baseline = proc_figures(agent.pid)
            if daemon is not None and cycle and cycle % restart_every == 0:
                if not daemon.owned or daemon.shared:
                    raise AssertionError(
                        "pcscd is shared with another run, so the soak cannot restart it: "
                        "run the soak alone"
                    )
                await asyncio.to_thread(daemon.restart)
                tally.events["pcscd restarts"] += 1
            if not deck:  # every kind equally often, in a random order
                deck = KINDS * 2
                rng.shuffle(deck)
            kind = deck.pop()
            tally.chosen[kind] += 1
            await one_cycle(cycle, kind, rng, iface, view, agent.pid, tally, env)
            if agent.poll() is not None:
                raise AssertionError(f"cycle {cycle} ({kind}): the agent died (see agent.log)")
        end = proc_figures(agent.pid)
        log.flush()
        tally.events["pulled before the agent knew the client's pid"] = sum(
            STARTING_LINE in line
            for line in Path(log.name).read_text(errors="replace").splitlines()
        )
    finally:
        with contextlib.suppress(Exception):
            bus.disconnect()
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
        del servers, ports, respawn
    base = baseline or end
    return {
        "cycles": cycles,
        "chosen": dict(tally.chosen),
        "reached": dict(tally.reached),
        **dict(tally.events),
        "fd_growth": end[0] - base[0],
        "rss_growth_mb": round(end[1] - base[1], 1),
        "agent_rss_mb": round(end[1], 1),
    }


async def one_cycle(
    cycle: int,
    kind: str,
    rng: random.Random,
    iface: ProxyInterface,
    view: AgentView,
    agent_pid: int,
    tally: Tally,
    env: dict[str, Any],
) -> None:
    """Insert a fresh card, pull it at ``kind``, and check the agent is back and alone."""
    reader = reader_name(env["index"])
    state = issue_card(parse_profile(card_profile(env["ports"]), source="soak"), env["pki"])
    card = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + env["index"])
    fault = parse_fault(FAULT_POINTS[kind]) if kind in FAULT_POINTS else None
    if fault is not None:
        card.add_fault(fault)
    readings = view.readings
    await asyncio.to_thread(card.insert)
    await until(lambda: view.readings > readings, 30)  # the agent saw this card
    if kind != "listing":
        await until(lambda: view.state in ("picker", "idle", "blocked"), 30)
        if view.state == "picker":
            # the faults aim at census-2021's slot (82) and certificate (5FC10D)
            project = "census-2021" if fault else rng.choice(["census-2021", "health-cohort"])
            await iface.call_choose_project(project)  # type: ignore[attr-defined]
    if kind in TIMED_POINTS:
        start, delay, target = TIMED_POINTS[kind]
        try:
            await until(lambda: view.state in (start, target), 30)
        except TimeoutError:
            raise AssertionError(
                f"cycle {cycle} ({kind}): the agent never reached {start} (it is {view.state})"
            ) from None
        if start == "running" and rng.random() < 0.2:
            await bubble_dies(iface, view, tally, env)
        await asyncio.sleep(rng.uniform(0, delay))
        tally.events["clients seen at a pull"] += len(clients_of(agent_pid))
        await asyncio.to_thread(card.remove)
    try:
        await until(lambda: view.state == "idle", 30)
    except TimeoutError:
        raise AssertionError(
            f"cycle {cycle} ({kind}): the agent hangs in {view.state}; card inserted={card.inserted}"
        ) from None
    fired = fault is not None and fault.fired > 0
    if fired or (kind in TIMED_POINTS and view.before_idle == TIMED_POINTS[kind][2]):
        tally.reached[kind] += 1
    await asyncio.to_thread(card.remove)
    await asyncio.to_thread(wait_for_card, reader, present=False)
    try:
        await until(lambda: not descendants(agent_pid), 10)
    except TimeoutError:
        raise AssertionError(
            f"cycle {cycle} ({kind}): session processes survive the pull: {descendants(agent_pid)}"
        ) from None
    if os.environ.get("SOAK_DEBUG"):
        print(f"cycle {cycle} {kind}: state {view.state}", flush=True)


async def bubble_dies(
    iface: ProxyInterface, view: AgentView, tally: Tally, env: dict[str, Any]
) -> None:
    """The bubble dies under a running session: the researcher is back at the picker."""
    project = str(await iface.get_active_project())  # type: ignore[attr-defined]
    servers = env["servers"]
    os.kill(servers[project].process.pid, signal.SIGKILL)
    await until(lambda: view.state == "picker", 30)
    servers[project] = env["respawn"](project)
    tally.events["bubble deaths"] += 1
    # back to a running session, so that the timed pull still meets one
    await iface.call_choose_project(project)  # type: ignore[attr-defined]
    await until(lambda: view.state == "running", 30)


def minimum_reached(cycles: int) -> int:
    """How many times each kind must be reached: a fair share, with a floor of 2."""
    return max(2, cycles // (len(KINDS) * 3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-restarts", action="store_true",
        help="do not restart pcscd (a run beside other pcscd users); said in the report",
    )  # fmt: skip
    args = parser.parse_args()
    daemon = PcscDaemon()
    daemon.start()
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            reserve_reader() as index,
            xvfb() as display,
            contextlib.ExitStack() as stack,
        ):
            work = Path(tmp)
            work.chmod(0o755)  # the session user makes its homes under it; no secret here
            pki = Pki.init(work / "pki")
            ports = {"census-2021": free_port(), "health-cohort": free_port()}
            issue_card(parse_profile(card_profile(ports), source="soak"), pki)

            def respawn(project: str) -> Any:
                return stack.enter_context(
                    rdp_bubble(work / project, pki, project, display, ports[project])
                )

            servers = {p: respawn(p) for p in ports}
            broker = stack.enter_context(
                reference_broker(work / "broker", pki, dict(servers), ports)
            )
            publish_crls(pki, work / "crl")
            bus = stack.enter_context(dbus_daemon(work))
            write_config(
                work, pki, display=display, broker=broker,
                extra=f'[card]\nreaders = ["{reader_name(index)}"]\n',
            )  # fmt: skip
            env = {"index": index, "servers": servers, "ports": ports, "respawn": respawn,
                   "bus": bus, "pki": pki}  # fmt: skip
            result = asyncio.run(
                soak(args.cycles, args.seed, None if args.no_restarts else daemon, work, pki, env)
            )
    finally:
        daemon.cleanup()
    print(f"soak: {result['cycles']} cycles in {time.monotonic() - started:.0f} s")
    for key, value in result.items():
        print(f"  {key}: {value}")
    need = minimum_reached(args.cycles)
    reached = dict(result["reached"])  # type: ignore[call-overload]
    short = [k for k in KINDS if reached.get(k, 0) < need]
    restarts = int(str(result.get("pcscd restarts", 0)))
    if args.no_restarts:
        print("  pcscd restarts: not attempted (--no-restarts)")
    checks = {
        f"agent fd growth <= {FD_BOUND}": int(str(result["fd_growth"])) <= FD_BOUND,
        f"agent RSS growth <= {RSS_BOUND_MB} MB": float(str(result["rss_growth_mb"]))
        <= RSS_BOUND_MB,
        f"each kind reached >= {need} times": not short,
        "pcscd restarted": restarts > 0 or args.cycles <= 5 or args.no_restarts,
    }
    for name, passed in checks.items():
        print(f"  check: {name}: {'ok' if passed else 'FAILED'}")
    if short:
        print(f"  kinds reached too rarely: {', '.join(short)}")
    ok = all(checks.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
