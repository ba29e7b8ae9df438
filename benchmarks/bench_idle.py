"""Idle power proxy at the picker: CPU wake-ups per minute of the agent and the greeter together.

A box at a researcher's desk spends most of its life at the picker (or the
start screen) with nobody in front of it. Wake-ups are the proxy for what
that costs in power: each one takes a core out of its idle state. They are
counted as the context switches (voluntary and not) of every thread of each
process over a window, per minute, with the real daemon (`sdbox agent run`
on pcscd + vpcd with the emulated card listed in the picker, on a private
bus) and the real greeter under cage (headless wlroots), as the greeter's
user. Twice: with the screen on (the greeter's 2 s safety-net refresh), and
blanked (the generation's idle blank; the refresh slows to 60 s). cage is
counted apart: on a box it is the compositor of the greeter and the
sessions, and with the screen blanked by DPMS (not done: see docs/desk.md)
it would draw nothing.

`make bench` (or `python -m benchmarks idle`); IDLE_WINDOW_S per measurement.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path

from benchmarks.bench_agent import _daemon, _wait_ready
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, parse_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki
from sdbox.ui import BLANK_VARIABLE
from tests.integration.agent_env import card_profile, dbus_daemon, publish_crls, write_config
from tests.integration.greeter_env import kiosk, missing
from tests.integration.session_servers import free_port

IDLE_WINDOW_S = 60.0
BLANK_AFTER_S = 5  # the blanked measurement starts once the screen is blank


def _switches(pid: int) -> dict[int, int]:
    """Context switches of each thread of ``pid`` so far, by thread id."""
    counts: dict[int, int] = {}
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:  # a thread that ended meanwhile
            continue
        counts[int(status.parent.name)] = sum(
            int(value)
            for key, _, value in (line.partition(":") for line in lines)
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
        )
    return counts


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _named(root: int, name: str) -> int:
    """The first process under ``root`` whose command is ``name``."""
    todo = [root]
    while todo:
        pid = todo.pop(0)
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return pid
        except OSError:
            pass
        todo.extend(_children(pid))
    raise RuntimeError(f"no {name} process under {root}")


def _per_minute(pids: dict[str, int], window_s: float) -> dict[str, int]:
    # per thread: a thread that ends inside the window loses its last switches (GLib's
    # and asyncio's short-lived workers); one that starts counts from zero
    before = {name: _switches(pid) for name, pid in pids.items()}
    time.sleep(window_s)
    after = {name: _switches(pid) for name, pid in pids.items()}
    return {
        name: round(
            sum(n - before[name].get(tid, 0) for tid, n in after[name].items()) * 60.0 / window_s
        )
        for name in pids
    }


def _measure(address: str, agent_pid: int, blank: bool, window_s: float) -> dict[str, int]:
    env = {BLANK_VARIABLE: str(BLANK_AFTER_S if blank else 0)}
    with kiosk(address, "en", env) as screen:
        deadline = time.monotonic() + 30
        wanted = "blank" if blank else "picker"
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if screen_kind(screen.runtime) == wanted:
                break
        else:
            raise RuntimeError(
                f"the greeter never showed its {wanted} screen (it shows: {(screen.runtime / 'screen.json').read_text()})"
            )
        time.sleep(2)  # settled
        cage = _named(screen.process.pid, "cage")
        greeter = _named(cage, "python3")
        figures = _per_minute({"agent": agent_pid, "greeter": greeter, "cage": cage}, window_s)
    figures["agent_and_greeter"] = figures["agent"] + figures["greeter"]
    return figures


def screen_kind(runtime: Path) -> str:
    """The kind of screen the greeter last built ('' before the first)."""
    try:
        return str(json.loads((runtime / "screen.json").read_text())["kind"])
    except (OSError, ValueError, KeyError):
        return ""


def run(window_s: float = IDLE_WINDOW_S) -> dict[str, object]:
    """Measure and print the wake-ups per minute, screen on and blanked."""
    why = missing()
    if why is not None:
        print(f"skipped: {why}")
        return {"skipped": why}
    daemon = PcscDaemon()
    daemon.start()
    try:
        with tempfile.TemporaryDirectory() as tmp, reserve_reader() as index:
            work = Path(tmp)
            work.chmod(0o755)  # the greeter's user reaches the bus socket in it
            pki = Pki.init(work / "pki")
            ports = {"census-2021": free_port(), "health-cohort": free_port()}
            # issued before the configuration is written: issuing makes the project CAs
            state = issue_card(parse_profile(card_profile(ports), source="bench"), pki)
            readers = f'[card]\nreaders = ["{reader_name(index)}"]\n'
            write_config(work, pki, display=":0", provider="interactive", extra=readers)
            publish_crls(pki, work / "crl")
            card = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + index)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listener.bind(str(work / "notify"))
            listener.settimeout(30)
            with dbus_daemon(work) as address:
                agent = _daemon(work, address, "sdbox", "agent", "run")
                try:
                    _wait_ready(listener)
                    card.insert()
                    time.sleep(3)  # listed: the picker
                    on = _measure(address, agent.pid, blank=False, window_s=window_s)
                    blanked = _measure(address, agent.pid, blank=True, window_s=window_s)
                finally:
                    agent.terminate()
                    agent.wait(20)
                    card.remove()
                    listener.close()
    finally:
        daemon.cleanup()
    print(f"wake-ups per minute at the picker ({window_s:.0f} s windows; context switches):")
    print(f"{'':>12} {'agent':>7} {'greeter':>8} {'together':>9} {'cage':>6}")
    for label, row in (("screen on", on), ("blanked", blanked)):
        print(f"{label:>12} {row['agent']:>7} {row['greeter']:>8} "
              f"{row['agent_and_greeter']:>9} {row['cage']:>6}")  # fmt: skip
    return {"window_s": window_s, "screen_on": on, "blanked": blanked}
