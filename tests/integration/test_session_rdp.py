"""RDP sessions against a real freerdp-shadow-cli3 on loopback, drawn on a real Xvfb.

The shadow server shares a server-side Xvfb that shows a four-colour test
pattern; the client draws on its own Xvfb. "Connected" must be true: the
client's screen then shows the server's pattern.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sdbox.session import (
    DEFAULT_SESSION_USER,
    Credential,
    Display,
    Endpoint,
    EndReason,
    RdpSession,
    SessionEnded,
    SessionFailed,
    SessionSpec,
)
from sdbox.session.base import Launch
from tests.integration.session_servers import (
    RDP_PASSWORD,
    RDP_USER,
    Issued,
    ShadowServer,
    group_members,
    make_ca,
    make_server_cert,
    paint_pattern,
    pid_alive,
    shadow_server,
    shows_pattern,
    tool_missing,
    trusted_by_system,
    xvfb,
)

_MISSING = tool_missing("xfreerdp3", "freerdp-shadow-cli3", "winpr-hash3", "Xvfb", "import")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        _MISSING is not None, reason=f"{_MISSING} missing: run scripts/setup-system.sh session"
    ),
]

T = TypeVar("T")
RUN_AS = DEFAULT_SESSION_USER if os.geteuid() == 0 else None
CHANNEL_TAGS = ("com.freerdp.channels.*:DEBUG", "com.freerdp.client.common.cmdline:DEBUG")


@pytest.fixture(scope="module")
def server_display(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with xvfb() as display:
        paint_pattern(display, tmp_path_factory.mktemp("pattern"))
        yield display


@pytest.fixture(scope="module")
def client_display() -> Iterator[str]:
    with xvfb() as display:
        yield display


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca()


@pytest.fixture(scope="module")
def server(
    server_display: str, ca: Issued, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShadowServer]:
    # Issued by a CA with the right name: what a man in the middle with a
    # mis-issued (or system-trusted) certificate would present.
    certificate = make_server_cert("CN=localhost", ["localhost"], issuer=ca)
    with shadow_server(server_display, tmp_path_factory.mktemp("shadow"), certificate) as running:
        yield running


def spec_for(
    server: ShadowServer,
    display: str,
    *,
    password: str = RDP_PASSWORD,
    fingerprint: str | None = None,
) -> SessionSpec:
    return SessionSpec(
        endpoint=Endpoint.parse(f"rdp://localhost:{server.port}"),
        user=RDP_USER,
        credential=Credential(password),
        display=Display(x11=display),
        server_fingerprint=fingerprint or server.certificate.fingerprint,
        connect_timeout=60.0,
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; no timing is asserted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return True
        await asyncio.sleep(0.25)
    return False


def test_right_pin_and_credential_connect_and_show_the_servers_desktop(
    server: ShadowServer, client_display: str
) -> None:
    async def scenario() -> tuple[bool, bool, str, SessionEnded]:
        session = RdpSession(spec_for(server, client_display), run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        shows = await until(lambda: shows_pattern(client_display))
        alive = pid_alive(session.pid)
        status = Path(f"/proc/{session.pid}/status").read_text()
        ended = await session.close()
        return shows, alive, status, ended

    assert not shows_pattern(client_display)  # the pattern is not there by accident
    shows, alive, status, ended = run(scenario())
    assert shows, "connected, but the client's screen does not show the server's pattern"
    assert alive
    if RUN_AS is not None:
        uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
        assert uid != 0
    assert ended.reason is EndReason.CLOSED
    assert ended.was_connected


def test_no_credential_in_cmdline_environ_or_log(server: ShadowServer, client_display: str) -> None:
    async def scenario() -> tuple[bytes, bytes, SessionEnded]:
        session = RdpSession(spec_for(server, client_display), run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        cmdline = Path(f"/proc/{session.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{session.pid}/environ").read_bytes()
        return cmdline, environ, await session.kill()

    cmdline, environ, ended = run(scenario())
    assert b"xfreerdp3" in cmdline  # we read the right process
    assert RDP_PASSWORD.encode() not in cmdline
    assert RDP_PASSWORD.encode() not in environ
    assert b"SSL_CERT_FILE" in environ
    assert all(RDP_PASSWORD not in line for line in ended.log_tail)
    assert ended.reason is EndReason.KILLED


def test_no_clipboard_or_device_channel_is_loaded(
    server: ShadowServer, client_display: str
) -> None:
    async def scenario() -> SessionEnded:
        session = RdpSession(
            spec_for(server, client_display),
            run_as=RUN_AS,
            diagnostic_log_filters=CHANNEL_TAGS,
            keep_lines=20000,
        )
        await session.start()
        await session.wait_connected()
        await asyncio.sleep(2)  # let the dynamic channels open: nothing is timed or asserted here
        return await session.close()

    ended = run(scenario())
    assert isinstance(ended, SessionEnded)
    log = "\n".join(ended.log_tail)
    assert "drdynvc" in log, "the channel log tags did not reach the log: the check would be blind"
    assert "cliprdr" not in log
    assert "rdpdr" not in log
    assert "rdpsnd" not in log  # the policy here has no audio
    assert RDP_PASSWORD not in log


def test_wrong_fingerprint_is_refused_as_certificate_mismatch(
    server: ShadowServer, client_display: str
) -> None:
    other = make_server_cert("CN=localhost", ["localhost"])
    ended = _failed(spec_for(server, client_display, fingerprint=other.fingerprint))
    assert ended.reason is EndReason.CERTIFICATE_REJECTED
    assert "identity" in ended.message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to add a CA to the system trust store")
def test_pin_holds_even_when_a_system_trusted_ca_vouches_for_the_server(
    server: ShadowServer, client_display: str, ca: Issued
) -> None:
    other = make_server_cert("CN=localhost", ["localhost"])
    with trusted_by_system(ca):
        # Control: plain FreeRDP, default environment, no pin -> it trusts the
        # server through the system store. Without this, the test below could
        # pass because the CA was never trusted at all.
        assert _unhardened_connects(spec_for(server, client_display))
        ended = _failed(spec_for(server, client_display, fingerprint=other.fingerprint))
    assert ended.reason is EndReason.CERTIFICATE_REJECTED


def test_wrong_credential_is_reported_as_authentication_failed(
    server: ShadowServer, client_display: str
) -> None:
    ended = _failed(spec_for(server, client_display, password="not-the-password"))
    assert ended.reason is EndReason.AUTH_FAILED
    assert "sign-in" in ended.message
    assert all("not-the-password" not in line for line in ended.log_tail)


def test_server_killed_mid_session_is_connection_lost(
    server_display: str, client_display: str, tmp_path: Path
) -> None:
    certificate = make_server_cert("CN=localhost", ["localhost"])
    with shadow_server(server_display, tmp_path, certificate) as own:

        async def scenario() -> SessionEnded:
            session = RdpSession(spec_for(own, client_display), run_as=RUN_AS)
            await session.start()
            await session.wait_connected()
            own.kill()
            return await session.wait_ended()

        ended = run(scenario())
    assert isinstance(ended, SessionEnded)
    assert ended.reason is EndReason.CONNECTION_LOST
    assert ended.was_connected


def test_kill_leaves_no_process_of_the_client_group(
    server: ShadowServer, client_display: str
) -> None:
    async def scenario() -> tuple[int, SessionEnded]:
        session = RdpSession(spec_for(server, client_display), run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        return session.pid, await session.kill()

    pid, ended = run(scenario())
    assert ended.reason is EndReason.KILLED
    assert not pid_alive(pid)
    assert group_members(pid) == []


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _uid(pid: int) -> int:
    return Path(f"/proc/{pid}").stat().st_uid


def test_client_dies_with_its_reaper(server: ShadowServer, client_display: str) -> None:
    """SIGKILL the client's reaper (no sweep possible): its parent-death signal ends the client."""

    async def scenario() -> tuple[int, int, SessionEnded]:
        session = RdpSession(spec_for(server, client_display), run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        reaper = _parent(session.pid)
        assert reaper != os.getpid(), "the client is not under a reaper"
        if RUN_AS is not None:  # the reaper is of the client's uid, never root
            assert _uid(reaper) == _uid(session.pid) != 0
        os.kill(reaper, signal.SIGKILL)
        return session.pid, reaper, await session.wait_ended()

    pid, reaper, ended = run(scenario())
    assert not pid_alive(reaper)
    assert run(until(lambda: not pid_alive(pid), 20.0))
    assert ended.reason is EndReason.CLIENT_FAILED  # a signal the agent did not send


def test_client_killed_by_sigkill_ends_as_client_failed(
    server: ShadowServer, client_display: str
) -> None:
    """The client SIGKILLed by nobody here (the OOM killer): the reaper dies the same death."""

    async def scenario() -> SessionEnded:
        session = RdpSession(spec_for(server, client_display), run_as=RUN_AS)
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        os.kill(session.pid, signal.SIGKILL)
        return await session.wait_ended()

    ended = run(scenario())
    # not XF_EXIT_DISCONNECT's "the project's desktop ended the session": the
    # reaper once died of resetting SIGKILL's disposition, with status 1
    assert ended.reason is EndReason.CLIENT_FAILED
    assert ended.exit_status == -signal.SIGKILL


# The supervisor as the agent's unit runs it: root without CAP_KILL, CAP_CHOWN
# or CAP_DAC_OVERRIDE (debian/sdbox.sdbox-agent.service). The password comes
# on stdin; "kill" on stdin is the card pulled.
_AS_THE_AGENT_UNIT = """
import asyncio, os, sys
from sdbox.session import Credential, Display, Endpoint, RdpSession, SessionSpec
port, fingerprint, display, run_as, user = sys.argv[1:]
async def main():
    password = sys.stdin.readline().strip()
    session = RdpSession(SessionSpec(
        endpoint=Endpoint.parse(f"rdp://localhost:{port}"), user=user,
        credential=Credential(password), display=Display(x11=display),
        server_fingerprint=fingerprint, connect_timeout=60.0), run_as=run_as)
    await session.start()
    await session.wait_connected()
    try:
        os.killpg(session.pid, 0)
        direct = "allowed"
    except PermissionError:
        direct = "refused"
    print(session.pid, direct, flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    ended = await session.kill()
    print(ended.reason.value, flush=True)
asyncio.run(main())
"""


@pytest.mark.skipif(RUN_AS is None, reason="needs root: the client must run as another uid")
def test_without_kill_or_chown_capabilities_the_client_is_its_own_and_still_killed(
    server: ShadowServer, client_display: str
) -> None:
    """The agent's unit drops CAP_KILL and CAP_CHOWN: the reaper makes the home and kills."""
    drop = "-kill,-chown,-dac_override,-fowner"
    supervisor = subprocess.Popen(
        [
            *("setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-c"),
            _AS_THE_AGENT_UNIT,
            *(str(server.port), server.certificate.fingerprint, client_display),
            *(RUN_AS or "", RDP_USER),
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert supervisor.stdin is not None
        assert supervisor.stdout is not None
        supervisor.stdin.write(RDP_PASSWORD + "\n")
        supervisor.stdin.flush()
        first = supervisor.stdout.readline().split()
        assert len(first) == 2, supervisor.communicate(timeout=30)[1][-2000:]
        pid, direct = int(first[0]), first[1]
        assert direct == "refused"  # the supervisor itself cannot signal the client
        client_uid = _uid(pid)
        assert client_uid != 0
        home = Path(os.readlink(f"/proc/{pid}/cwd"))
        assert home.name.startswith("sdbox-session-")
        assert home.stat().st_uid == client_uid  # made by its user: nothing was chowned
        assert home.stat().st_mode & 0o777 == 0o700
        assert all(path.stat().st_uid == client_uid for path in home.rglob("*"))
        supervisor.stdin.write("kill\n")
        supervisor.stdin.flush()
        out, err = supervisor.communicate(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
    assert supervisor.returncode == 0, err[-2000:]
    assert out.strip() == EndReason.KILLED.value
    assert not pid_alive(pid)
    assert group_members(pid) == []
    assert not home.exists()  # the reaper removed what the agent could not


def test_no_client_survives_its_supervisor(server: ShadowServer, client_display: str) -> None:
    """SIGKILL the supervising process (no cleanup possible): the client dies with it."""
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdbox",
            "session",
            "open",
            f"rdp://localhost:{server.port}",
            "--server-fingerprint",
            server.certificate.fingerprint,
            "--user",
            RDP_USER,
            "--display",
            client_display,
            "--connect-timeout",
            "60",
            "--run-as",
            RUN_AS or "-",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert supervisor.stdin is not None
        assert supervisor.stdout is not None
        supervisor.stdin.write(RDP_PASSWORD.encode() + b"\n")
        supervisor.stdin.close()
        assert supervisor.stdout.readline().strip() == b"connected"
        reapers = _children(supervisor.pid)
        clients = [client for reaper in reapers for client in _children(reaper)]
        assert clients, "no client process under the supervisor's reaper"
        # The client's private HOME is its working directory: nothing secret
        # may be on disk there.
        home = Path(os.readlink(f"/proc/{clients[0]}/cwd"))
        files = [p for p in home.rglob("*") if p.is_file()]
        assert all(RDP_PASSWORD.encode() not in p.read_bytes() for p in files)
    finally:
        supervisor.kill()
        supervisor.wait(10)
    gone = [*reapers, *clients]
    assert asyncio.run(until(lambda: not any(pid_alive(p) for p in gone), 20.0))
    # The reaper outlives its SIGKILLed supervisor just long enough to remove the home.
    assert not home.exists()


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def _failed(spec: SessionSpec) -> SessionEnded:
    async def scenario() -> SessionEnded:
        session = RdpSession(spec, run_as=RUN_AS)
        await session.start()
        with pytest.raises(SessionFailed) as failure:
            await session.wait_connected()
        return failure.value.ended

    ended = run(scenario())
    assert isinstance(ended, SessionEnded)
    assert not ended.was_connected
    return ended


class _UnhardenedRdp(RdpSession):
    """The same client without sdbox's pin and empty trust store: the system store decides."""

    def arguments(self) -> list[str]:
        return [a if not a.startswith("/cert:") else "/cert:deny" for a in super().arguments()]

    def launch(self, home: Path) -> Launch:
        launch = super().launch(home)
        return Launch(launch.argv, launch.stdin_data, launch.home_files, extra_env={})


def _unhardened_connects(spec: SessionSpec) -> bool:
    async def scenario() -> bool:
        session = _UnhardenedRdp(spec, run_as=RUN_AS)
        await session.start()
        try:
            await session.wait_connected()
        except SessionFailed:
            return False
        await session.kill()
        return True

    return run(scenario())


@pytest.fixture(scope="module")
def own_logon_server(
    server_display: str, ca: Issued, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShadowServer]:
    certificate = make_server_cert("CN=localhost", ["localhost"], issuer=ca)
    with shadow_server(
        server_display, tmp_path_factory.mktemp("own-logon"), certificate, own_logon=True
    ) as running:
        yield running


def _interactive_spec(server: ShadowServer, display: str) -> SessionSpec:
    return SessionSpec(
        endpoint=Endpoint.parse(f"rdp://localhost:{server.port}"),
        user="",
        credential=None,
        display=Display(x11=display),
        server_fingerprint=server.certificate.fingerprint,
        connect_timeout=60.0,
    )


def test_a_bubble_with_its_own_logon_opens_without_a_credential(
    own_logon_server: ShadowServer, client_display: str
) -> None:
    """The "interactive" provider: no prompt on the box, the bubble's screen comes up."""

    async def scenario() -> tuple[bool, SessionEnded]:
        session = RdpSession(_interactive_spec(own_logon_server, client_display), run_as=RUN_AS)
        assert "/p:" in session.arguments()  # an explicit empty password: FreeRDP never prompts
        await session.start()
        await session.wait_connected()
        shows = await until(lambda: shows_pattern(client_display))
        return shows, await session.close()

    shows, ended = run(scenario())
    assert shows
    assert ended.was_connected


def test_no_credential_is_refused_by_a_bubble_that_wants_one(
    server: ShadowServer, client_display: str
) -> None:
    """Interactive against a bubble that wants a credential: turned away, no prompt, no hang."""

    async def scenario() -> SessionEnded:
        session = RdpSession(_interactive_spec(server, client_display), run_as=RUN_AS)
        await session.start()
        return await asyncio.wait_for(session.wait_ended(), timeout=60)

    ended = run(scenario())
    assert ended.reason is not EndReason.CLOSED
