"""`make demo`: the researcher's flow on emulated hardware, end to end.

Starts the real pcscd with the vpcd reader driver and the emulated demo card,
bubbles on loopback (two freerdp-shadow-cli3 RDP bubbles sharing an Xvfb
that shows a test pattern, one QEMU SPICE bubble), a private D-Bus and the
agent; then drives the flow a researcher follows — insert, list, choose,
finger, session, switch, remove — through the agent's D-Bus API. Every step
is timed; screenshots of the box's screen go to build/demo/, the summary to
build/demo/summary.json. Everything started is stopped, by pid.

Each session's one-time credential comes from the reference broker (`sdbox
broker`, HTTPS on loopback), which checks a fresh ECDH proof of the project
key on the card and the box's identity: a key made in a software TPM
(swtpm behind tpm2-abrmd) at the box's "first boot" and certified by the
broker against a one-time enrolment token. Headless here: the kiosk greeter
runs under cage on a headless output (its screens are captured with grim)
and the session clients on an Xvfb.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dbus_fast.aio import MessageBus

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH, State
from sdbox.agent.card import ReaderWatcher
from sdbox.agent.dbus import export
from sdbox.agent.events import SessionEndedEvent
from sdbox.agent.service import build_agent
from sdbox.broker.enrolment import EnrolmentTokens
from sdbox.identity.enrol import enrol
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.trust.pki import Pki
from tests.integration.agent_env import (
    BrokerEnv,
    dbus_daemon,
    publish_crls,
    rdp_bubble,
    reference_broker,
    spice_bubble,
    until,
    write_config,
)
from tests.integration.greeter_env import Kiosk, kiosk, missing
from tests.integration.session_servers import paint_pattern, pattern_in, screenshot, xvfb
from tests.integration.tpm_env import software_tpm, tpm_identity_config, tpm_missing

OUT = Path("build/demo")


class Demo:
    """Collects the steps and screenshots of one demo run."""

    def __init__(self) -> None:
        self.steps: list[dict[str, object]] = []
        self.screenshots: list[str] = []
        self.outcomes: list[str] = []
        self._last_greeter: Any = None

    async def step(self, name: str, action: Callable[[], Awaitable[Any]]) -> Any:
        start = time.perf_counter()
        ok, result = True, None
        try:
            result = await action()
        except Exception as exc:  # the summary says which step failed and why
            ok, result = False, exc
        seconds = time.perf_counter() - start
        self.steps.append({"name": name, "seconds": round(seconds, 3), "ok": ok})
        print(
            f"[{'ok' if ok else 'FAILED':>6}] {name:58} {seconds:6.2f} s"
            + ("" if ok else f"  ({result})"),
            flush=True,
        )
        if not ok:
            raise RuntimeError(f"demo step failed: {name}") from (
                result if isinstance(result, BaseException) else None
            )
        return result

    def shot(self, display: str, name: str) -> bool:
        path = OUT / f"{name}.png"
        subprocess.run(
            ["import", "-silent", "-window", "root", f"png:{path}"],
            env={"DISPLAY": display, "PATH": "/usr/bin:/bin"}, check=True, timeout=30,
        )  # fmt: skip
        self.screenshots.append(str(path))
        return pattern_in(*screenshot(display))

    async def greeter_shot(self, screen: Kiosk | None, name: str) -> None:
        """What the researcher sees on the kiosk, once it has settled."""
        if screen is None:
            return
        pixels = await asyncio.to_thread(screen.settled, self._last_greeter)
        self._last_greeter = pixels
        path = OUT / f"greeter-{name}.png"
        await asyncio.to_thread(screen.save, pixels, path)
        self.screenshots.append(str(path))


async def flow(
    demo: Demo,
    work: Path,
    pki: Pki,
    bubble_display: str,
    box_display: str,
    broker: BrokerEnv,
    index: int,
    interactive: bool = False,
) -> None:
    publish_crls(pki, work / "crl")
    config = write_config(work, pki, display=box_display, broker=broker)
    agent = build_agent(config)
    ended: list[SessionEndedEvent] = []
    agent.listeners.append(lambda e: ended.append(e) if isinstance(e, SessionEndedEvent) else None)
    state = issue_card(load_profile("demo"), pki, state_path=OUT / "card.json")
    card = VirtualCard(PivApplet(state), port=VPCD_BASE_PORT + index, latency_ms=20.0)
    # the greeter runs as its own user: the bus socket must be reachable for it
    bus_dir = Path(tempfile.mkdtemp(prefix="sdbox-demo-bus-"))
    bus_dir.chmod(0o755)
    with contextlib.ExitStack() as stack, dbus_daemon(bus_dir) as address:
        stack.callback(shutil.rmtree, bus_dir, True)
        bus = await export(agent, address)
        if interactive:
            stack.enter_context(_greeter_on_display(address))
            screen = None
        else:
            why_not = missing()
            screen = None if why_not else stack.enter_context(kiosk(address, "en"))
            print(f"kiosk greeter: {'cage, headless' if screen else why_not}", flush=True)
        client = await MessageBus(bus_address=address).connect()
        proxy = client.get_proxy_object(
            BUS_NAME, OBJECT_PATH, await client.introspect(BUS_NAME, OBJECT_PATH)
        )
        api: Any = proxy.get_interface(INTERFACE)
        watcher = ReaderWatcher(
            asyncio.get_running_loop(), agent.on_reader_event, [reader_name(index)]
        )
        watcher.start()
        try:
            if interactive:
                await _interactive(demo, card, agent)
            else:
                await _scripted(demo, api, agent, card, screen, box_display, ended)
        finally:
            await agent.shutdown()
            await asyncio.to_thread(watcher.stop)
            card.remove()
            client.disconnect()
            bus.disconnect()


async def _scripted(
    demo: Demo,
    api: Any,
    agent: Any,
    card: VirtualCard,
    screen: Kiosk | None,
    box_display: str,
    ended: list[SessionEndedEvent],
) -> None:
    """The researcher's flow, driven through the agent's D-Bus API."""
    await demo.greeter_shot(screen, "insert-card")
    await demo.step(
        "insert the card: projects listed (directory verified)",
        lambda: _insert(card, agent),
    )
    await demo.greeter_shot(screen, "picker")
    projects = await api.get_projects()
    for p in projects:
        print(f"         {p[0]:15} {p[1]:24} {p[2]:5} {p[5]}")
    await demo.step(
        "choose 'Census microdata 2021', finger on the card, RDP session",
        lambda: _choose(api, agent, "census-2021"),
    )
    ok = demo.shot(box_display, "session-census-rdp")
    await demo.greeter_shot(screen, "session-running")
    await demo.step("the session shows the bubble's desktop (test pattern)", lambda: _check(ok))
    await demo.step(
        "switch to 'Genomics lab' (SPICE), no new finger",
        lambda: _switch(api, agent, "genomics-lab"),
    )
    demo.shot(box_display, "session-genomics-spice")
    await demo.step(
        "switch to 'Health cohort study' (RDP)",
        lambda: _switch(api, agent, "health-cohort"),
    )
    demo.shot(box_display, "session-health-rdp")
    pid = agent._session.pid if agent._session else None
    await demo.step(
        "remove the card: session killed, back to idle", lambda: _remove(card, agent, pid)
    )
    await demo.greeter_shot(screen, "after-removal")
    demo.outcomes = [f"{e.project}: {e.reason} ({e.message})" for e in ended]


@contextlib.contextmanager
def _greeter_on_display(bus_address: str) -> Any:
    """The greeter in a window on the developer's own display."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sdbox.ui", "--bus", bus_address],
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _interactive(demo: Demo, card: VirtualCard, agent: Any) -> None:
    """The researcher's flow by hand: the card goes in and out on Enter."""
    print(
        "\ninteractive demo: use the greeter window (arrows, Enter, Escape); the emulated\n"
        "finger is the card holder's. Enter here pulls or inserts the card; q then Enter stops.",
        flush=True,
    )
    await demo.step("insert the card", lambda: _insert(card, agent))
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip().lower() == "q":
            return
        if card.inserted:
            pid = agent._session.pid if agent._session else None
            await demo.step("remove the card", functools.partial(_remove, card, agent, pid))
        else:
            await demo.step("insert the card", lambda: _insert(card, agent))


async def _insert(card: VirtualCard, agent: Any) -> None:
    await asyncio.to_thread(card.insert)
    await until(lambda: agent.snapshot.state == State.PICKER)


async def _choose(api: Any, agent: Any, project: str) -> None:
    await api.call_choose_project(project)
    await until(lambda: agent.snapshot.state == State.RUNNING or agent.snapshot.problem is not None)
    if agent.snapshot.state != State.RUNNING:
        raise RuntimeError(agent.snapshot.message)
    await asyncio.sleep(1.0)  # let the first frames arrive before the screenshot


async def _switch(api: Any, agent: Any, project: str) -> None:
    await api.call_switch(project)
    await until(
        lambda: (
            agent.snapshot.active_project == project
            and agent.snapshot.state in (State.RUNNING, State.PICKER)
        )
    )
    await until(lambda: agent.snapshot.state == State.RUNNING or agent.snapshot.problem is not None)
    if agent.snapshot.state != State.RUNNING:
        raise RuntimeError(agent.snapshot.message)
    await asyncio.sleep(1.0)


async def _remove(card: VirtualCard, agent: Any, pid: int | None) -> None:
    await asyncio.to_thread(card.remove)
    await until(lambda: agent.snapshot.state == State.IDLE)
    await until(
        lambda: (
            pid is None
            or not Path(f"/proc/{pid}").exists()
            or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        )
    )


async def _check(ok: bool) -> None:
    if not ok:
        raise RuntimeError("the box's screen does not show the bubble's test pattern")


def main() -> int:
    """Run the demo; exit status 0 when every step succeeded.

    With a display and a terminal (and without ``--headless``) the flow is
    left to the person at the keyboard; otherwise it runs by itself.
    """
    interactive = (
        "--headless" not in sys.argv and sys.stdin.isatty() and bool(os.environ.get("DISPLAY"))
    )
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    demo = Demo()
    daemon = PcscDaemon()
    failed = False
    started = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            daemon.start()
            stack.callback(daemon.cleanup)
            index = stack.enter_context(reserve_reader())
            work = OUT / "run"
            pki = Pki.init(OUT / "pki")
            issue_card(load_profile("demo"), pki)  # the bubbles' certificates
            bubble_display = stack.enter_context(xvfb())
            paint_pattern(bubble_display, work.parent)
            box_display = os.environ["DISPLAY"] if interactive else stack.enter_context(xvfb())
            profile = load_profile("demo")
            ports = {p.id: int(p.endpoint.rsplit(":", 1)[1]) for p in profile.projects}
            servers: dict[str, Any] = {}
            for p in profile.projects:
                if p.protocol.name == "RDP":
                    servers[p.id] = stack.enter_context(
                        rdp_bubble(work / p.id, pki, p.id, bubble_display, ports[p.id])
                    )
                else:
                    servers[p.id] = stack.enter_context(
                        spice_bubble(work / p.id, pki, p.id, ports[p.id])
                    )
            print(
                f"bubbles up: {', '.join(f'{k} on 127.0.0.1:{v}' for k, v in ports.items())}",
                flush=True,
            )
            register = work / "enrolment-tokens.json"
            broker = stack.enter_context(
                reference_broker(work / "broker", pki, servers, ports, enrolment_tokens=register)
            )
            print(f"reference broker on {broker.url}", flush=True)
            why_no_tpm = tpm_missing()
            if why_no_tpm is None:
                tpm = stack.enter_context(software_tpm(work / "tpm"))
                # the tabrmd TCTI finds its private bus through the environment only
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = tpm.bus_address
                sealed = work / "sealed"  # the box's TPM-sealed data partition
                identity = tpm_identity_config(tpm, sealed, sealed / "box.pem")
                token_file = work / "config" / "enrolment-token"  # what `sdbox flash` writes
                token_file.parent.mkdir(parents=True, exist_ok=True)
                token_file.write_text(EnrolmentTokens(register).add("demo-box-1") + "\n")
                asyncio.run(
                    demo.step(
                        "first boot: box key made in the TPM, enrolled with the centre",
                        lambda: asyncio.to_thread(
                            enrol, identity, broker_url=broker.url, token_file=token_file,
                            broker_anchors=[pki.root.cert], anchors=[pki.root.cert],
                            intermediates=pki.intermediates,
                        ),
                    )
                )  # fmt: skip
                broker = dataclasses.replace(broker, identity=identity)
            else:
                print(f"box identity: development key ({why_no_tpm})", flush=True)
            asyncio.run(
                flow(demo, work, pki, bubble_display, box_display, broker, index, interactive)
            )
            wait_for_card(reader_name(index), present=False)
    except Exception as exc:
        failed = True
        print(f"demo stopped: {exc}", file=sys.stderr)
    summary = {
        "steps": demo.steps,
        "screenshots": demo.screenshots,
        "session_outcomes": demo.outcomes,
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    ok_steps = sum(1 for s in demo.steps if s["ok"])
    print(
        f"\nsummary: {ok_steps}/{len(demo.steps)} steps ok in {time.perf_counter() - started:.1f} s"
    )
    for outcome in demo.outcomes:
        print(f"  session ended: {outcome}")
    print(f"  screenshots: {', '.join(demo.screenshots) or 'none'}")
    print(f"  written to {OUT / 'summary.json'}")
    return 1 if failed or ok_steps != len(demo.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
