"""The box's kiosk path: the session client inside cage (headless wlroots), seen through grim.

Two ways in: xfreerdp3 through cage's Xwayland (the default client), and
sdl-freerdp3 as a native Wayland client. Both must put the server's test
pattern on the compositor's output.
"""

from __future__ import annotations

import asyncio
import os
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
from tests.integration.session_servers import (
    RDP_PASSWORD,
    RDP_USER,
    Cage,
    ShadowServer,
    cage,
    make_server_cert,
    paint_pattern,
    pattern_in,
    shadow_server,
    tool_missing,
    xvfb,
)

_MISSING = tool_missing("cage", "grim", "Xwayland", "xfreerdp3", "sdl-freerdp3",
                        "freerdp-shadow-cli3", "Xvfb")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        _MISSING is not None,
        reason=f"{_MISSING} missing: run scripts/setup-system.sh session kiosk",
    ),
    # cage refuses to run as root: the tests run it as the session user.
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run cage as the session user"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShadowServer]:
    with xvfb() as display:
        paint_pattern(display, tmp_path_factory.mktemp("pattern"))
        certificate = make_server_cert("CN=localhost", ["localhost"])
        with shadow_server(display, tmp_path_factory.mktemp("shadow"), certificate) as running:
            yield running


@pytest.fixture
def kiosk(tmp_path: Path) -> Iterator[Cage]:
    with cage(tmp_path, DEFAULT_SESSION_USER) as running:
        yield running


def _shows_pattern_in_cage(server: ShadowServer, display: Display, kiosk: Cage) -> bool:
    async def scenario() -> tuple[bool, EndReason]:
        spec = SessionSpec(
            endpoint=Endpoint.parse(f"rdp://localhost:{server.port}"),
            user=RDP_USER,
            credential=Credential(RDP_PASSWORD),
            display=display,
            server_fingerprint=server.certificate.fingerprint,
            connect_timeout=60.0,
        )
        session = RdpSession(spec, run_as=DEFAULT_SESSION_USER)
        await session.start()
        await session.wait_connected()
        shown = False
        deadline = time.monotonic() + 30  # polling bound, nothing timed is asserted
        while not shown and time.monotonic() < deadline:
            shown = pattern_in(*await asyncio.to_thread(kiosk.screenshot))
            await asyncio.sleep(0.25)
        ended = await session.close()
        return shown, ended.reason

    assert not pattern_in(*kiosk.screenshot())  # an empty kiosk first
    shown, reason = asyncio.run(scenario())
    assert reason is EndReason.CLOSED
    return shown


def test_xfreerdp_through_cage_xwayland_shows_the_desktop(
    server: ShadowServer, kiosk: Cage
) -> None:
    display = Display(x11=kiosk.xwayland, xwayland=True)
    assert _shows_pattern_in_cage(server, display, kiosk)


def test_sdl_client_as_native_wayland_client_shows_the_desktop(
    server: ShadowServer, kiosk: Cage
) -> None:
    display = Display(wayland=kiosk.wayland, runtime_dir=kiosk.runtime_dir)
    assert _shows_pattern_in_cage(server, display, kiosk)
