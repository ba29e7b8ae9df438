"""The supervision loop, driven by a stand-in client (``sh``) instead of a viewer."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sdbox.session import Credential, Display, Endpoint, EndReason, SessionFailed, SessionSpec
from sdbox.session.base import Launch, LineEvent, Session
from sdbox.session.outcome import MESSAGES
from sdbox.session.supervisor import LogTail

T = TypeVar("T")
SECRET = "hunter2-but-longer"


class ScriptSession(Session):
    """Runs a shell script as the "client": CONNECTED/FAILED lines drive the session."""

    def __init__(self, script: str, connect_timeout: float = 30.0) -> None:
        spec = SessionSpec(
            endpoint=Endpoint.parse("rdp://127.0.0.1:1"),
            user="u",
            credential=Credential(SECRET),
            display=Display(x11=":99"),
            server_fingerprint="sha256:" + "00" * 32,
            connect_timeout=connect_timeout,
        )
        super().__init__(spec, run_as=None)
        self._script = script

    def launch(self, home: Path) -> Launch:
        return Launch(
            argv=["sh", "-c", self._script],
            stdin_data=f"{SECRET}\n".encode(),
            home_files={"marker": "x"},
            extra_env={},
        )

    def classify(self, line: str) -> LineEvent | None:
        if line == "CONNECTED":
            return LineEvent(connected=True)
        if line == "FAILED":
            return LineEvent(failure=EndReason.AUTH_FAILED, detail="scripted failure")
        return None

    def outcome(self, status: int, *, was_connected: bool) -> tuple[EndReason, str]:
        return (EndReason.LOGGED_OFF if status == 0 else EndReason.CLIENT_FAILED), str(status)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def live_group_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies (a reaped-late zombie is dead)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def test_secret_reaches_the_client_on_stdin_and_never_the_log() -> None:
    async def scenario() -> tuple[str, Any]:
        session = ScriptSession('read line; echo "got $line"; echo CONNECTED; exit 0')
        await session.start()
        await session.wait_connected()
        ended = await session.wait_ended()
        return "\n".join(ended.log_tail), ended

    log, ended = run(scenario())
    assert "got <redacted>" in log  # it arrived, and the tail hid it
    assert SECRET not in log
    assert ended.reason is EndReason.LOGGED_OFF
    assert ended.was_connected


def test_client_environment_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDBOX_AGENT_TOKEN", "must-not-leak")

    async def scenario() -> str:
        session = ScriptSession("env; echo CONNECTED")
        await session.start()
        ended = await session.wait_ended()
        return "\n".join(ended.log_tail)

    log = run(scenario())
    assert "DISPLAY=:99" in log
    assert "HOME=" in log
    assert "must-not-leak" not in log


def test_the_client_can_write_no_core_dump_and_cannot_allow_one() -> None:
    # it holds the credential: raising the limit again must fail too (the hard limit is 0)
    script = "grep 'Max core file size' /proc/self/limits; ulimit -c 1024 || echo REFUSED"

    async def scenario() -> str:
        session = ScriptSession(script)
        await session.start()
        ended = await session.wait_ended()
        return "\n".join(ended.log_tail)

    log = run(scenario())
    assert [line.split()[4:6] for line in log.splitlines() if "Max core" in line] == [["0", "0"]]
    assert "REFUSED" in log


def test_close_escalates_to_kill_when_the_client_ignores_sigterm() -> None:
    async def scenario() -> tuple[int, Any]:
        session = ScriptSession("trap '' TERM; echo CONNECTED; while :; do sleep 0.1; done")
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        return session.pid, await session.close(grace=0.5)

    pid, ended = run(scenario())
    assert ended.reason is EndReason.CLOSED
    assert gone(pid)


def test_kill_ends_the_whole_group() -> None:
    async def scenario() -> tuple[int, Any]:
        # The background sleep is a grandchild in the client's group.
        session = ScriptSession("sleep 300 & echo CONNECTED; wait")
        await session.start()
        await session.wait_connected()
        assert session.pid is not None
        return session.pid, await session.kill()

    pid, ended = run(scenario())
    assert ended.reason is EndReason.KILLED
    assert gone(pid)
    assert live_group_members(pid) == []


def test_a_client_that_never_connects_is_ended_by_the_connect_timeout() -> None:
    async def scenario() -> tuple[int | None, Any]:
        session = ScriptSession("sleep 300", connect_timeout=0.5)
        await session.start()
        with pytest.raises(SessionFailed) as failure:
            await session.wait_connected()
        return session.pid, failure.value.ended

    pid, ended = run(scenario())
    assert ended.reason is EndReason.CONNECT_TIMEOUT
    assert pid is not None
    assert gone(pid)


def test_a_reported_failure_ends_a_client_that_would_stay_up() -> None:
    async def scenario() -> Any:
        session = ScriptSession("echo FAILED; sleep 300")
        await session.start()
        with pytest.raises(SessionFailed) as failure:
            await session.wait_connected()
        return failure.value.ended

    ended = run(scenario())
    assert ended.reason is EndReason.AUTH_FAILED
    assert "scripted failure" in ended.detail


def test_private_home_is_removed_after_the_session() -> None:
    async def scenario() -> str:
        session = ScriptSession("pwd; echo CONNECTED")
        await session.start()
        ended = await session.wait_ended()
        return next(line for line in ended.log_tail if line.startswith("/"))

    home = run(scenario())
    assert "sdbox-session-" in home
    assert not Path(home).exists()


def test_log_tail_redacts_secrets_and_secret_arguments() -> None:
    tail = LogTail([SECRET], max_lines=2)
    tail.add(f"password is {SECRET}\n")
    tail.add("\x1b[31m/p:other-secret /u:alice\x1b[0m")
    tail.add("password=again and more")
    lines = tail.lines()
    assert len(lines) == 2
    assert lines[0] == "/p:<redacted> /u:alice"
    assert lines[1] == "password=<redacted> and more"


def test_every_reason_has_a_plain_message() -> None:
    assert set(MESSAGES) == set(EndReason)
    assert all(message.endswith(".") for message in MESSAGES.values())


class SlowPreflightSession(ScriptSession):
    """A session whose preflight waits until the test lets it go on."""

    def __init__(self, script: str) -> None:
        super().__init__(script)
        self.in_preflight = asyncio.Event()
        self.go_on = asyncio.Event()

    async def preflight(self) -> None:
        self.in_preflight.set()
        await self.go_on.wait()


def test_kill_before_start_means_no_client_ever_runs(tmp_path: Path) -> None:
    marker = tmp_path / "started"

    async def scenario() -> Any:
        session = ScriptSession(f"touch {marker}; echo CONNECTED; sleep 300")
        ended = await session.kill()
        await session.start()
        assert session.pid is None
        assert (await session.wait_ended()).reason is EndReason.KILLED
        with pytest.raises(SessionFailed):
            await session.wait_connected()
        return ended

    assert run(scenario()).reason is EndReason.KILLED
    assert not marker.exists()


def test_kill_during_the_preflight_starts_no_client(tmp_path: Path) -> None:
    marker = tmp_path / "started"

    async def scenario() -> Any:
        session = SlowPreflightSession(f"touch {marker}; echo CONNECTED; sleep 300")
        starting = asyncio.ensure_future(session.start())
        await session.in_preflight.wait()
        killing = asyncio.ensure_future(session.kill())
        await asyncio.sleep(0)
        session.go_on.set()  # the preflight passes after the card left
        await starting
        return await killing

    ended = run(scenario())
    assert ended.reason is EndReason.KILLED
    assert not ended.was_connected
    assert not marker.exists()


@pytest.mark.parametrize("turns", range(6))
def test_kill_while_the_client_is_spawned_ends_it_once_it_exists(
    tmp_path: Path, turns: int
) -> None:
    """kill() while spawn() is under way (pid unknown): the client it gives does not run on."""
    pidfile = tmp_path / "pid"

    async def scenario() -> Any:
        session = ScriptSession(f"echo $$ > {pidfile}; echo CONNECTED; exec sleep 300")
        starting = asyncio.ensure_future(session.start())
        for _ in range(turns):  # land the kill at a different step of the spawn each time
            await asyncio.sleep(0)
        ended = await asyncio.wait_for(session.kill(), 10)
        await starting
        return ended

    ended = run(scenario())
    assert ended.reason is EndReason.KILLED
    if pidfile.exists() and pidfile.read_text().strip():
        pid = int(pidfile.read_text())
        assert gone(pid) or live_group_members(pid) == []


@pytest.mark.parametrize("turns", range(1, 7))  # 0: cancelled before start() ran at all
def test_start_cancelled_mid_spawn_leaves_no_client_and_an_end_report(
    tmp_path: Path, turns: int
) -> None:
    pidfile = tmp_path / "pid"

    async def scenario() -> Any:
        session = ScriptSession(f"echo $$ > {pidfile}; echo CONNECTED; exec sleep 300")
        starting = asyncio.ensure_future(session.start())
        for _ in range(turns):
            await asyncio.sleep(0)
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        if session.pid is not None:  # it had started before the cancel landed
            return await asyncio.wait_for(session.kill(), 10)
        # not started: a waiter is told, and nothing was left running
        return await asyncio.wait_for(session.wait_ended(), 10)

    ended = run(scenario())
    assert ended.reason in (EndReason.CLIENT_FAILED, EndReason.KILLED)
    if pidfile.exists() and pidfile.read_text().strip():
        pid = int(pidfile.read_text())
        assert gone(pid) or live_group_members(pid) == []
