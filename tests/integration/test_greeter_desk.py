"""The network (F5) and support (F1) screens, driven from the keyboard, against committed references.

These screens open on a key, and cage's headless backend here has no input
device to press one with (no virtual-keyboard client is installed): the
greeter runs on an Xvfb of the kiosk's size (1280x720) instead, as its own
user, keys come from xdotool and the screen from ImageMagick's ``import``.
The agent is the real one on a private bus, without a card (these screens
are for a researcher who has none in), its outer link and tunnel fixed so
that the screens are the same on every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sdbox.agent.api import NetworkStatus, State
from sdbox.agent.dbus import export
from sdbox.agent.machine import Agent
from sdbox.agent.outer_network import LinkFacts, NetworkStore
from sdbox.agent.support import SupportRecord, SupportSources
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.network.outer import Mode
from sdbox.network.site import load_bytes
from sdbox.ui import BLANK_VARIABLE, SCALE_VARIABLE, SCREEN_FILE_VARIABLE
from tests.integration.agent_env import dbus_daemon
from tests.integration.greeter_env import (
    GREETER_USER,
    REFERENCES,
    Kiosk,
    Picture,
    compare,
    expect,
    greeter_on_x11,
    load,
    missing,
    window_shown,
)
from tests.integration.session_servers import parse_ppm, xvfb

pytestmark = [
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
    pytest.mark.skipif(
        shutil.which("xdotool") is None or shutil.which("import") is None,
        reason="xdotool or ImageMagick is not installed (make setup)",
    ),
]
OUT = Path("build/greeter-screenshots")
# Their references are a folder of their own: test_greeter's check that no reference passes
# for another compares every pair (quadratic), and these screens only follow one another
# and the start screen (test_desk_references_tell_screens_apart).
DESK = "desk"
SIZE = (1280, 720)  # the kiosk's output (greeter_env.kiosk)
SITE = load_bytes(
    b'[[gateways]]\naddress = "198.51.100.7"\nidentity = "gw1.centre.example"\n'
    b'[[networks]]\ncidr = "10.20.0.0/16"\n[box]\ninterface = "eth0"\n',
    "site.toml",
)
LINK = LinkFacts(True, True, ("192.0.2.100/24",), True)
# what the tunnel said last: no answer from the gateway (UDP blocked on the way)
SILENT = TunnelEvent(TunnelState.DOWN, gateway="198.51.100.7", reason=Reason.GATEWAY_UNREACHABLE)


@dataclass
class X11Screen(Kiosk):
    """The greeter on an X display: its screen through ImageMagick, its words through its file."""

    display: str = ""

    def pixels(self) -> np.ndarray:
        ppm = subprocess.run(
            ["import", "-display", self.display, "-window", "root", "-depth", "8", "ppm:-"],
            capture_output=True, check=True, timeout=30,
        ).stdout  # fmt: skip
        width, height, data = parse_ppm(ppm)
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def _keys(display: str, *keys: str) -> None:
    subprocess.run(
        ["xdotool", "key", "--delay", "120", *keys],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"}, check=True, timeout=30,
    )  # fmt: skip


def _type(display: str, text: str) -> None:
    subprocess.run(
        ["xdotool", "type", "--delay", "60", text],
        env={"DISPLAY": display, "PATH": "/usr/bin:/bin"}, check=True, timeout=30,
    )  # fmt: skip


@contextlib.contextmanager
def _report_dir() -> Iterator[Path]:
    """A directory the greeter's user writes its screen file into."""
    user = pwd.getpwnam(GREETER_USER)
    path = Path(tempfile.mkdtemp(prefix="sdbox-desk-screen-"))
    path.chmod(0o755)
    os.chown(path, user.pw_uid, user.pw_gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _agent(tmp_path: Path) -> Agent:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "image-version").write_text("0.1.0+1765101600\n")
    (etc / "generation.toml").write_text('[generation]\nname = "nuc-g1"\n')
    (etc / "cmdline").write_text("quiet rauc.slot=B\n")
    sources = SupportSources(
        etc / "image-version", etc / "generation.toml", etc / "cmdline", etc / "no-certificate.pem"
    )
    support = SupportRecord(sources)
    support.box = "CN=box-0042,O=Centre for Secure Data"  # the enrolled box's subject
    support.card, support.card_seen = "BIO SSO, on-card finger", "2026-12-07T09:12:00+00:00"
    support.problems.extend(
        [("2026-12-07T09:14:00+00:00", "broker_unreachable"),
         ("2026-12-07T09:13:00+00:00", "wrong_finger")]
    )  # fmt: skip
    return Agent(
        trust=None, sensor=None, credentials=None, sessions=None,  # type: ignore[arg-type]
        endpoint_allowed=lambda _e: True, network=NetworkStore(tmp_path / "state", SITE),
        support=support, tunnel_state=lambda: SILENT, link_reader=lambda _i: LINK,
    )  # fmt: skip


_WORDS = {
    "en": {
        "network": ("Network", "Wired, automatic address (DHCP)", "UDP ports 500 and 4500"),
        "refused": ("Not saved: check the marked field.", "overlaps the centre's networks"),
        "saved": ("Saved. The box uses these settings now",),
        "support": ("Support information", "CN=box-0042", "0.1.0+1765101600, slot B", "nuc-g1",
                    "eth0: 192.0.2.100/24", "centre unreachable (broker_unreachable)",
                    "Enter: send diagnostics"),
        "not-sent": ("Diagnostics not sent: this box does not report to a fleet service.",),
    },
    "fr": {
        "network": ("Réseau", "Filaire, adresse automatique (DHCP)", "ports UDP 500 et 4500"),
        "refused": ("Non enregistré : vérifiez le champ signalé.", "chevauche les réseaux du centre"),
        "saved": ("Enregistré. Le boîtier utilise ces réglages",),
        "support": ("Informations pour l", "CN=box-0042", "0.1.0+1765101600, emplacement B",
                    "nuc-g1", "eth0: 192.0.2.100/24", "centre injoignable (broker_unreachable)",
                    "Entrée : envoyer le diagnostic"),
        "not-sent": ("Diagnostic non envoyé : ce boîtier ne dépend",),
    },
}  # fmt: skip


@pytest.mark.parametrize("language", sorted(_WORDS))
def test_network_and_support_screens(tmp_path: Path, language: str) -> None:
    words = _WORDS[language]
    bus_dir = Path(tempfile.mkdtemp(prefix="sdbox-desk-bus-"))
    bus_dir.chmod(0o755)  # the greeter's user must reach the bus socket
    agent = _agent(tmp_path)
    (OUT / DESK).mkdir(parents=True, exist_ok=True)

    async def scenario() -> None:
        with dbus_daemon(bus_dir) as address, _report_dir() as report:
            bus = await export(agent, address)
            try:
                env = {SCREEN_FILE_VARIABLE: str(report / "screen.json")}
                with xvfb(SIZE) as display, greeter_on_x11(address, display, language, env):
                    screen = X11Screen(process=None, runtime=report, display=display)  # type: ignore[arg-type]
                    await _until(lambda: window_shown(display))
                    await asyncio.sleep(1.5)
                    await asyncio.to_thread(_keys, display, "F5")
                    await asyncio.to_thread(
                        expect, screen, f"desk/network-{language}", OUT, words["network"]
                    )
                    # a fixed address inside the centre's network: refused, nothing kept
                    await asyncio.to_thread(_keys, display, "Down")
                    await asyncio.sleep(1.0)  # the fixed address's fields, the first one focused
                    await asyncio.to_thread(_type, display, "10.20.5.9/24")
                    await asyncio.to_thread(_keys, display, "Tab")
                    await asyncio.to_thread(_type, display, "10.20.5.1")
                    await asyncio.to_thread(_keys, display, "Return")
                    await asyncio.to_thread(
                        expect, screen, f"desk/network-refused-{language}", OUT, words["refused"]
                    )
                    assert agent.network.settings.mode.value == "dhcp"
                    assert not (tmp_path / "state" / "network" / "outer.json").exists()
                    # corrected (the focus is on the refused field): kept
                    await asyncio.to_thread(_keys, display, "ctrl+a")
                    await asyncio.to_thread(_type, display, "192.0.2.50/24")
                    await asyncio.to_thread(_keys, display, "Tab", "ctrl+a")
                    await asyncio.to_thread(_type, display, "192.0.2.1")
                    await asyncio.to_thread(_keys, display, "Return")
                    await _until(lambda: agent.network.settings.mode is Mode.STATIC)
                    assert agent.network.settings.address == "192.0.2.50/24"
                    await asyncio.to_thread(expect, screen, f"desk/network-saved-{language}", OUT,
                                            words["saved"])  # fmt: skip
                    # the support screen: one key, from the start screen
                    await asyncio.to_thread(_keys, display, "Escape")
                    # each screen is a new window: a key pressed while it replaces the old
                    # one can land on neither (the greeter's design, app.render)
                    await _until(lambda: _kind(report) == "insert")
                    await asyncio.sleep(1.0)
                    await asyncio.to_thread(_keys, display, "F1")
                    await asyncio.to_thread(
                        expect, screen, f"desk/support-{language}", OUT, words["support"]
                    )
                    assert agent.network_status() is NetworkStatus.UDP_BLOCKED
                    # Enter sends diagnostics: this agent has no fleet configuration, and says so
                    await asyncio.to_thread(_keys, display, "Return")
                    await asyncio.to_thread(
                        expect, screen, f"desk/support-not-sent-{language}", OUT, words["not-sent"]
                    )
            finally:
                bus.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
    # the agent after a reboot, on the same data partition: the address is still there
    assert NetworkStore(tmp_path / "state", SITE).settings.address == "192.0.2.50/24"


async def _until(condition: object, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.2)


def test_desk_references_tell_screens_apart() -> None:
    """No reference of these screens passes for another, for the start screen or a blank one."""
    names = sorted((REFERENCES / DESK).glob("*.png"))
    assert len(names) == 10
    images = {p.stem: load(p) for p in [*names, REFERENCES / "insert-card.png"]}
    pictures = {name: Picture.of(pixels) for name, pixels in images.items()}
    for name, pixels in images.items():
        assert compare(pictures[name], pictures[name]).matches
        colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
        blank = np.broadcast_to(colours[counts.argmax()], pixels.shape)  # the background, alone
        assert blank.shape == pixels.shape
        assert not compare(blank, pictures[name]).matches, f"a blank screen passes for {name}"
    for (shown, shot), (name, reference) in itertools.permutations(pictures.items(), 2):
        assert not compare(shot, reference).matches, f"{shown} passes for {name}"


def _kind(report: Path) -> str:
    try:
        return str(json.loads((report / "screen.json").read_text(encoding="utf-8"))["kind"])
    except (FileNotFoundError, ValueError):
        return ""


def test_the_screen_blanks_when_idle_and_wakes_on_a_key_or_a_card(tmp_path: Path) -> None:
    bus_dir = Path(tempfile.mkdtemp(prefix="sdbox-desk-bus-"))
    bus_dir.chmod(0o755)
    agent = _agent(tmp_path)

    async def scenario() -> None:
        with dbus_daemon(bus_dir) as address, _report_dir() as report:
            bus = await export(agent, address)
            try:
                # 3 s instead of the generation's minutes (the variable is for tests and bench)
                env = {SCREEN_FILE_VARIABLE: str(report / "screen.json"), BLANK_VARIABLE: "3"}
                with xvfb(SIZE) as display, greeter_on_x11(address, display, "en", env):
                    screen = X11Screen(process=None, runtime=report, display=display)  # type: ignore[arg-type]
                    await _until(lambda: _kind(report) == "insert")
                    await _until(lambda: _kind(report) == "blank", timeout=20)
                    # the screen file is written as the blank window is made: the X server
                    # shows it a frame or more later, so the pixels are polled
                    black = 0.0
                    for _ in range(50):
                        pixels = await asyncio.to_thread(screen.pixels)
                        black = float((pixels[:-1, :-1] == 0).all(axis=2).mean())
                        if black > 0.999:
                            break
                        await asyncio.sleep(0.2)
                    assert black > 0.999, f"the blank screen is {black:.1%} black"
                    # a key wakes it (and does nothing else)
                    await asyncio.to_thread(_keys, display, "Escape")
                    await _until(lambda: _kind(report) == "insert")
                    await _until(lambda: _kind(report) == "blank", timeout=20)
                    # a card wakes it: the agent's first step with an inserted card
                    agent._set(State.READING)
                    await _until(lambda: _kind(report) == "reading")
                    # the picker is idle too; a prompt (the finger) never blanks
                    agent._set(State.VERIFYING, project="census-2021")
                    await asyncio.sleep(6)
                    assert _kind(report) == "finger"
            finally:
                bus.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)


def _ink(pixels: np.ndarray) -> tuple[int, int, int]:
    """(first row, height of the first line of text, first column) of what is drawn."""
    pixels = pixels[:-8]  # the X screen's last row is the window's edge, not the greeter's
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()].astype(int)
    ink = np.abs(pixels.astype(int) - background).max(axis=2) > 60
    rows = np.flatnonzero(ink.any(axis=1))
    first = int(rows[0])
    height = 1
    while first + height in set(rows.tolist()):
        height += 1
    return first, height, int(np.flatnonzero(ink.any(axis=0))[0])


def test_a_dense_screen_gets_the_greeter_at_its_scale(tmp_path: Path) -> None:
    """The generation's [display] scale (200 here) doubles the greeter's text and margins."""
    bus_dir = Path(tempfile.mkdtemp(prefix="sdbox-desk-bus-"))
    bus_dir.chmod(0o755)
    agent = _agent(tmp_path)
    (OUT / DESK).mkdir(parents=True, exist_ok=True)
    shots: dict[int, np.ndarray] = {}

    async def scenario() -> None:
        with dbus_daemon(bus_dir) as address:
            bus = await export(agent, address)
            try:
                for scale in (100, 200):
                    with _report_dir() as report:
                        env = {SCREEN_FILE_VARIABLE: str(report / "screen.json"),
                               SCALE_VARIABLE: str(scale)}  # fmt: skip
                        with xvfb(SIZE) as display, greeter_on_x11(address, display, "en", env):
                            screen = X11Screen(process=None, runtime=report, display=display)  # type: ignore[arg-type]
                            await _until(lambda: window_shown(display) and _kind(report) == "insert")
                            shots[scale] = await asyncio.to_thread(screen.settled)
                            screen.save(shots[scale], OUT / DESK / f"scale-{scale}.png")
            finally:
                bus.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        shutil.rmtree(bus_dir, ignore_errors=True)
    top, line, left = _ink(shots[100])
    top2, line2, left2 = _ink(shots[200])
    # the first line ("Secure data access") twice as tall, twice as far from the edges
    assert 1.7 <= line2 / line <= 2.3, (line, line2)
    assert 1.8 <= left2 / left <= 2.2, (left, left2)
    assert 1.8 <= top2 / top <= 2.2, (top, top2)
