"""make image-e2e: the researcher's flow inside the booted test image, driven from the host.

One boot of the test build (`bootimage/build.py --test-build`, into
build/image-e2e-build/) in QEMU with OVMF Secure Boot and swtpm, as
`make image-test` boots it, plus:

- the card: QEMU's ``usb-ccid`` reader (on an xHCI controller) with a
  ``ccid-card-passthru`` card whose chardev is this process's
  :class:`sdbox.smartcard.emulator.vscard.CardBridge`: the guest's own pcscd
  and libccid see an ordinary USB reader; the card is the project's emulator,
  issued under the image build's PKI, its primary finger enrolled from a real
  FVC2002 print (``../shared/data/fvc2002``, read in place, never copied);
- the finger: another impression of that finger, sent over a virtio-serial
  port to the test build's relay, which hands it to the agent's libfprint
  ``virtual_image`` device: the guest's capture path (libfprint, NBIS mindtct,
  the quality gate) runs on it;
- the screen and keyboard: QMP ``screendump`` and ``send-key``
  (bootimage/e2e_screen.py decides what the screen shows from the pixels);
- the centre: the reference broker on the host, reached as `make image-test`
  reaches it (QEMU user network, guestfwd). TUNNEL: this is the place where
  the tunnel (the reference gateway in a namespace, netem 30 ms) replaces
  guestfwd once the tunnel is in the image.

Every step is timed from the host's action to the screenshot that shows its
result; build/image-e2e/summary.json holds the steps and the screenshots.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bootimage"))

import boot_test  # noqa: E402  (bootimage/boot_test.py: the VM, as make image-test boots it)
import centre  # noqa: E402
import e2e_bubbles  # noqa: E402
import e2e_screen  # noqa: E402
import numpy as np  # noqa: E402
import tunnel_centre  # noqa: E402  (the gateway and the broker in a namespace, as image-test has them)

from sdbox.biometric import extract, images, matcher, realprints  # noqa: E402
from sdbox.biometric.errors import CaptureError  # noqa: E402
from sdbox.biometric.ridges import GreyImage  # noqa: E402
from sdbox.smartcard.emulator.applet import PivApplet  # noqa: E402
from sdbox.smartcard.emulator.profiles import CardProfile, issue_card  # noqa: E402
from sdbox.smartcard.emulator.state import CardState, Counter  # noqa: E402
from sdbox.smartcard.emulator.vscard import CardBridge  # noqa: E402
from sdbox.trust.pki import Pki  # noqa: E402
from tests.integration.session_servers import pattern_in  # noqa: E402

OUT = ROOT / "build" / "image-e2e"
IMAGE_DIR = ROOT / "build" / "image-e2e-build"
PRIMARY_FINGER = 0x96
FINGER_PORT = "org.sdbox.e2e.finger"
CONTROL_PORT = "org.sdbox.e2e.control"
# the e2e card's finger counter: three wrong fingers block it (the issue's fault scenario)
FINGER_TRIES = 3
# QEMU's usb-ccid (7.2) is a T=0 reader exchanging TPDUs: a T=1 card's extended-length APDUs
# fail there ("Transaction failed"), as they would in any T=0-only reader. The e2e card is the
# T=0 chip variant, which the box drives with short APDUs and GET RESPONSE (docs/card-variants.md)
CARD_PROFILE = "biosso-t0"
PRINTS = "DB1_B"  # FVC2002 set at 500 ppi, the agent's configured sensor resolution


class E2eVm(boot_test.Vm):
    """make image-test's VM with a USB CCID reader, two virtio-serial ports, QMP, a 1280x720 display."""

    def __init__(self, work: Path, disk_image: Path, accel: str) -> None:
        super().__init__(work, disk_image, accel, keep_vars=True)
        self.vscard = work / "vscard.sock"
        self.finger = work / "finger.sock"
        self.control = work / "control.sock"
        self.qmp = work / "qmp.sock"
        # the display at the greeter references' size, so that its screens compare 1:1
        self.gpu += f",xres={e2e_screen.SCREEN_W},yres={e2e_screen.SCREEN_H}"

    def argv(self, tpm_sock: Path) -> list[str]:
        argv = super().argv(tpm_sock)
        ports = []
        for chardev, path, name in (("finger", self.finger, FINGER_PORT),
                                    ("control", self.control, CONTROL_PORT)):  # fmt: skip
            ports += ["-chardev", f"socket,id={chardev},path={path},server=on,wait=off",
                      "-device", f"virtserialport,bus=vser.0,chardev={chardev},name={name}"]  # fmt: skip
        return [
            *argv,
            # the card: a USB CCID reader whose card is our bridge (QEMU connects to it)
            "-device", "qemu-xhci,id=xhci",
            "-device", "usb-ccid,id=ccid,bus=xhci.0",
            "-chardev", f"socket,id=vscard,path={self.vscard}",
            "-device", "ccid-card-passthru,chardev=vscard",
            "-device", "virtio-serial-pci,id=vser",
            *ports,
        ]  # fmt: skip


class Port:
    """The host's end of a virtio-serial port (QEMU's unix socket server)."""

    def __init__(self, path: Path, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                break
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sock.settimeout(120)
        self.sock = sock
        self.stream = sock.makefile("rwb")
        self.lock = threading.Lock()

    def ask(self, data: bytes) -> dict[str, Any]:
        """Send ``data``; the relay's one JSON line back."""
        with self.lock:
            self.stream.write(data)
            self.stream.flush()
            line = self.stream.readline()
        if not line:
            raise RuntimeError("the guest's e2e relay closed its port")
        answer: dict[str, Any] = json.loads(line)
        return answer


@dataclass
class Prints:
    """The real prints: the enrolled impression's template, a genuine probe, an impostor."""

    enrolled: str
    genuine: GreyImage
    genuine_name: str
    impostor: GreyImage
    impostor_name: str
    template: bytes
    host_score: float


def choose_prints() -> Prints:
    """The first FVC2002 finger whose second impression matches its first on the host's matcher."""
    why = realprints.missing()
    if why:
        raise RuntimeError(f"the FVC2002 prints are needed: {why}")
    ppi = realprints.SETS[PRINTS]
    by_finger: dict[int, list[realprints.Impression]] = {}
    for impression in realprints.impressions(PRINTS):
        by_finger.setdefault(impression.finger, []).append(impression)
    fingers = sorted(by_finger)
    for finger in fingers:
        first, *others = by_finger[finger]
        try:
            template = realprints.template(first, gated=True)
        except CaptureError:
            continue
        for other in others[:3]:
            image = images.load(other.path, ppi)
            try:
                probe = extract.template(image, ppi, gated=True)
            except CaptureError:
                continue
            score = matcher.score(probe, template)
            if score >= matcher.THRESHOLD * 1.5:  # a margin: the guest extracts it again
                stranger = by_finger[fingers[(fingers.index(finger) + 1) % len(fingers)]][0]
                return Prints(first.path.name, image, other.path.name,
                              images.load(stranger.path, ppi), stranger.path.name, template, score)  # fmt: skip
    raise RuntimeError(f"no finger of {PRINTS} matches its own second impression on the host")


def issue_e2e_card(pki: Pki, prints: Prints, profile: CardProfile) -> CardState:
    """The e2e card under the image build's PKI, its bubbles on the centre network, its
    primary finger enrolled from a real print (with FINGER_TRIES tries)."""
    state = issue_card(profile, pki)
    state.fingers[PRIMARY_FINGER] = Counter(prints.template, FINGER_TRIES, FINGER_TRIES)
    return state


def frame(image: GreyImage) -> bytes:
    """libfprint's virtual_image framing: native int32 width, height, then the pixels."""
    return struct.pack("ii", image.width, image.height) + image.pixels


@dataclass
class Run:
    """One e2e run: the steps, the screenshots, what the guest said."""

    out: Path
    started: float = field(default_factory=time.monotonic)
    steps: list[dict[str, Any]] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)

    def step(self, name: str, ok: bool, seconds: float | None, detail: str) -> bool:
        self.steps.append({"step": name, "ok": ok, "seconds": None if seconds is None else round(seconds, 2),
                           "detail": detail})  # fmt: skip
        timing = "" if seconds is None else f" {seconds:6.2f} s"
        print(f"  [{'ok' if ok else 'FAIL':4}]{timing} {name}: {detail}", flush=True)
        return ok


class Box:
    """The running VM from the host's side: screen, keyboard, card, finger, test commands."""

    def __init__(self, vm: E2eVm, bridge: CardBridge, run: Run) -> None:
        self.vm = vm
        self.bridge = bridge
        self.run = run
        self.screens = e2e_screen.Screens()
        assert vm.qmp is not None  # E2eVm always has its monitor
        self.qmp = e2e_screen.Qmp(vm.qmp)
        self.finger: Port | None = None
        self.control: Port | None = None
        self.last: tuple[np.ndarray, e2e_screen.Seen] | None = None

    def shot(self) -> tuple[float, np.ndarray]:
        """A screenshot and when it was taken."""
        taken = time.monotonic()
        return taken, self.qmp.screendump(self.vm.work / "screen.ppm")

    def wait_for(
        self, name: str, timeout_s: float, *, away_from: tuple[str, ...] = (), every: float = 0.2
    ) -> tuple[bool, float, e2e_screen.Seen]:
        """Poll until the screen shows reference ``name`` (or, with ``away_from``, shows none of
        those and is not blank); (shown, seconds from the call to the screenshot, what it shows)."""
        started = time.monotonic()
        while True:
            taken, pixels = self.shot()
            if away_from:
                quick = not any(self.screens.near(pixels, n) for n in away_from) and not bool(
                    (pixels == pixels[0, 0]).all())
            else:
                quick = self.screens.near(pixels, name)
            if quick or time.monotonic() - started > timeout_s:
                seen = self.screens.classify(pixels)
                self.last = (pixels, seen)
                if away_from:
                    shown = quick and not any(seen.shows(n) for n in away_from) and not seen.blank
                else:
                    shown = seen.shows(name)
                if shown or time.monotonic() - started > timeout_s:
                    return shown, taken - started, seen
            time.sleep(every)

    def kind(self) -> str:
        """The kind of screen the greeter last built (its screen file, through the relay)."""
        try:
            return str((self.command("screen").get("screen") or {}).get("kind", ""))
        except (OSError, RuntimeError, ValueError):
            return ""

    def wait_kind(
        self, kinds: tuple[str, ...], timeout_s: float, title: str | None = None
    ) -> tuple[bool, float, e2e_screen.Seen]:
        """Poll until the greeter has built one of ``kinds`` and the screenshot shows it: the
        greeter's background over most of the screen and, with ``title``, that reference's
        title block."""
        started = time.monotonic()
        while True:
            taken, pixels = self.shot()
            kind = self.kind()
            shown = kind in kinds and self.screens.greeter_shown(pixels) and (
                title is None or self.screens.near_top(pixels, title))
            if shown:
                seen = self.screens.classify(pixels)
                self.last = (pixels, seen)
                return True, taken - started, seen
            if time.monotonic() - started > timeout_s:
                seen = self.screens.classify(pixels)
                self.last = (pixels, seen)
                return False, taken - started, seen
            time.sleep(0.3)

    def wait_other_bubble(self, timeout_s: float) -> tuple[bool, float, e2e_screen.Seen]:
        """Poll until a session runs (the greeter's kind) and the screen shows neither the
        greeter, nor the RDP bubble's pattern, nor a blank screen: the SPICE viewer's window."""
        started = time.monotonic()
        while True:
            taken, pixels = self.shot()
            running = self.kind() == "running"
            seen = self.screens.classify(pixels)
            if running and not seen.pattern and not seen.blank and seen.score > e2e_screen.NEAR:
                self.last = (pixels, seen)
                return True, taken - started, seen
            if time.monotonic() - started > timeout_s:
                self.last = (pixels, seen)
                return False, taken - started, seen
            time.sleep(0.5)

    def wait_pattern(self, timeout_s: float) -> tuple[bool, float, e2e_screen.Seen]:
        """Poll until the bubble's test pattern is on the screen."""
        started = time.monotonic()
        while True:
            taken, pixels = self.shot()
            height, width, _ = pixels.shape
            if pattern_in(width, height, pixels.tobytes()) or time.monotonic() - started > timeout_s:
                seen = self.screens.classify(pixels)
                self.last = (pixels, seen)
                return seen.pattern, taken - started, seen
            time.sleep(0.5)

    def keep(self, name: str) -> str:
        """Save the last screenshot as build/image-e2e/NAME.png."""
        assert self.last is not None
        path = self.run.out / f"{name}.png"
        e2e_screen.save_png(self.last[0], path)
        self.run.screenshots.append(path.name)
        return path.name

    def command(self, command: str) -> dict[str, Any]:
        if self.control is None:
            self.control = Port(self.vm.control)
        return self.control.ask(command.encode() + b"\n")

    def words(self) -> list[str]:
        """The greeter's words for its current screen (its screen file, through the relay)."""
        try:
            screen = self.command("screen").get("screen") or {}
        except (OSError, RuntimeError, ValueError):
            return []
        return [str(text) for text in screen.get("texts", [])]

    def place(self, image: GreyImage) -> threading.Thread:
        """The finger on the sensor, from a thread (the relay answers once libfprint has read it)."""
        if self.finger is None:
            self.finger = Port(self.vm.finger)
        port = self.finger
        result: dict[str, Any] = {}

        def send() -> None:
            try:
                result.update(port.ask(frame(image)))
            except (OSError, RuntimeError, ValueError) as exc:
                result["error"] = str(exc)

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        return thread


def flow(box: Box, prints: Prints, boot_started: float, timeout: float, attached: threading.Event) -> None:
    """The researcher's flow, then the faults this build can show."""
    run = box.run
    # 1. boot -> "insert your card" (QEMU's start to the screenshot that shows it)
    # (a screenshot every 2 s while the box boots: screendumps cost the guest's CPU too)
    shown, _, seen = box.wait_for("insert-card", timeout, every=2.0)
    run.step("boot -> 'insert your card' visible", shown, time.monotonic() - boot_started,
             f"{seen}; screenshot {box.keep('01-insert-card')}")  # fmt: skip
    run.step("the card reader is attached (QEMU's usb-ccid, VSCard bridge)", attached.wait(60), None,
             f"QEMU speaks VSCard {box.bridge.peer_version}")  # fmt: skip
    if not shown or not attached.is_set():
        # what the guest says about itself: is the greeter up and building screens at all?
        try:
            said = {"status": box.command("status"), "greeter_words": box.words(),
                    "logs": box.command("logs"), "probe_gtk": box.command("probe-gtk")}  # fmt: skip
        except (OSError, RuntimeError, ValueError) as exc:
            said = {"relay": f"no answer: {exc}"}
        (run.out / "guest.json").write_text(json.dumps(said, indent=1) + "\n")
        run.step("the guest's own account (the test relay; all of it in guest.json)", False, None,
                 json.dumps(said)[:600])  # fmt: skip
        return
    # the pointer away from the rows (cage starts it mid-screen: a hovered row is drawn lighter;
    # nobody uses a mouse on the box, and the references have none)
    box.qmp.execute("input-send-event", events=[
        {"type": "rel", "data": {"axis": "x", "value": 4000}},
        {"type": "rel", "data": {"axis": "y", "value": 4000}}])  # fmt: skip
    # 2. insert -> picker
    box.bridge.insert()
    shown, took, seen = box.wait_kind(("picker",), 60, title="picker")
    run.step("insert -> picker visible", shown, took,
             f"'Choose a project' on screen ({seen}); the greeter lists {box.words()[3:6]}; "
             f"screenshot {box.keep('02-picker')}")  # fmt: skip
    # 3. choose with the keyboard -> the finger prompt
    box.qmp.key("ret")
    shown, took, seen = box.wait_for("place-finger", 60)
    run.step("Enter on the first project -> 'place your finger' visible", shown, took,
             f"{seen}; screenshot {box.keep('03-place-finger')}")  # fmt: skip
    # 4. the genuine finger -> the holder verified -> the RDP bubble's test pattern on the screen
    started = time.monotonic()
    sent = box.place(prints.genuine)
    pattern, _, seen = box.wait_pattern(120)
    sent.join(30)
    run.step(f"finger ({prints.genuine_name}, enrolled {prints.enrolled}) -> the RDP bubble's "
             "session pattern visible", pattern, time.monotonic() - started,
             f"{seen}; the greeter says {box.words()[:3]}; screenshot {box.keep('04-session-rdp')}")  # fmt: skip
    if not pattern:  # the guest's account now, while it is fresh (the run goes on)
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            (run.out / "guest-no-session.json").write_text(json.dumps(box.command("logs"), indent=1))
    # 5. switch: Ctrl+Alt+D leaves the RDP session for the projects (sdl-freerdp3's disconnect
    #    key; the card stays in and its holder verified), then the SPICE project: no finger
    if not pattern:  # nothing to switch from: the step is not passed by the picker already there
        run.step("switch (Ctrl+Alt+D, then the SPICE project)", False, None,
                 "not tried: no RDP session was on the screen")  # fmt: skip
    else:
        started = time.monotonic()
        box.qmp.key("ctrl", "alt", "d")
        back, took, seen = box.wait_kind(("picker",), 60)
        run.step("Ctrl+Alt+D -> the projects visible again (the session left, the card still in)",
                 back, took,
                 f"{seen}; the greeter says {box.words()[:3]}; screenshot {box.keep('05-projects')}")  # fmt: skip
        box.qmp.key("down")
        box.qmp.key("down")
        box.qmp.key("ret")
        spice, took, seen = box.wait_other_bubble(90)
        run.step("down, down, Enter on the SPICE project -> its viewer on the screen, no finger asked",
                 spice, time.monotonic() - started,
                 f"{seen}; the greeter says {box.words()[:3]}; screenshot {box.keep('06-session-spice')}")  # fmt: skip
    # 6. the card pulled during the session -> the client gone, "insert your card"
    started = time.monotonic()
    box.bridge.remove()
    shown, took, seen = box.wait_for("insert-card", 60)
    left = box.command("status").get("session_processes")
    run.step("card pulled during the session -> 'insert your card' visible, no session process left",
             shown and not left, took,
             f"{seen}; session user's processes: {left}; screenshot {box.keep('07-removed')}")  # fmt: skip
    # fault: the agent killed -> systemd restarts it, the greeter reconnects, no orphan
    before = box.command("status")
    killed = box.command("kill-agent")
    started = time.monotonic()
    restarted: dict[str, Any] = {}
    while time.monotonic() - started < 120:
        restarted = box.command("status")
        agent = restarted.get("agent", {})
        if agent.get("ActiveState") == "active" and agent.get("MainPID") not in ("0", killed.get("killed")):
            break
        time.sleep(1)
    agent = restarted.get("agent", {})
    back = (agent.get("ActiveState") == "active" and agent.get("MainPID") not in ("0", killed.get("killed"))
            and int(agent.get("NRestarts", "0")) > int(before.get("agent", {}).get("NRestarts", "0")))  # fmt: skip
    run.step("agent killed (SIGKILL) -> systemd restarts it", back, time.monotonic() - started,
             f"pid {killed.get('killed')} -> {agent.get('MainPID')}, restarts {agent.get('NRestarts')}")  # fmt: skip
    box.bridge.insert()
    shown, took, seen = box.wait_kind(("picker",), 90, title="picker")
    orphans = box.command("status").get("session_processes")
    run.step("after the restart the greeter reconnects: insert -> picker visible; no session process left",
             shown and not orphans, took,
             f"{seen}; session user's processes: {orphans}; screenshot {box.keep('08-picker-after-restart')}")  # fmt: skip
    # fault: the wrong finger three times -> tries left, then blocked
    box.qmp.key("ret")
    box.wait_for("place-finger", 60)
    for attempt in (1, 2, 3):
        started = time.monotonic()
        sent = box.place(prints.impostor)
        want = "wrong-finger" if attempt < 3 else "blocked"
        if attempt < 3:
            shown, took, seen = box.wait_for("wrong-finger", 120)
        else:
            shown, took, seen = box.wait_for("", 120, away_from=("place-finger", "wrong-finger"))
        sent.join(30)
        words = box.words()
        if attempt == 3:  # no English reference for this screen: the greeter's words say which
            shown = shown and any("blocked" in w.lower() for w in words)
        else:
            shown = shown and any("tries left" in w for w in words)
        run.step(f"wrong finger ({prints.impostor_name}) #{attempt} -> {want} visible", shown, took,
                 f"{seen}; the greeter says {words[:3]}; screenshot {box.keep(f'09-wrong-finger-{attempt}')}")  # fmt: skip
        if attempt < 3:
            box.wait_for("place-finger", 30)
    box.bridge.remove()
    shown, took, seen = box.wait_for("insert-card", 60)
    run.step("remove -> 'insert your card' visible", shown, took, f"{seen}")
    # what the guest said, for the summary's reader (the agent's and the greeter's journal)
    with contextlib.suppress(OSError, RuntimeError, ValueError):
        (run.out / "guest.json").write_text(json.dumps(box.command("logs"), indent=1) + "\n")
    events = box.command("journal").get("events", [])
    names = [e.get("SDBOX_EVENT") for e in events]
    run.step("audit events of the flow in the guest's journal", "card_inserted" in names or len(names) > 3,
             None, ", ".join(str(n) for n in names if n)[-400:])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generation", default="qemu-q35")
    parser.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="auto")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to the first screen")
    parser.add_argument("--echo", action="store_true", help="copy the console to stdout")
    args = parser.parse_args()
    image = IMAGE_DIR / f"sdbox-{args.generation}.raw"
    if not image.exists():
        print(f"image-e2e: {image} does not exist: build the test image first "
              "(bootimage/build.py --test-build)", file=sys.stderr)  # fmt: skip
        return 2
    figures = json.loads(image.with_suffix(".json").read_text())
    if not figures.get("test_build"):
        print(f"image-e2e: {image} is not a test build", file=sys.stderr)
        return 2
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    work = OUT / "work"
    work.mkdir()
    accel = boot_test.pick_accel(args.accel, work)
    run = Run(OUT)
    prints = choose_prints()
    print(f"prints: {PRINTS} {prints.enrolled} enrolled on the card, {prints.genuine_name} presented "
          f"(host score {prints.host_score:.3f}, threshold {matcher.THRESHOLD}), "
          f"{prints.impostor_name} as the wrong finger")  # fmt: skip
    pki = Pki.open(IMAGE_DIR / "pki")
    profile = e2e_bubbles.profile(tunnel_centre.BROKER, CARD_PROFILE)
    card = issue_e2e_card(pki, prints, profile)
    why_not = tunnel_centre.missing()
    if why_not:
        print(f"image-e2e: the centre behind a tap device cannot run here: {why_not}", file=sys.stderr)
        return 2
    # the centre as image-test has it: gateway and broker in a namespace, QEMU's tap there
    ctr = tunnel_centre.start(work / "centre", IMAGE_DIR / "pki",
                              broker_extra=e2e_bubbles.broker_lines(profile, work / "bubbles"))  # fmt: skip
    vm: E2eVm | None = None
    bridge = CardBridge(PivApplet(card), work / "vscard.sock")
    status = 1
    stack = contextlib.ExitStack()
    try:
        bubbles = stack.enter_context(e2e_bubbles.run(ctr.name, profile, pki, work / "bubbles"))
        print(f"centre: namespace {ctr.name}, gateway {tunnel_centre.GATEWAY_ID} on "
              f"{tunnel_centre.GATEWAY}; behind the tunnel the broker on "
              f"{tunnel_centre.BROKER}:{tunnel_centre.BROKER_PORT} and the bubbles "
              + ", ".join(f"{p.id} ({p.protocol.name}) on {p.endpoint}" for p in profile.projects)
              + f" ({len(bubbles)} up)")  # fmt: skip
        flashed = centre.flash_with_token(image, work, figures["generation"], ctr,
                                          site=tunnel_centre.SITE.encode())  # fmt: skip
        vm = E2eVm(work, boot_test.overlay(flashed, work), accel)
        vm.netdev = ctr.netdev()
        vm.prefix = ctr.qemu_prefix()
        bridge.start()
        boot_started = time.monotonic()
        attached = threading.Event()

        def attach() -> None:
            bridge.wait_attached(timeout_s=120)
            attached.set()

        threading.Thread(target=attach, daemon=True).start()
        # the flow starts from the screen, not from the console: QEMU started, the kernel running
        boot = vm.boot(("Linux version",), 300, sys.stdout if args.echo else None, "e2e")
        box = Box(vm, bridge, run)
        try:
            flow(box, prints, boot_started, args.timeout, attached)
        finally:
            box.qmp.close()
        failed = [line.strip() for _, line in boot.lines if "[FAILED]" in line]
        report = boot_test.report_of(boot, boot_test.REPORT)
        run.step("no unit failed during the run (the console's [FAILED] lines, the boot report)",
                 not failed and not (report or {}).get("failed"), None,
                 "; ".join(failed) or ", ".join((report or {}).get("failed", [])) or "none")  # fmt: skip
        status = 0 if run.steps and all(s["ok"] for s in run.steps) else 1
    except Exception as exc:  # the summary is written whatever stopped the run
        run.step("the run", False, None, f"stopped: {exc!r}")
    finally:
        bridge.close()
        if vm is not None:
            vm.stop()
        stack.close()
        ctr.stop()
        centre.cleanup(work)
    summary = {"accel": accel, "image": str(image), "steps": run.steps, "screenshots": run.screenshots,
               "apdus": bridge.apdus, "total_s": round(time.monotonic() - run.started, 1)}  # fmt: skip
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    ok = sum(1 for s in run.steps if s["ok"])
    print("\nsummary:")
    for step in run.steps:
        timing = "" if step["seconds"] is None else f"{step['seconds']:7.2f} s"
        print(f"  [{'ok' if step['ok'] else 'FAIL':4}] {timing:>9} {step['step']}")
    print(f"\nimage-e2e: {ok}/{len(run.steps)} steps ok in {summary['total_s']:.0f} s ({accel}); "
          f"{bridge.apdus} APDUs through the USB reader; screenshots and summary in {OUT}")  # fmt: skip
    return status


if __name__ == "__main__":
    sys.exit(main())
