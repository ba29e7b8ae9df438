"""SPICE sessions: remote-viewer against QEMU's own SPICE server (TLS only) on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sdbox.session import (
    DEFAULT_SESSION_USER,
    Credential,
    Display,
    Endpoint,
    EndReason,
    SessionEnded,
    SessionFailed,
    SessionSpec,
    SpiceSession,
)
from tests.integration.session_servers import (
    SPICE_PASSWORD,
    SPICE_SUBJECT,
    SpiceServer,
    group_members,
    make_server_cert,
    pid_alive,
    spice_server,
    tool_missing,
    xvfb,
)

_MISSING = tool_missing("remote-viewer", "qemu-system-x86_64", "Xvfb")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        _MISSING is not None, reason=f"{_MISSING} missing: run scripts/setup-system.sh session"
    ),
]

T = TypeVar("T")
RUN_AS = DEFAULT_SESSION_USER if os.geteuid() == 0 else None
# Generous: a 2-core CI machine starting GTK; the wrong-subject test shows
# that the viewer is ended well before this, by the failure it reports.
CONNECT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    with xvfb() as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpiceServer]:
    with spice_server(tmp_path_factory.mktemp("spice")) as running:
        yield running


def spec_for(
    server: SpiceServer,
    display: str,
    *,
    subject: str = SPICE_SUBJECT,
    password: str = SPICE_PASSWORD,
    fingerprint: str | None = None,
) -> SessionSpec:
    return SessionSpec(
        endpoint=Endpoint.parse(f"spice://127.0.0.1:{server.port}"),
        user="",
        credential=Credential(password),
        display=Display(x11=display),
        server_fingerprint=fingerprint,
        ca_pem=server.ca.cert_pem.decode(),
        host_subject=subject,
        connect_timeout=CONNECT_TIMEOUT,
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_right_subject_and_password_connect(server: SpiceServer, display: str) -> None:
    async def scenario() -> tuple[bytes, bytes, int, SessionEnded]:
        session = SpiceSession(spec_for(server, display), run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        cmdline = Path(f"/proc/{session.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{session.pid}/environ").read_bytes()
        return cmdline, environ, session.pid, await session.kill()

    cmdline, environ, pid, ended = run(scenario())
    assert b"remote-viewer" in cmdline
    assert SPICE_PASSWORD.encode() not in cmdline
    assert SPICE_PASSWORD.encode() not in environ
    assert all(SPICE_PASSWORD not in line for line in ended.log_tail)
    assert ended.reason is EndReason.KILLED
    assert ended.was_connected
    assert not pid_alive(pid)
    assert group_members(pid) == []


def test_pinned_fingerprint_connects(server: SpiceServer, display: str) -> None:
    async def scenario() -> SessionEnded:
        spec = spec_for(server, display, fingerprint=server.certificate.fingerprint)
        session = SpiceSession(spec, run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        return await session.close()

    ended = run(scenario())
    assert ended.reason is EndReason.CLOSED
    assert ended.was_connected


def test_wrong_subject_is_refused_and_the_viewer_is_gone(server: SpiceServer, display: str) -> None:
    async def scenario() -> tuple[int | None, SessionEnded]:
        spec = spec_for(server, display, subject="C=FR,O=sdbox test,CN=impostor.test")
        session = SpiceSession(spec, run_as=RUN_AS)
        await session.start()
        with pytest.raises(SessionFailed) as failure:
            await session.wait_connected()
        return session.pid, failure.value.ended

    pid, ended = run(scenario())
    assert ended.reason is EndReason.CERTIFICATE_REJECTED
    assert "verification failed" in ended.detail  # ended by the failure, not by our timeout
    assert pid is not None
    assert not pid_alive(pid)
    assert group_members(pid) == []


def test_wrong_fingerprint_is_refused_before_the_viewer_starts(
    server: SpiceServer, display: str
) -> None:
    # A certificate for the right subject, but not the bubble's own.
    other = make_server_cert(SPICE_SUBJECT, ["bubble.test"], issuer=server.ca)

    async def scenario() -> tuple[int | None, SessionEnded]:
        spec = spec_for(server, display, fingerprint=other.fingerprint)
        session = SpiceSession(spec, run_as=RUN_AS)
        await session.start()
        with pytest.raises(SessionFailed) as failure:
            await session.wait_connected()
        return session.pid, failure.value.ended

    pid, ended = run(scenario())
    assert ended.reason is EndReason.CERTIFICATE_REJECTED
    assert pid is None


def test_wrong_password_is_authentication_failed(server: SpiceServer, display: str) -> None:
    async def scenario() -> tuple[int | None, SessionEnded]:
        session = SpiceSession(spec_for(server, display, password="wrong-ticket"), run_as=RUN_AS)
        await session.start()
        with pytest.raises(SessionFailed) as failure:
            await session.wait_connected()
        return session.pid, failure.value.ended

    pid, ended = run(scenario())
    assert ended.reason is EndReason.AUTH_FAILED
    assert pid is not None
    assert not pid_alive(pid)


def test_server_killed_mid_session_is_connection_lost(display: str, tmp_path: Path) -> None:
    with spice_server(tmp_path) as own:

        async def scenario() -> SessionEnded:
            session = SpiceSession(spec_for(own, display), run_as=RUN_AS)
            await session.start()
            await session.wait_connected()
            own.kill()
            return await session.wait_ended()

        ended = run(scenario())
    assert ended.reason is EndReason.CONNECTION_LOST
    assert ended.was_connected
