"""Two monitors: an RDP session under cage spans both of the box's screens.

cage on the headless wlroots backend with two outputs (``HEADLESS-1`` and
``HEADLESS-2``, 1280x720 each, laid out side by side as cage lays out a box's
monitors); the bubble is the real ``freerdp-shadow-cli3`` sharing an Xvfb
desktop as wide as both (2560x720), whose left and right halves show
different colours. The client is xfreerdp3 through cage's Xwayland (the
agent's client when ``[session] x11_display`` names it; sdl-freerdp3, the
native Wayland client, fails ``/multimon`` on a headless output as it fails
``/f``, see sdbox.session.rdp). Each output is captured on its own with ``grim -o`` and checked by
pixels; the layout's capture is kept in ``build/session-screens/``.

What ``/multimon`` changes is what the bubble is told: two monitors (MS-RDPBCGR
Client Monitor Data, which the client logs under ``com.freerdp.core.gcc`` at
DEBUG) rather than one wide desktop, so that a Windows bubble maximises a
window to one screen and puts its taskbar on the first. The picture alone
cannot show it here: cage sizes any full-screen window to its whole layout,
and the shadow server serves its own screen whatever the client asks.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.session import (
    DEFAULT_SESSION_USER,
    Credential,
    Display,
    Endpoint,
    EndReason,
    RdpSession,
    SessionSpec,
)
from sdbox.session.base import LineEvent
from tests.integration.session_servers import (
    PATTERN,
    PATTERN_RIGHT,
    RDP_PASSWORD,
    RDP_USER,
    WIDE_H,
    WIDE_W,
    Cage,
    ShadowServer,
    cage,
    make_server_cert,
    paint_pattern,
    quadrants_in,
    shadow_server,
    tool_missing,
    xvfb,
)

_MISSING = tool_missing("cage", "grim", "Xwayland", "xfreerdp3", "freerdp-shadow-cli3", "Xvfb",
                        "convert")  # fmt: skip
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        _MISSING is not None,
        reason=f"{_MISSING} missing: run scripts/setup-system.sh session kiosk",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run cage as the session user"),
]

OUTPUTS = ("HEADLESS-1", "HEADLESS-2")
KEEP = Path("build/session-screens")


@pytest.fixture(scope="module")
def wide_bubble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShadowServer]:
    with xvfb((WIDE_W, WIDE_H)) as display:
        paint_pattern(display, tmp_path_factory.mktemp("pattern"), halves=2)
        certificate = make_server_cert("CN=localhost", ["localhost"])
        with shadow_server(display, tmp_path_factory.mktemp("shadow"), certificate) as running:
            yield running


@pytest.fixture
def two_screens(tmp_path: Path) -> Iterator[Cage]:
    with cage(tmp_path, DEFAULT_SESSION_USER, outputs=2) as running:
        yield running


def _halves_shown(kiosk: Cage) -> set[str]:
    """Which halves of the bubble's desktop the outputs show, each output on its own."""
    shown = set()
    for output in OUTPUTS:
        width, height, pixels = kiosk.screenshot(output)
        assert (width, height) == (WIDE_W // 2, WIDE_H)  # one monitor, not the layout
        if quadrants_in(width, height, pixels, PATTERN):
            shown.add("left")
        if quadrants_in(width, height, pixels, PATTERN_RIGHT):
            shown.add("right")
    return shown


def _keep(kiosk: Cage, name: str) -> None:
    """The whole layout as a PNG under build/ (for people; the test reads the pixels)."""
    width, height, pixels = kiosk.screenshot()
    KEEP.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["convert", "ppm:-", str(KEEP / name)],
        input=f"P6 {width} {height} 255\n".encode() + pixels,
        check=True, timeout=60,
    )  # fmt: skip


class _Recorded(RdpSession):
    """The launcher, keeping the client's (redacted) log lines for the test to read."""

    def __init__(self, spec: SessionSpec) -> None:
        super().__init__(spec, run_as=DEFAULT_SESSION_USER,
                         diagnostic_log_filters=("com.freerdp.core.gcc:DEBUG",))  # fmt: skip
        self.lines: list[str] = []

    def classify(self, line: str) -> LineEvent | None:
        self.lines.append(line)
        return super().classify(line)


_MONITOR = re.compile(r"Monitor\[(\d)\]: top=(\d+), left=(\d+), bottom=(\d+), right=(\d+)")


def _monitors_told(lines: list[str]) -> list[tuple[int, int, int, int]]:
    """The monitors the client sent the bubble: (left, top, right, bottom) each."""
    found = [_MONITOR.search(line) for line in lines if "gcc_write_client_monitor_data" in line]
    return [(int(m[3]), int(m[2]), int(m[5]), int(m[4])) for m in found if m]


def _session_on(
    server: ShadowServer, kiosk: Cage, monitors: int, keep_as: str, *, native: bool = False,
    scale: int = 100,
) -> tuple[set[str], list[tuple[int, int, int, int]]]:
    """A session on ``kiosk``: xfreerdp3 through Xwayland, or sdl-freerdp3 (``native``)."""
    display = (
        Display(wayland=kiosk.wayland, runtime_dir=kiosk.runtime_dir, monitors=monitors, scale=scale)
        if native
        else Display(x11=kiosk.xwayland, xwayland=True, monitors=monitors, scale=scale)
    )

    async def scenario() -> tuple[set[str], list[str], EndReason]:
        spec = SessionSpec(
            endpoint=Endpoint.parse(f"rdp://localhost:{server.port}"),
            user=RDP_USER,
            credential=Credential(RDP_PASSWORD),
            display=display,
            server_fingerprint=server.certificate.fingerprint,
            connect_timeout=60.0,
        )
        session = _Recorded(spec)
        await session.start()
        await session.wait_connected()
        shown: set[str] = set()
        wanted = {"left", "right"}
        deadline = time.monotonic() + 40  # polling bound, nothing timed is asserted
        while shown != wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            shown = await asyncio.to_thread(_halves_shown, kiosk)
        await asyncio.to_thread(_keep, kiosk, keep_as)
        ended = await session.close()
        return shown, session.lines, ended.reason

    assert _halves_shown(kiosk) == set()  # an empty kiosk first
    shown, lines, reason = asyncio.run(scenario())
    assert reason is EndReason.CLOSED
    return shown, _monitors_told(lines)


def test_two_monitors_each_show_their_half_and_the_bubble_knows_both(
    wide_bubble: ShadowServer, two_screens: Cage
) -> None:
    shown, told = _session_on(wide_bubble, two_screens, 2, "rdp-two-outputs.png")
    assert shown == {"left", "right"}
    # the bubble was told of two 1280x720 monitors side by side, not one wide screen
    assert told == [(0, 0, 1279, 719), (1280, 0, 2559, 719)]


def test_without_multimon_the_bubble_sees_one_wide_screen(
    wide_bubble: ShadowServer, two_screens: Cage
) -> None:
    # the launcher before this change, and a box with one screen: cage still stretches
    # the window over both outputs, but the bubble is told of no monitors at all
    shown, told = _session_on(wide_bubble, two_screens, 1, "rdp-one-screen-told.png")
    assert shown == {"left", "right"}
    assert told == []


@pytest.mark.skipif(tool_missing("sdl-freerdp3") is not None, reason="sdl-freerdp3 missing")
def test_the_native_client_on_two_dense_screens_connects_without_monitor_data(
    wide_bubble: ShadowServer, two_screens: Cage
) -> None:
    # the image's client: no /multimon (it fails its pre-connect here), the scale factors
    # asked for. It connects and shows the bubble's desktop, and the bubble is told of no
    # monitors. Whether cage's one window then covers the second output as well is not
    # asserted: it did in the helper's runs, not in a loaded CI run (left half only), so the
    # box's native client is not a two-monitor client (docs/desk.md)
    shown, told = _session_on(wide_bubble, two_screens, 2, "rdp-native-two-outputs.png",
                              native=True, scale=150)  # fmt: skip
    assert "left" in shown
    assert told == []
