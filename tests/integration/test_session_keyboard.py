"""What the bubble receives when the researcher types: the box's layout, through RDP.

The box's screen is an Xvfb with the box's XKB layout (on the box, cage's
``XKB_DEFAULT_LAYOUT`` gives Xwayland the same keymap); ``xdotool`` types a
string on it, into FreeRDP's window, as a keyboard with that layout would.
FreeRDP sends scancodes (key positions) to freerdp-shadow-cli3, which
injects them with XTest into its own Xvfb, the bubble's screen, where
``xev`` reports the characters its X server made of them with the bubble's
layout: what an application in the bubble would get.

What it proves: the keys reach the bubble as positions, and with the layout
the session runs (which a Windows bubble takes from the layout FreeRDP
announces, ``/kbd:layout:0x...``: checked in the client's arguments and in
the server's log of the connection) the researcher's AZERTY, QWERTZ or
QWERTY characters arrive as typed. The control shows the layout is what
decides: the same keys on a bubble left in US English arrive as other
characters. What it does not prove: that a Windows server applies the
announced layout (the shadow server takes its X server's layout, and logs
nothing of what the client announced; the test sets the bubble's X layout
to the announced one, as Windows would, and checks the argument FreeRDP was
given and connected with), and SPICE (scancodes too, and the guest's own
layout decides: nothing is announced). Nor does it go through cage: the
box's Xvfb stands for cage's Xwayland with ``XKB_DEFAULT_LAYOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.session import Credential, Display, Endpoint, RdpSession, SessionSpec
from sdbox.session.keyboard import RDP_LAYOUTS
from tests.integration.session_servers import (
    RDP_PASSWORD,
    RDP_USER,
    Issued,
    ShadowServer,
    make_ca,
    make_server_cert,
    shadow_server,
    tool_missing,
    xvfb,
)

_MISSING = tool_missing("xfreerdp3", "freerdp-shadow-cli3", "winpr-hash3", "Xvfb", "xdotool",
                        "xev", "setxkbmap")  # fmt: skip
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        _MISSING is not None, reason=f"{_MISSING} missing: run scripts/setup-system.sh session"
    ),
]

# Characters whose keys move between AZERTY (fr), QWERTZ (de) and QWERTY (gb, us):
# a/q and z/w swap on AZERTY, y/z on QWERTZ, m moves on AZERTY.
TYPED = "azerty qwertz mywz"
_PRESS = re.compile(r'XLookupString gives \d+ bytes: (?:\(\w+\) )?"(.*)"')


def _x(display: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env={"DISPLAY": display, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip


@contextlib.contextmanager
def key_recorder(display: str, workdir: Path) -> Iterator[Path]:
    """``xev`` on ``display`` with the focus: yields the file of what it reports."""
    out = workdir / "xev.txt"
    with out.open("w") as sink:
        process = subprocess.Popen(
            ["xev", "-event", "keyboard", "-name", "sdbox-keys", "-geometry", "600x400+0+0"],
            env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        window = ""
        deadline = time.monotonic() + 30
        while not window and time.monotonic() < deadline:
            found = subprocess.run(
                ["xdotool", "search", "--name", "sdbox-keys"],
                env={"DISPLAY": display, "PATH": "/usr/bin:/bin"},
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            window = found.stdout.split()[0] if found.stdout.split() else ""
            time.sleep(0.1)
        assert window, "xev's window never appeared"
        _x(display, "xdotool", "windowfocus", "--sync", window)
        yield out
    finally:
        process.terminate()
        process.wait(10)


def received(record: Path) -> str:
    """The characters the bubble's X server made of the key presses, in order."""
    presses: list[str] = []
    lines = record.read_text(errors="replace").splitlines()
    for index, line in enumerate(lines):
        if line.startswith("KeyPress event"):
            for follow in lines[index + 1 : index + 6]:
                match = _PRESS.search(follow)
                if match:
                    presses.append(match.group(1))
                    break
    return "".join(presses)


@pytest.fixture(scope="module")
def certificate() -> Issued:
    return make_server_cert("CN=localhost", ["localhost"], issuer=make_ca())


def type_into_session(
    box_layout: str, bubble_layout: str, certificate: Issued, workdir: Path
) -> tuple[str, list[str]]:
    """Type TYPED on a box with ``box_layout`` into a bubble with ``bubble_layout``.

    Returns what the bubble received and the client's arguments.
    """
    with xvfb() as bubble, xvfb() as box:
        _x(bubble, "setxkbmap", bubble_layout)
        _x(box, "setxkbmap", box_layout)
        with (
            key_recorder(bubble, workdir) as record,
            shadow_server(bubble, workdir / "shadow", certificate, interact=True) as server,
        ):  # fmt: skip
            session = RdpSession(spec(server, box, box_layout), run_as=None)

            async def scenario() -> None:
                await session.start()
                await session.wait_connected()
                try:
                    window = ""
                    deadline = time.monotonic() + 30
                    while not window and time.monotonic() < deadline:
                        found = await asyncio.to_thread(
                            subprocess.run, ["xdotool", "search", "--class", "xfreerdp"],
                            env={"DISPLAY": box, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=10, check=False,
                        )  # fmt: skip
                        window = found.stdout.split()[-1] if found.stdout.split() else ""
                        await asyncio.sleep(0.2)
                    assert window, "FreeRDP's window never appeared"
                    await asyncio.to_thread(_x, box, "xdotool", "windowfocus", "--sync", window)
                    await asyncio.sleep(1)  # the client grabs the keyboard on focus
                    await asyncio.to_thread(_x, box, "xdotool", "type", "--delay", "120", TYPED)
                    deadline = time.monotonic() + 30
                    while len(received(record)) < len(TYPED) and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)
                finally:
                    await session.close()

            asyncio.run(scenario())
            return received(record), session.arguments()


def spec(server: ShadowServer, display: str, layout: str) -> SessionSpec:
    return SessionSpec(
        endpoint=Endpoint.parse(f"rdp://localhost:{server.port}"),
        user=RDP_USER,
        credential=Credential(RDP_PASSWORD),
        display=Display(x11=display),
        server_fingerprint=server.certificate.fingerprint,
        connect_timeout=60.0,
        keyboard_layout=layout,
    )


@pytest.mark.parametrize("layout", ["fr", "de", "gb"])
def test_what_the_researcher_types_is_what_the_bubble_receives(
    layout: str, certificate: Issued, tmp_path: Path
) -> None:
    got, arguments = type_into_session(layout, layout, certificate, tmp_path)
    assert got == TYPED
    # announced to the server (FreeRDP refuses a layout it cannot parse: the session
    # would not have connected); the shadow server logs nothing of it to check
    assert f"/kbd:layout:0x{RDP_LAYOUTS[layout]:08X}" in arguments


def test_the_bubbles_layout_decides_the_characters(certificate: Issued, tmp_path: Path) -> None:
    """The control: QWERTZ keys on a bubble left in US English come out as QWERTY letters."""
    got, _arguments = type_into_session("de", "us", certificate, tmp_path)
    assert got == TYPED.translate(str.maketrans("yz", "zy"))
