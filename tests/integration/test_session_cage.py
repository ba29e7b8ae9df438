"""The box's kiosk path: the session client inside cage (headless wlroots), seen through grim.

Two ways in for RDP: xfreerdp3 through cage's Xwayland (the default client),
and sdl-freerdp3 as a native Wayland client; both must put the server's test
pattern on the compositor's output. remote-viewer (GTK) runs as a native
Wayland client and must connect.
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
    SpiceSession,
)
from tests.integration.session_servers import (
    RDP_PASSWORD,
    RDP_USER,
    SPICE_PASSWORD,
    SPICE_SUBJECT,
    Cage,
    ShadowServer,
    cage,
    make_server_cert,
    paint_pattern,
    pattern_in,
    pid_alive,
    shadow_server,
    spice_server,
    tool_missing,
    xvfb,
)

_MISSING = tool_missing(
    "cage", "grim", "Xwayland", "xfreerdp3", "sdl-freerdp3", "freerdp-shadow-cli3", "Xvfb"
)
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


@pytest.mark.skipif(
    tool_missing("remote-viewer", "qemu-system-x86_64") is not None,
    reason="remote-viewer / QEMU missing: run scripts/setup-system.sh session",
)
def test_spice_viewer_as_native_wayland_client_connects(kiosk: Cage, tmp_path: Path) -> None:
    with spice_server(tmp_path / "spice") as server:

        async def scenario() -> tuple[int, EndReason]:
            spec = SessionSpec(
                endpoint=Endpoint.parse(f"spice://127.0.0.1:{server.port}"),
                user="",
                credential=Credential(SPICE_PASSWORD),
                display=Display(wayland=kiosk.wayland, runtime_dir=kiosk.runtime_dir),
                server_fingerprint=server.certificate.fingerprint,
                ca_pem=server.ca.cert_pem.decode(),
                host_subject=SPICE_SUBJECT,
                connect_timeout=60.0,
            )
            session = SpiceSession(spec, run_as=DEFAULT_SESSION_USER)
            await session.start()
            await session.wait_connected()
            assert session.pid is not None
            return session.pid, (await session.kill()).reason

        pid, reason = asyncio.run(scenario())
    assert reason is EndReason.KILLED
    assert not pid_alive(pid)
