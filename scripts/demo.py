"""`make demo`: the researcher's flow on emulated hardware, end to end.

Starts the real pcscd with the vpcd reader driver and the emulated demo card,
the bubbles (two freerdp-shadow-cli3 RDP bubbles sharing an Xvfb that shows a
test pattern, one QEMU SPICE bubble), a private D-Bus and the agent; then drives the flow a researcher follows — insert, list, choose,
finger, session, switch, remove — through the agent's D-Bus API. Every step
is timed; screenshots of the box's screen go to build/demo/, the summary to
build/demo/summary.json. Everything started is stopped, by pid.

Each session's one-time credential comes from the reference broker (`sdbox
broker`, HTTPS), which checks a fresh ECDH proof of the project
key on the card and the box's identity: a key made in a software TPM
(swtpm behind tpm2-abrmd) at the box's "first boot" and certified by the
broker against a one-time enrolment token. Headless here: the kiosk greeter
runs under cage on a headless output (its screens are captured with grim)
and the session clients on an Xvfb.

Through the tunnel where the machine can (root, strongSwan, p11-kit, the TPM
stack): the broker and the bubbles in a "centre" network namespace behind
the reference gateway, on the centre network; the agent's event loop (and
the session clients, the enrolment, the greeter it starts) in the "box"
namespace, which reaches them only through its IPsec tunnel
(tests/integration/centre_env.py says how a thread, not a process, is moved).
The tunnel comes up first, with a key of its own in the same TPM, certified
by the demo PKI's box CA: how a box enrols before it has a tunnel is not
settled yet (docs/tunnel.md). Elsewhere the demo says why and uses loopback.
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

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from dbus_fast.aio import MessageBus

from sdbox.agent.api import BUS_NAME, INTERFACE, OBJECT_PATH, Detail, State
from sdbox.agent.card import ReaderWatcher
from sdbox.agent.dbus import export
from sdbox.agent.events import SessionEndedEvent
from sdbox.agent.service import build_agent
from sdbox.broker.bioenrol import write_operator
from sdbox.broker.cards import register_entry
from sdbox.broker.enrolment import EnrolmentTokens
from sdbox.identity.enrol import enrol
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import CardProfile, issue_card, load_profile
from sdbox.smartcard.emulator.stack import PcscDaemon, reader_name, reserve_reader, wait_for_card
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT, VirtualCard
from sdbox.smartcard.profile import Slot, certificate_object, decode_certificate
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
from tests.integration.centre_env import (
    BUBBLE,
    HostNetns,
    TunnelBox,
    TunnelUp,
    centre_behind_tunnel,
    thread_in_netns,
)
from tests.integration.centre_env import why_not as tunnel_missing
from tests.integration.greeter_env import Kiosk, kiosk, missing
from tests.integration.session_servers import paint_pattern, pattern_in, screenshot, xvfb
from tests.integration.tpm_env import SoftwareTpm, software_tpm, tpm_identity_config, tpm_missing
from tests.integration.tunnel_env import GATEWAY_IDS, GATEWAYS

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

    def record(self, name: str, seconds: float) -> None:
        """A step that happened outside ``step`` (set-up measured by its own clock)."""
        self.steps.append({"name": name, "seconds": round(seconds, 3), "ok": True})
        print(f"[{'ok':>6}] {name:58} {seconds:6.2f} s", flush=True)

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
    profile: CardProfile,
    host: HostNetns | None,
    interactive: bool = False,
    enrolment: Path | None = None,
) -> None:
    """The researcher's flow; ``host``: the card's namespace when this thread is the box's.

    ``enrolment``: the broker's remote enrolment directory (``--enrolment``): the card is
    registered at the centre and an operator authorises a remote enrolment first.
    """
    publish_crls(pki, work / "crl")
    endpoint_host = profile.projects[0].endpoint.rsplit(":", 1)[0]
    config = write_config(work, pki, display=box_display, broker=broker,
                          endpoint_host=endpoint_host)  # fmt: skip
    agent = build_agent(config)
    ended: list[SessionEndedEvent] = []
    agent.listeners.append(lambda e: ended.append(e) if isinstance(e, SessionEndedEvent) else None)
    state = issue_card(profile, pki, state_path=OUT / "card.json")
    if enrolment is not None:
        _register_for_enrolment(work, pki, state, enrolment)
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
                await _interactive(demo, card, agent, host)
            else:
                await _scripted(demo, api, agent, card, screen, box_display, ended, host,
                                broker if enrolment is not None else None)  # fmt: skip
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
    host: HostNetns | None,
    enrolling: BrokerEnv | None = None,
) -> None:
    """The researcher's flow, driven through the agent's D-Bus API."""
    await demo.greeter_shot(screen, "insert-card")
    await demo.step(
        "insert the card: projects listed (directory verified)",
        lambda: _insert(card, agent, host),
    )
    await demo.greeter_shot(screen, "picker")
    if enrolling is not None:
        await _enrolment_scene(demo, api, agent, screen, enrolling)
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


OPERATOR = "Alice Martin (card office)"


def _register_for_enrolment(work: Path, pki: Pki, state: Any, bio_dir: Path) -> None:
    """The centre knows the card (its 9B key, its holder) and has an enrolment operator."""
    holder = x509.load_der_x509_certificate(
        decode_certificate(state.objects[certificate_object(Slot.AUTHENTICATION)])
    )
    register = work / "cards.json"
    register.write_text(
        json.dumps({state.guid.hex(): register_entry(state.management_key, holder)})
    )
    register.chmod(0o600)
    key = ec.generate_private_key(ec.SECP256R1())
    write_operator(bio_dir / "operators", "alice", key,
                   pki.issue_enrolment_operator(key.public_key(), operator=OPERATOR))  # fmt: skip


async def _enrolment_scene(
    demo: Demo, api: Any, agent: Any, screen: Kiosk | None, broker: BrokerEnv
) -> None:
    """Remote enrolment: the operator authorises, the researcher reads the code back, enrols."""
    bio = broker.server.broker.bio
    box_id = "demo-box-1" if broker.identity is not None else "test-box-1"
    card_guid = agent._card.guid if agent._card else b""
    record = await demo.step(
        "the card office authorises a remote enrolment of the primary finger (15 min)",
        lambda: asyncio.to_thread(
            bio.open, card_guid=card_guid, box_id=box_id, fingers=("primary",), minutes=15,
            operator="alice",
        ),
    )  # fmt: skip

    async def code_shown() -> None:
        await api.call_start_enrolment()
        await until(lambda: agent.snapshot.detail == Detail.ENROLMENT_CODE)

    await demo.step("F6: the box asks for it and shows the code to read back", code_shown)
    await demo.greeter_shot(screen, "enrolment-code")
    code = agent.snapshot.detail_args["code"]

    async def confirmed() -> None:
        await asyncio.to_thread(bio.confirm, record["id"], code)
        await until(lambda: agent.snapshot.detail == Detail.ENROLMENT_PIN)

    await demo.step(f"the operator types the code the researcher reads ({code})", confirmed)
    await demo.greeter_shot(screen, "enrolment-pin")

    async def enrolled() -> None:
        await api.call_submit_pin("123456")
        await until(lambda: agent.snapshot.detail == Detail.ENROLMENT_DONE)

    await demo.step(
        "PIN, three captures, written with 9B answered by the centre, checked on the card",
        enrolled,
    )
    await demo.greeter_shot(screen, "enrolment-done")


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


async def _interactive(demo: Demo, card: VirtualCard, agent: Any, host: HostNetns | None) -> None:
    """The researcher's flow by hand: the card goes in and out on Enter."""
    print(
        "\ninteractive demo: use the greeter window (arrows, Enter, Escape); the emulated\n"
        "finger is the card holder's. Enter here pulls or inserts the card; q then Enter stops.",
        flush=True,
    )
    await demo.step("insert the card", lambda: _insert(card, agent, host))
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line or line.strip().lower() == "q":
            return
        if card.inserted:
            pid = agent._session.pid if agent._session else None
            await demo.step("remove the card", functools.partial(_remove, card, agent, pid))
        else:
            await demo.step("insert the card", lambda: _insert(card, agent, host))


async def _insert(card: VirtualCard, agent: Any, host: HostNetns | None) -> None:
    # vpcd listens on the host's loopback: from the box's namespace, the card goes in from there
    await asyncio.to_thread(host.call if host else _now, card.insert)
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


def _now(action: Callable[[], None]) -> None:
    action()


async def _check(ok: bool) -> None:
    if not ok:
        raise RuntimeError("the box's screen does not show the bubble's test pattern")


def _tunnel(demo: Demo, stack: contextlib.ExitStack, work: Path, pki: Pki,
            tpm: SoftwareTpm) -> TunnelUp:  # fmt: skip
    """Box and centre namespaces, a charon in each, the tunnel up with the box's TPM key."""
    started = time.perf_counter()
    # the tunnel's key and certificate, as flashing and the centre's CA would give them
    box = TunnelBox.provision(tpm, work / "tunnel-identity", pki)
    demo.record("the box's tunnel key made in the TPM, certified", time.perf_counter() - started)
    up = stack.enter_context(centre_behind_tunnel(work / "tunnel", tpm, box, pki))
    gateway = up.event.gateway or ""
    demo.record(f"tunnel up through {GATEWAY_IDS[GATEWAYS.index(gateway)]} ({gateway})",
                up.seconds_from_cold)  # fmt: skip
    return up


def _behind_tunnel(profile: CardProfile) -> CardProfile:
    """The demo card's projects with their bubbles on the centre network, same ports."""
    projects = tuple(
        dataclasses.replace(p, endpoint=f"{BUBBLE}:{p.endpoint.rsplit(':', 1)[1]}")
        for p in profile.projects
    )
    return dataclasses.replace(profile, projects=projects)


def _in_netns(netns: str | None, action: Callable[[], Any]) -> Any:
    """``action()`` from inside ``netns`` (this thread only), or here when None."""
    with thread_in_netns(netns) if netns else contextlib.nullcontext():
        return action()


def main() -> int:
    """Run the demo; exit status 0 when every step succeeded.

    With a display and a terminal (and without ``--headless``) the flow is
    left to the person at the keyboard; otherwise it runs by itself.
    """
    interactive = (
        "--headless" not in sys.argv and sys.stdin.isatty() and bool(os.environ.get("DISPLAY"))
    )
    # --enrolment: a remote fingerprint enrolment scene after the picker (docs/remote-enrolment.md)
    enrolment_scene = "--enrolment" in sys.argv
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    demo = Demo()
    daemon = PcscDaemon()
    failed = False
    started = time.perf_counter()
    # the researcher's side reaches the centre only through the tunnel, where the machine can
    why_no_tunnel = tunnel_missing()
    if why_no_tunnel is None and interactive and not os.environ["DISPLAY"].startswith(":"):
        why_no_tunnel = "the display is not local (the box's namespace cannot reach it)"
    tunnel_summary: dict[str, object] = {
        "up": False, "why_not": why_no_tunnel or "the demo stopped before the tunnel was up"
    }  # fmt: skip
    try:
        with contextlib.ExitStack() as stack:
            daemon.start()
            stack.callback(daemon.cleanup)
            index = stack.enter_context(reserve_reader())
            work = OUT / "run"
            pki = Pki.init(OUT / "pki")
            profile = load_profile("demo")
            tpm: SoftwareTpm | None = None
            up: TunnelUp | None = None
            if why_no_tunnel is None:
                tpm = stack.enter_context(software_tpm((work / "tpm").resolve()))
                # the tabrmd TCTI finds its private bus through the environment only
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = tpm.bus_address
                up = _tunnel(demo, stack, work, pki, tpm)
                tunnel_summary = {
                    "up": True, "gateway": up.event.gateway,
                    "gateway_identity": GATEWAY_IDS[GATEWAYS.index(up.event.gateway or "")],
                    "inner_address": up.event.inner_address,
                    "seconds_from_cold": round(up.seconds_from_cold, 3),
                    "seconds_ike": round(up.seconds_from_start, 3),
                    "centre_network": f"{BUBBLE} (broker and bubbles, centre namespace)",
                }  # fmt: skip
                profile = _behind_tunnel(profile)
            else:
                print(f"tunnel: not used ({why_no_tunnel}); broker and bubbles on loopback",
                      flush=True)  # fmt: skip
            host = profile.projects[0].endpoint.rsplit(":", 1)[0]
            issue_card(profile, pki)  # the bubbles' certificates
            bubble_display = stack.enter_context(xvfb())
            paint_pattern(bubble_display, work.parent)
            box_display = os.environ["DISPLAY"] if interactive else stack.enter_context(xvfb())
            ports = {p.id: int(p.endpoint.rsplit(":", 1)[1]) for p in profile.projects}
            servers: dict[str, Any] = {}
            register = work / "enrolment-tokens.json"
            # the centre's side: started from a thread inside the centre's namespace
            with thread_in_netns(up.rig.centre_ns.name) if up else contextlib.nullcontext():
                for p in profile.projects:
                    if p.protocol.name == "RDP":
                        servers[p.id] = stack.enter_context(
                            rdp_bubble(work / p.id, pki, p.id, bubble_display, ports[p.id], host)
                        )
                    else:
                        servers[p.id] = stack.enter_context(
                            spice_bubble(work / p.id, pki, p.id, ports[p.id], host)
                        )
                bio_dir = (work / "bio").resolve() if enrolment_scene else None
                broker = stack.enter_context(
                    reference_broker(work / "broker", pki, servers, ports,
                                     enrolment_tokens=register, host=host,
                                     card_register=(work / "cards.json").resolve()
                                     if bio_dir else None,
                                     bio_enrolment=bio_dir)
                )  # fmt: skip
            print(
                f"bubbles up: {', '.join(f'{k} on {host}:{v}' for k, v in ports.items())}",
                flush=True,
            )
            print(f"reference broker on {broker.url}", flush=True)
            box_netns = up.rig.box.name if up else None
            why_no_tpm = tpm_missing()
            if why_no_tpm is None:
                if tpm is None:
                    tpm = stack.enter_context(software_tpm((work / "tpm").resolve()))
                # the tabrmd TCTI finds its private bus through the environment only
                os.environ["DBUS_SESSION_BUS_ADDRESS"] = tpm.bus_address
                sealed = work / "sealed"  # the box's TPM-sealed data partition
                identity = tpm_identity_config(tpm, sealed, sealed / "box.pem")
                token_file = work / "config" / "enrolment-token"  # what `sdbox flash` writes
                token_file.parent.mkdir(parents=True, exist_ok=True)
                token_file.write_text(EnrolmentTokens(register).add("demo-box-1") + "\n")
                enrolment = functools.partial(
                    enrol, identity, broker_url=broker.url, token_file=token_file,
                    broker_anchors=[pki.root.cert], anchors=[pki.root.cert],
                    intermediates=pki.intermediates,
                )  # fmt: skip
                asyncio.run(
                    demo.step(
                        "first boot: box key made in the TPM, enrolled with the centre",
                        lambda: asyncio.to_thread(_in_netns, box_netns, enrolment),
                    )
                )
                broker = dataclasses.replace(broker, identity=identity)
            else:
                print(f"box identity: development key ({why_no_tpm})", flush=True)
            card_side = HostNetns() if up else None
            if card_side:
                stack.callback(card_side.close)
            # the agent's event loop, and all it starts, in the box's namespace
            with thread_in_netns(box_netns) if box_netns else contextlib.nullcontext():
                asyncio.run(
                    flow(demo, work, pki, bubble_display, box_display, broker, index, profile,
                         card_side, interactive, bio_dir)
                )  # fmt: skip
            wait_for_card(reader_name(index), present=False)
    except Exception as exc:
        failed = True
        print(f"demo stopped: {exc}", file=sys.stderr)
    summary = {
        "steps": demo.steps,
        "screenshots": demo.screenshots,
        "session_outcomes": demo.outcomes,
        "tunnel": tunnel_summary,
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    ok_steps = sum(1 for s in demo.steps if s["ok"])
    print(
        f"\nsummary: {ok_steps}/{len(demo.steps)} steps ok in {time.perf_counter() - started:.1f} s"
    )
    if tunnel_summary["up"]:
        print(f"  tunnel: up through {tunnel_summary['gateway_identity']} "
              f"({tunnel_summary['gateway']}) in {tunnel_summary['seconds_from_cold']} s from "
              f"cold (IKE {tunnel_summary['seconds_ike']} s); box inner address "
              f"{tunnel_summary['inner_address']}; broker and bubbles reached only through it")
    else:
        print(f"  tunnel: not used ({tunnel_summary['why_not']}); broker and bubbles on loopback")
    for outcome in demo.outcomes:
        print(f"  session ended: {outcome}")
    print(f"  screenshots: {', '.join(demo.screenshots) or 'none'}")
    print(f"  written to {OUT / 'summary.json'}")
    return 1 if failed or ok_steps != len(demo.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
