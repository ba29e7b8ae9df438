"""Supervision of a session client process.

The client (xfreerdp3, remote-viewer) runs:

- as an unprivileged user of its own (``sdbox-session``), so that a
  compromised viewer cannot read the agent's state or the card;
- under a reaper of its own (``sdbox.session.reaper``, the same uid), which
  the supervisor starts in a new session and which forks the client into a
  process group of its own: one ``killpg`` by the reaper reaches every
  process the client started, and because it is a signal between processes
  of one uid the agent needs no CAP_KILL; the agent asks over a pipe;
- dying with the agent: the reaper kills the group when that pipe reaches
  end of file or when its parent-death signal (SIGTERM) arrives, and the
  client has ``PR_SET_PDEATHSIG(SIGKILL)`` tied to the reaper, so it dies
  even if the reaper is SIGKILLed (on the box, the transient systemd unit
  bound to the agent is a further net);
- with a controlled environment and a private ``HOME`` that its reaper
  makes as the client's user (so the agent needs no CAP_CHOWN) and removes;
- with its secrets on its stdin pipe only, never in argv or environ.

Its stdout/stderr go to a pseudo-terminal that the supervisor reads line by
line: through a pipe, FreeRDP's log lines below WARN sit in a 4 KiB stdio
buffer, and the supervisor would see "connected" only when the buffer fills.
The pty is not the client's controlling terminal (the reaper is the session
leader and never opens it; the client, not a session leader, cannot take
it), so nothing can prompt on it. The last lines are kept, with every known
secret replaced, for the log and the end report.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import sys
import tempfile
import termios
import tty
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdbox.logging import TRACE
from sdbox.session import reaper as reaper_protocol
from sdbox.session.errors import SessionStartError

_log = logging.getLogger("sdbox.session")

DEFAULT_SESSION_USER = "sdbox-session"
_PR_SET_PDEATHSIG = 1
# The reaper runs as the client's user, who may be unable to read the agent's
# files: a development checkout cloned into a 0700 directory (root's home,
# `mktemp -d`) holds both the venv's python and reaper.py. So it runs on the
# interpreter the venv was made from (Debian's, which every user can run; the
# same one outside a venv), with its source on the command line: standard
# library only, nothing secret in it. Read at import, so that every reaper
# runs the code the agent itself was started with.
_REAPER_COMMAND = (
    getattr(sys, "_base_executable", "") or sys.executable,
    *("-I", "-S", "-c", Path(reaper_protocol.__file__).read_text(encoding="utf-8")),
)
_LINE_LIMIT = 1 << 20
_KEPT_LINE_CHARS = 2000
_REDACTED = "<redacted>"
# Argument and .vv forms a secret could appear in, in case a client echoes them.
_SECRET_FORMS = re.compile(r"(?i)(/p:|/password:|password=|/gp:|/gat:)\S+")
_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LogTail:
    """The last lines of a client's output, with secrets replaced before they are kept."""

    def __init__(self, secrets: Iterable[str], max_lines: int = 200) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._lines: deque[str] = deque(maxlen=max_lines)

    def redact(self, line: str) -> str:
        """``line`` with every known secret and secret-bearing argument replaced."""
        for secret in self._secrets:
            line = line.replace(secret, _REDACTED)
        return _SECRET_FORMS.sub(lambda m: m.group(1) + _REDACTED, line)

    def add(self, line: str) -> str:
        """Keep a redacted copy of ``line``; returns it."""
        clean = self.redact(_ANSI_ESCAPES.sub("", line).rstrip("\r\n"))[:_KEPT_LINE_CHARS]
        self._lines.append(clean)
        return clean

    def lines(self) -> tuple[str, ...]:
        """The kept lines, oldest first."""
        return tuple(self._lines)


@dataclass(frozen=True)
class ClientUser:
    """The account a client runs as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def resolve(cls, name: str | None) -> ClientUser | None:
        """The account ``name``, or ``None`` to run as the supervisor's own user."""
        if name is None:
            return None
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SessionStartError(
                "The remote desktop cannot start on this box (its user account is missing).",
                detail=f"no user {name!r}: run scripts/setup-system.sh session",
            ) from None
        if entry.pw_uid == 0:
            raise SessionStartError(
                "The remote desktop cannot start on this box.",
                detail=f"session user {name!r} is root; clients must not run as root",
            )
        if os.geteuid() != 0 and os.geteuid() != entry.pw_uid:
            raise SessionStartError(
                "The remote desktop cannot start on this box.",
                detail=f"switching to {name!r} needs root; supervisor uid is {os.geteuid()}",
            )
        return cls(name, entry.pw_uid, entry.pw_gid)


def new_home_path(base: Path | None = None) -> Path:
    """A fresh name for a client's private ``HOME``, under ``base`` (default: the temp dir).

    The client's reaper makes the directory, as the client's user, so it is
    the client's own without the agent changing any owner; ``base`` must let
    that user create in it (the box's /tmp is the agent unit's private one).
    """
    return Path(base or tempfile.gettempdir()) / f"sdbox-session-{secrets.token_hex(8)}"


def remove_home(home: Path) -> None:
    """Remove a private home after its client is gone, if the reaper could not.

    The reaper removes it itself; this is the net for a reaper that was killed
    or never started. It works where the agent and the client share a uid
    (development, tests); on a box the agent may not enter the client's 0700
    home (no CAP_DAC_OVERRIDE), so what is left goes with the unit's PrivateTmp.
    """
    shutil.rmtree(home, ignore_errors=True)


def _reaper_setup(supervisor_pid: int) -> None:  # pragma: no cover - runs in the reaper
    # Runs after the uid switch (CPython drops privileges before preexec_fn),
    # which matters: a credential change clears the parent-death signal.
    # SIGTERM, not SIGKILL: the reaper catches it and kills the client's
    # whole group before it goes (its control pipe's end of file does too).
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        os._exit(126)
    # The supervisor may have died between fork and prctl: then nobody would
    # ever send the signal.
    if os.getppid() != supervisor_pid:
        os._exit(126)


class _LineReader(asyncio.Protocol):
    """Splits the client's output into lines as it arrives."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self._on_line = on_line
        self._buffer = b""
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _LINE_LIMIT:  # no newline for 1 MiB: keep its start
            lines.append(self._buffer[:_KEPT_LINE_CHARS])
            self._buffer = b""
        for line in lines:
            self._on_line(line)

    def connection_lost(self, exc: Exception | None) -> None:
        # EIO on the pty master is how "every writer has gone" reads.
        if self._buffer:
            self._on_line(self._buffer)
            self._buffer = b""
        if not self.finished.done():
            self.finished.set_result(None)


class ClientProcess:
    """A running session client, its process group, and its redacted output."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: _LineReader,
        transport: asyncio.BaseTransport,
        tail: LogTail,
        name: str,
        client_pid: int,
        control: int,
    ) -> None:
        self._process = process
        self._client_pid = client_pid
        self._control = control
        self._reader = reader
        self._transport = transport
        self.tail = tail
        self.name = name

    @property
    def pid(self) -> int:
        """The client's process id (also its process group id)."""
        return self._client_pid

    @property
    def reaper_pid(self) -> int:
        """The client's reaper (its parent, of the client's uid), which the agent starts."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative: killed by that signal); the reaper mirrors it."""
        return self._process.returncode

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        stdin_data: bytes,
        env: dict[str, str],
        home: Path,
        home_files: dict[str, str],
        user: ClientUser | None,
        tail: LogTail,
        on_line: Callable[[str], None],
    ) -> ClientProcess:
        """Start ``argv`` supervised; ``stdin_data`` is written to its stdin, then closed.

        Its reaper makes ``home`` (a new directory) with ``home_files``
        (relative path to non-secret content) and starts it there.
        ``on_line`` gets every (redacted) output line as it arrives.
        """
        binary = shutil.which(argv[0], path=env.get("PATH"))
        if binary is None:
            raise SessionStartError(
                "The remote desktop program is not installed on this box.",
                detail=f"{argv[0]} not found: run scripts/setup-system.sh session",
            )
        identity: dict[str, object] = {}
        if user is not None and os.geteuid() == 0:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": []}

        def deliver(raw: bytes) -> None:
            line = tail.add(raw.decode("utf-8", "replace"))
            # Below DEBUG: FreeRDP's state tag alone writes a line per PDU.
            _log.log(TRACE, "%s: %s", argv[0], line)
            on_line(line)

        master, slave = os.openpty()
        try:
            # Raw: no newline translation, no echo, no signal characters.
            # The slave stays the agent's (no CAP_CHOWN): the client writes to
            # the descriptors it inherits and never needs to reopen it by name.
            tty.setraw(slave, termios.TCSANOW)
            loop = asyncio.get_running_loop()
            reader = _LineReader(deliver)
            transport, _ = await loop.connect_read_pipe(
                lambda: reader, os.fdopen(master, "rb", buffering=0)
            )
        except BaseException:
            os.close(slave)
            os.close(master)
            raise
        # The reaper's control pipe: the agent writes K/T, and its end of file
        # (the agent gone) kills the client too. Close-on-exec on our side, so
        # no other child of the agent holds the write end open.
        control_read, control = os.pipe2(os.O_CLOEXEC)
        report, report_write = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(control, False)
        reaper = [
            *(*_REAPER_COMMAND, str(control_read), str(report_write)),
            *(str(home), json.dumps(home_files)),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *reaper,
                binary,
                *argv[1:],
                stdin=asyncio.subprocess.PIPE,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd="/",
                start_new_session=True,
                close_fds=True,
                pass_fds=(control_read, report_write),
                # preexec_fn is unsafe only with threads that hold locks the
                # child needs; _reaper_setup only calls prctl and getppid.
                preexec_fn=functools.partial(_reaper_setup, os.getpid()),
                **identity,  # type: ignore[arg-type]
            )
        except BaseException as exc:
            # Cancelled here, asyncio has killed and reaped a reaper it had
            # forked; its client, if any, dies with it (parent-death signal).
            transport.close()
            os.close(control)
            os.close(report)
            if isinstance(exc, OSError):
                raise SessionStartError(
                    "The remote desktop program could not be started on this box.",
                    detail=f"{argv[0]}: {exc}",
                ) from exc
            raise
        finally:
            os.close(slave)  # the child holds its own copies
            os.close(control_read)
            os.close(report_write)
        # One short line (one write, under PIPE_BUF): the pid, or E and why.
        reading = loop.run_in_executor(None, os.read, report, 4096)
        try:
            reported = await asyncio.shield(reading)
        except BaseException:
            # Cancelled before the pid was known: the control pipe's end of
            # file has the reaper kill whatever it started, and we wait for
            # both (the read ends when the reaper does).
            await _abandon(process, control, transport, reading)
            os.close(report)
            raise
        os.close(report)
        if not reported.strip().isdigit():
            os.close(control)  # the reaper, if alive, kills what it started
            transport.close()
            status = await process.wait()
            why = reported.decode("utf-8", "replace").removeprefix("E").strip()
            raise SessionStartError(
                "The remote desktop program could not be started on this box.",
                detail=f"{argv[0]}: its reaper ended with status {status} before starting it"
                + (f" ({why})" if why else ""),
            )
        client = cls(process, reader, transport, tail, argv[0], int(reported), control)
        assert process.stdin is not None
        try:
            process.stdin.write(stdin_data)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died at once; its exit status says why
        except BaseException:
            # Cancelled (or worse) before anyone supervises it: it must not run on.
            client.signal_group(signal.SIGKILL)
            await _abandon(process, control, transport)
            raise
        finally:
            process.stdin.close()
        _log.debug("%s started, pid %d", argv[0], process.pid)
        return client

    async def output_done(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every line the client wrote was delivered."""
        # A grandchild holding the pty open would never let it finish: its
        # lines are not ours to wait for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader.finished), timeout)
        self._transport.close()

    def signal_group(self, sig: signal.Signals) -> None:
        """Have the reaper send ``sig`` (SIGKILL, else SIGTERM) to the client's whole group.

        The client runs as another uid and the agent holds no CAP_KILL: the
        reaper, of the client's uid, sends it. No error if it is already gone.
        """
        if self._control < 0:
            return
        message = reaper_protocol.KILL if sig == signal.SIGKILL else reaper_protocol.TERMINATE
        with contextlib.suppress(BrokenPipeError, BlockingIOError):
            os.write(self._control, message)

    async def wait(self) -> int:
        """Wait for the client to exit (the reaper ends as it did, once it swept its group)."""
        status = await self._process.wait()
        if self._control >= 0:
            os.close(self._control)
            self._control = -1
        return status


_ABANDON_SECONDS = 5.0


async def _abandon(
    process: asyncio.subprocess.Process,
    control: int,
    transport: asyncio.BaseTransport,
    reading: asyncio.Future[bytes] | None = None,
) -> None:
    """A spawn given up half-way: the reaper kills its client, and both are waited for.

    Closing the control pipe is the reaper's order to SIGKILL the client's
    group; it then exits. Waiting (bounded, and again if cancelled twice)
    means that when ``spawn`` raises, no client of it runs on.
    """
    os.close(control)
    transport.close()
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(process.wait())]
    if reading is not None:
        waits.append(reading)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(asyncio.shield(asyncio.gather(*waits)), _ABANDON_SECONDS)
