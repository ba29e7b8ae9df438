"""`make soak`: insert/remove cycles with removal at random points, pcscd restarts, bubble deaths.

Checks after every cycle: the agent is back to idle (no hang), no session
client is left alive; at the end: the agent's open file descriptors and
resident memory did not grow beyond a stated bound after warm-up. Prints the
figures. ``--cycles N`` (CI runs a short soak; 500 on demand), ``--seed S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdbox.agent.api import State
from sdbox.agent.card import ReaderWatcher
from sdbox.agent.service import build_agent
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.faults import parse_fault
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki
from tests.integration.agent_env import (
    StandInBroker,
    card_profile,
    publish_crls,
    rdp_bubble,
    until,
    write_config,
)
from tests.integration.session_servers import free_port, pid_alive, xvfb

FD_BOUND = 8  # descriptors: a few may be cached (pcscd contexts, bus) after warm-up
RSS_BOUND_MB = 25.0
WARMUP = 5

# where a card may be pulled: (name, fault or None for a timed pull, wait for state)
POINTS: list[tuple[str, str | None, State | None]] = [
    ("listing", "remove:ins=cb,object=5fff40", None),
    ("verify", "remove:ins=20,p2=96,nth=2", None),
    ("validation", "remove:ins=87,p2=82", None),
    ("certificate read", "remove:ins=cb,object=5fc10d", None),
    ("session start", None, State.CONNECTING),
    ("running session", None, State.RUNNING),
]


def _more(seen: dict[str, int], before: int) -> bool:
    return seen["reading"] > before


def _in_state(agent: Any, state: State) -> bool:
    return bool(agent.snapshot.state == state)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(
    cycles: int,
    seed: int,
    daemon: PcscDaemon,
    work: Path,
    pki: Pki,
    display: str,
    servers: dict[str, Any],
    ports: dict[str, int],
    index: int,
    respawn: Callable[[str], Any],
) -> dict[str, object]:
    rng = random.Random(seed)  # noqa: S311  (test schedule, not a secret)
    publish_crls(pki, work / "crl")
    config = write_config(work, pki, display=display, extra="")
    agent = build_agent(config, credentials=StandInBroker(servers))
    reader = reader_name(index)
    watcher = ReaderWatcher(asyncio.get_running_loop(), agent.on_reader_event, [reader])
    seen = {"reading": 0}
    agent.listeners.append(
        lambda e: (
            seen.__setitem__("reading", seen["reading"] + 1)
            if getattr(e, "state", None) == State.READING
            else None
        )
    )
    watcher.start()
    counts = {name: 0 for name, _f, _s in POINTS} | {"pcscd restarts": 0, "bubble deaths": 0}
    baseline: tuple[int, float] | None = None
    clients: list[int] = []
    try:
        for cycle in range(cycles):
            if cycle == WARMUP:
                baseline = (_fds(), _rss_mb())
            # every 50 cycles, and at least twice in a short run (CI's 40)
            restart_every = max(5, min(50, cycles // 3))
            if daemon.owned and not daemon.shared and cycle and cycle % restart_every == 0:
                await asyncio.to_thread(daemon.restart)
                counts["pcscd restarts"] += 1
            name, fault, wait = POINTS[rng.randrange(len(POINTS))]
            t0 = time.monotonic()
            counts[name] += 1
            state = issue_card(parse_profile(card_profile(ports), source="soak"), pki)
            card = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + index)
            if fault:
                card.add_fault(parse_fault(fault))
            readings = seen["reading"]
            await asyncio.to_thread(card.insert)
            await until(functools.partial(_more, seen, readings), 30)  # the agent saw this card
            if name != "listing":
                await until(lambda: agent.snapshot.state in (State.PICKER, State.IDLE), 30)
                if agent.snapshot.state == State.PICKER:
                    # the faults aim at census-2021's slot (82) and certificate (5FC10D)
                    project = (
                        "census-2021" if fault else rng.choice(["census-2021", "health-cohort"])
                    )
                    await agent.choose_project(project)
            if wait is not None:
                with contextlib.suppress(TimeoutError):
                    await until(functools.partial(_in_state, agent, wait), 30)
                if agent._session is not None and agent._session.pid:
                    clients.append(agent._session.pid)
                if (
                    wait == State.RUNNING
                    and agent.snapshot.state == State.RUNNING
                    and rng.random() < 0.2
                ):
                    # the bubble dies under a running session: the researcher is back at the picker
                    project = agent.snapshot.active_project
                    os.kill(servers[project].process.pid, signal.SIGKILL)
                    await until(lambda: agent.snapshot.state == State.PICKER, 30)
                    servers[project] = respawn(project)
                    counts["bubble deaths"] += 1
                await asyncio.sleep(rng.uniform(0, 0.3))
                await asyncio.to_thread(card.remove)
            try:
                await until(lambda: agent.snapshot.state == State.IDLE, 30)
            except TimeoutError:
                raise AssertionError(
                    f"cycle {cycle} ({name}): the agent hangs in {agent.snapshot.state} ({agent.snapshot.message}); card inserted={card.inserted}"
                ) from None
            await asyncio.to_thread(card.remove)
            await asyncio.to_thread(wait_for_card, reader, present=False)
            await until(lambda: all(not pid_alive(p) for p in clients), 10)
            if os.environ.get("SOAK_DEBUG"):
                print(
                    f"cycle {cycle} {name}: {time.monotonic() - t0:.2f} s, state {agent.snapshot.state}",
                    flush=True,
                )
    finally:
        await agent.shutdown()
        await asyncio.to_thread(watcher.stop)
    fds, rss = _fds(), _rss_mb()
    base_fds, base_rss = baseline or (fds, rss)
    return {"cycles": cycles, "points": counts, "fd_growth": fds - base_fds, "rss_growth_mb": round(rss - base_rss, 1),
            "clients_started": len(clients), "orphans": sum(pid_alive(p) for p in clients)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
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
            pki = Pki.init(work / "pki")
            ports = {"census-2021": free_port(), "health-cohort": free_port()}
            issue_card(parse_profile(card_profile(ports), source="soak"), pki)

            def respawn(project: str) -> Any:
                return stack.enter_context(
                    rdp_bubble(work / project, pki, project, display, ports[project])
                )

            servers = {p: respawn(p) for p in ports}
            result = asyncio.run(
                soak(
                    args.cycles,
                    args.seed,
                    daemon,
                    work,
                    pki,
                    display,
                    servers,
                    ports,
                    index,
                    respawn,
                )
            )
    finally:
        daemon.cleanup()
    print(f"soak: {result['cycles']} cycles in {time.monotonic() - started:.0f} s")
    for key, value in result.items():
        print(f"  {key}: {value}")
    ok = (
        result["orphans"] == 0
        and int(str(result["fd_growth"])) <= FD_BOUND
        and float(str(result["rss_growth_mb"])) <= RSS_BOUND_MB
    )
    print(
        f"  bounds: fd growth <= {FD_BOUND}, RSS growth <= {RSS_BOUND_MB} MB, no orphan client: {'ok' if ok else 'EXCEEDED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
