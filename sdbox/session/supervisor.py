"""Supervision of a session client process.

The client (xfreerdp3, remote-viewer) runs:

- as an unprivileged user of its own (``sdbox-session``), so that a
  compromised viewer cannot read the agent's state or the card;
- in a new session and process group, so that one ``killpg`` reaches every
  process it started;
- with ``PR_SET_PDEATHSIG(SIGKILL)``, so that it dies with the thread that
  started it even if the agent is killed without any chance to clean up (on
  the box, the transient systemd unit bound to the agent is a second net);
- with a controlled environment and a private, empty ``HOME``;
- with its secrets on its stdin pipe only, never in argv or environ.

Its stdout/stderr go to a pseudo-terminal that the supervisor reads line by
line: through a pipe, FreeRDP's log lines below WARN sit in a 4 KiB stdio
buffer, and the supervisor would see "connected" only when the buffer fills.
The pty is not the client's controlling terminal (the client is a session
leader that never opens it), so nothing can prompt on it. The last lines are
kept, with every known secret replaced, for the log and the end report.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import pwd
import re
import shutil
import signal
import tempfile
import termios
import tty
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sdbox.logging import TRACE
from sdbox.session.errors import SessionStartError

_log = logging.getLogger("sdbox.session")

DEFAULT_SESSION_USER = "sdbox-session"
_PR_SET_PDEATHSIG = 1
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


def make_private_home(user: ClientUser | None, base: Path | None = None) -> Path:
    """A fresh, empty ``HOME`` owned by the client's user, mode 0700."""
    home = Path(tempfile.mkdtemp(prefix="sdbox-session-", dir=base))
    if user is not None and os.geteuid() == 0:
        os.chown(home, user.uid, user.gid)
    home.chmod(0o700)
    return home


def populate_home(home: Path, files: dict[str, str], user: ClientUser | None) -> None:
    """Write non-secret files (relative paths) into a private home, owned by the client."""
    for relative, content in files.items():
        path = home / relative
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(content)
        if user is not None and os.geteuid() == 0:
            for part in [path, *path.relative_to(home).parents]:
                target = home / part
                if target != home:
                    os.chown(target, user.uid, user.gid)


def remove_home(home: Path) -> None:
    """Remove a private home after its client is gone."""
    shutil.rmtree(home, ignore_errors=True)


def _child_setup(supervisor_pid: int) -> None:  # pragma: no cover - runs in the child
    # Runs after the uid switch (CPython drops privileges before preexec_fn),
    # which matters: a credential change clears the parent-death signal.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
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
    ) -> None:
        self._process = process
        self._reader = reader
        self._transport = transport
        self.tail = tail
        self.name = name

    @property
    def pid(self) -> int:
        """Process id (also the process group id)."""
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative: killed by that signal)."""
        return self._process.returncode

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        stdin_data: bytes,
        env: dict[str, str],
        cwd: Path,
        user: ClientUser | None,
        tail: LogTail,
        on_line: Callable[[str], None],
    ) -> ClientProcess:
        """Start ``argv`` supervised; ``stdin_data`` is written to its stdin, then closed.

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
            tty.setraw(slave, termios.TCSANOW)
            if user is not None and os.geteuid() == 0:
                # Some programs reopen their terminal by name (ttyname).
                os.fchown(slave, user.uid, user.gid)
            loop = asyncio.get_running_loop()
            reader = _LineReader(deliver)
            transport, _ = await loop.connect_read_pipe(
                lambda: reader, os.fdopen(master, "rb", buffering=0)
            )
        except BaseException:
            os.close(slave)
            os.close(master)
            raise
        try:
            process = await asyncio.create_subprocess_exec(
                binary,
                *argv[1:],
                stdin=asyncio.subprocess.PIPE,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
                # preexec_fn is unsafe only with threads that hold locks the
                # child needs; _child_setup only calls prctl and getppid.
                preexec_fn=functools.partial(_child_setup, os.getpid()),
                **identity,  # type: ignore[arg-type]
            )
        except OSError as exc:
            transport.close()
            raise SessionStartError(
                "The remote desktop program could not be started on this box.",
                detail=f"{argv[0]}: {exc}",
            ) from exc
        finally:
            os.close(slave)  # the child holds its own copies
        client = cls(process, reader, transport, tail, argv[0])
        assert process.stdin is not None
        try:
            process.stdin.write(stdin_data)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died at once; its exit status says why
        except BaseException:
            # Cancelled (or worse) before anyone supervises it: it must not run on.
            client.signal_group(signal.SIGKILL)
            transport.close()
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
        """Send ``sig`` to the client's whole process group (no error if already gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    async def wait(self) -> int:
        """Wait for the client to exit; then sweep anything left in its group."""
        status = await self._process.wait()
        # A viewer's helpers share its group; none may outlive the session.
        self.signal_group(signal.SIGKILL)
        return status
