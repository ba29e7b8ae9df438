"""The VSCard bridge against a real QEMU: its usb-ccid reader takes our reader, card and removal.

QEMU runs paused (``-S``: no firmware, no guest), which is enough for its
``ccid-card-passthru`` device: it connects to the bridge when the machine is
created, sends its Init, and acknowledges ReaderAdd, ATR and CardRemove with
its own checks (an ATR it finds inconsistent would be refused). The guest's
side (pcscd and libccid reading the card through the reader) is `make image-e2e`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.smartcard.emulator import vscard
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.vscard import CardBridge
from sdbox.trust.pki import Pki

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed"
)


@pytest.fixture
def bridge(tmp_path: Path) -> Iterator[CardBridge]:
    applet = PivApplet(issue_card(load_profile("demo"), Pki.init(tmp_path / "pki")))
    made = CardBridge(applet, tmp_path / "vscard.sock")
    made.start()
    yield made
    made.close()


def test_qemu_attaches_the_reader_takes_the_card_and_its_removal(bridge: CardBridge, tmp_path: Path) -> None:
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-nodefaults", "-S",
         "-display", "none", "-monitor", "none", "-serial", "none",
         "-device", "qemu-xhci,id=xhci", "-device", "usb-ccid,id=ccid,bus=xhci.0",
         "-chardev", f"socket,id=vscard,path={bridge.socket_path}",
         "-device", "ccid-card-passthru,chardev=vscard"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "qemu.log").open("wb"),
    )  # fmt: skip
    try:
        bridge.wait_attached(timeout_s=60)
        assert bridge.peer_version == vscard.VERSION  # QEMU speaks libcacard's 0.0.2
        states = []
        for action in (bridge.insert, bridge.remove, bridge.insert):  # and a second card after it
            action()  # raises unless QEMU acknowledged it with VSC_SUCCESS
            states.append(bridge.inserted)
        assert states == [True, False, True]
        assert qemu.poll() is None, (tmp_path / "qemu.log").read_text()
    finally:
        qemu.terminate()
        qemu.wait(timeout=30)
