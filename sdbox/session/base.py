"""The session interface, and the supervision loop both launchers share.

A :class:`Session` is started once and ends once. The agent:

- ``await session.start()``: the client is running (or a typed error);
- ``await session.wait_connected()``: the desktop is up, or
  :class:`~sdbox.session.errors.SessionFailed` with the reason it is not;
- ``await session.wait_ended()``: the :class:`SessionEnded` report;
- ``await session.kill()`` (card removed: SIGKILL to the group at once) or
  ``await session.close()`` (project switch: SIGTERM, SIGKILL after 2 s).

"Connected" is never guessed from time or from a TCP connection: each
launcher recognises the line its client prints when the protocol itself
says the session is established (see the launchers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdbox.session.errors import SessionError, SessionFailed
from sdbox.session.outcome import EndReason, SessionEnded
from sdbox.session.spec import SessionSpec
from sdbox.session.supervisor import (
    DEFAULT_SESSION_USER,
    ClientProcess,
    ClientUser,
    LogTail,
    new_home_path,
    remove_home,
)

_log = logging.getLogger("sdbox.session")

CLOSE_GRACE_SECONDS = 2.0


@dataclass(frozen=True)
class LineEvent:
    """What a client's output line tells: connected, or a failure the client will not end."""

    connected: bool = False
    failure: EndReason | None = None
    detail: str = ""


@dataclass(frozen=True)
class Launch:
    """How to start a client: argv, what goes on its stdin, files for its private home."""

    argv: list[str]
    stdin_data: bytes
    home_files: dict[str, str]
    extra_env: dict[str, str]


class Session(ABC):
    """One supervised session-client process for one project."""

    def __init__(
        self,
        spec: SessionSpec,
        *,
        run_as: str | None = DEFAULT_SESSION_USER,
        home_base: Path | None = None,
        keep_lines: int = 400,
    ) -> None:
        """``run_as``: the client's account (``None``: the supervisor's own);
        ``home_base``: where private homes are made; ``keep_lines``: log tail size."""
        self.spec = spec
        self._keep_lines = keep_lines
        self._run_as = run_as
        self._home_base = home_base
        self._client: ClientProcess | None = None
        self._connected = asyncio.Event()
        self._ended: asyncio.Future[SessionEnded] | None = None
        self._requested: EndReason | None = None
        self._failure: LineEvent | None = None
        self._timed_out = False
        self._task: asyncio.Task[None] | None = None

    # -- what each launcher provides -------------------------------------------------

    @abstractmethod
    def launch(self, home: Path) -> Launch:
        """The client invocation for this spec, with its private home at ``home``."""

    @abstractmethod
    def classify(self, line: str) -> LineEvent | None:
        """What a (redacted) output line of the client means, if anything."""

    @abstractmethod
    def outcome(self, status: int, *, was_connected: bool) -> tuple[EndReason, str]:
        """Reason and log detail for an exit the agent did not cause."""

    async def preflight(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Checks before the client starts (may raise :class:`SessionFailed`)."""

    # -- public interface -----------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The client's pid (and process group), once started."""
        return self._client.pid if self._client else None

    @property
    def connected(self) -> bool:
        """Whether the session reached "connected"."""
        return self._connected.is_set()

    async def start(self) -> None:
        """Start the client; returns once it runs (or raises a :class:`SessionError`).

        A :meth:`kill` or :meth:`close` asked for before or during ``start``
        is honoured as soon as it can be: before the preflight or the spawn
        nothing is started, and a client spawned meanwhile is signalled the
        moment its pid is known. If ``start`` is cancelled or fails, the
        session has ended (its report says how) and no client runs on.
        """
        if self._ended is not None:
            raise SessionError("This session was already started.")
        user = ClientUser.resolve(self._run_as)
        ended = self._ended = asyncio.get_running_loop().create_future()
        if self._requested is not None:  # ended before it began: nothing to start
            ended.set_result(self._unstarted(self._requested, "before the client started"))
            return
        try:
            await self.preflight()
        except SessionFailed as exc:
            ended.set_result(exc.ended)
            return
        except BaseException:
            self._give_up("during the checks before the client started")
            raise
        requested = self._end_requested()
        if requested is not None:  # asked to end while the preflight ran
            ended.set_result(self._unstarted(requested, "before the client started"))
            return
        home = new_home_path(self._home_base)
        try:
            launch = self.launch(home)
            secrets = [] if self.spec.credential is None else [self.spec.credential.reveal()]
            tail = LogTail(secrets, max_lines=self._keep_lines)
            self._client = await ClientProcess.spawn(
                launch.argv,
                stdin_data=launch.stdin_data,
                env=self._environ(home, launch.extra_env),
                home=home,
                home_files=launch.home_files,
                user=user,
                tail=tail,
                on_line=self._on_line,
            )
        except BaseException:
            # spawn() kills and reaps whatever it had started before raising.
            remove_home(home)
            self._give_up("while the client was starting")
            raise
        # Asked to end, or a failure reported, while the spawn was under way
        # (its pid was not known to kill() then): act on it now.
        requested = self._end_requested()
        if self._failure is not None or requested is EndReason.KILLED:
            self._client.signal_group(signal.SIGKILL)
        elif requested is EndReason.CLOSED:
            self._client.signal_group(signal.SIGTERM)
        self._task = asyncio.create_task(self._supervise(self._client, home))

    async def wait_connected(self) -> None:
        """Return once connected; raise :class:`SessionFailed` if it ended before."""
        ended = self._require_started()
        waiter = asyncio.ensure_future(self._connected.wait())
        waiters: set[asyncio.Future[Any]] = {waiter, asyncio.shield(ended)}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._connected.is_set():
            raise SessionFailed(ended.result())

    async def wait_ended(self) -> SessionEnded:
        """The end report, once the client is gone."""
        return await asyncio.shield(self._require_started())

    async def kill(self) -> SessionEnded:
        """End at once (card removed): SIGKILL to the client's group.

        Valid at any point: before :meth:`start` (then nothing ever starts),
        during it (the client is killed as soon as it exists), or after.
        """
        self._requested = self._requested or EndReason.KILLED
        if self._ended is None:  # not started: start() will see the request
            return self._unstarted(self._requested, "before the client started")
        if not self._ended.done() and self._client is not None:
            self._client.signal_group(signal.SIGKILL)
        return await asyncio.shield(self._ended)

    async def close(self, grace: float = CLOSE_GRACE_SECONDS) -> SessionEnded:
        """End gracefully (project switch): SIGTERM, then SIGKILL after ``grace`` seconds."""
        self._requested = self._requested or EndReason.CLOSED
        if self._ended is None:
            return self._unstarted(self._requested, "before the client started")
        ended = self._ended
        if not ended.done() and self._client is not None:
            self._client.signal_group(signal.SIGTERM)
            try:
                return await asyncio.wait_for(asyncio.shield(ended), grace)
            except TimeoutError:
                _log.warning("%s did not close within %.1f s: killing", self._client.name, grace)
                self._client.signal_group(signal.SIGKILL)
        elif not ended.done():  # still starting: start() ends it, and it gets no grace
            self._requested = EndReason.KILLED
        return await asyncio.shield(ended)

    # -- internals ------------------------------------------------------------------

    def _end_requested(self) -> EndReason | None:
        # A call, not the attribute: kill() may set it while start() awaits.
        return self._requested

    def _unstarted(self, reason: EndReason, when: str) -> SessionEnded:
        return SessionEnded(reason=reason, detail=f"ended by the agent {when}")

    def _give_up(self, when: str) -> None:
        """``start`` raised or was cancelled: the session has ended, and says so to any waiter."""
        assert self._ended is not None
        if self._ended.done():
            return
        if self._requested is not None:
            self._ended.set_result(self._unstarted(self._requested, when))
        else:
            self._ended.set_result(
                SessionEnded(EndReason.CLIENT_FAILED, detail=f"the client did not start ({when})")
            )

    def _require_started(self) -> asyncio.Future[SessionEnded]:
        if self._ended is None:
            raise SessionError("This session was not started.")
        return self._ended

    def _environ(self, home: Path, extra: dict[str, str]) -> dict[str, str]:
        # Built from nothing: the agent's own environment (sockets, tokens,
        # proxies) must not leak into the viewer.
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "XDG_DATA_HOME": str(home / ".local/share"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "NO_AT_BRIDGE": "1",
        }
        env.update(self.spec.display.environ())
        env.update(extra)
        return env

    def _on_line(self, line: str) -> None:
        event = self.classify(line)
        if event is None:
            return
        if event.connected and not self._connected.is_set():
            _log.info("session to %s connected", self.spec.endpoint)
            self._connected.set()
        if event.failure is not None and self._failure is None:
            # The client reported a failure it does not end on (remote-viewer
            # keeps a dialog up after a TLS failure in kiosk mode): end it here.
            self._failure = event
            if self._client is not None:
                self._client.signal_group(signal.SIGKILL)

    async def _connect_deadline(self, client: ClientProcess) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self.spec.connect_timeout)
        except TimeoutError:
            self._timed_out = True
            client.signal_group(signal.SIGKILL)

    async def _supervise(self, client: ClientProcess, home: Path) -> None:
        assert self._ended is not None
        deadline = asyncio.create_task(self._connect_deadline(client))
        status = -1
        try:
            status = await client.wait()
            await client.output_done(timeout=2.0)
        finally:
            deadline.cancel()
            client.signal_group(signal.SIGKILL)
            remove_home(home)
            ended = self._report(client, status)
            requested = ended.reason in (EndReason.CLOSED, EndReason.KILLED)
            _log.log(
                logging.INFO if requested else logging.WARNING,
                "session to %s ended: %s (%s)",
                self.spec.endpoint,
                ended.reason.value,
                ended.detail,
            )
            if not self._ended.done():
                self._ended.set_result(ended)

    def _report(self, client: ClientProcess, status: int) -> SessionEnded:
        was_connected = self._connected.is_set()
        status_text = f"{client.name} exit status {status}"
        if self._requested is not None:
            reason, detail = self._requested, f"requested by the agent; {status_text}"
        elif self._failure is not None and self._failure.failure is not None:
            reason, detail = self._failure.failure, f"{self._failure.detail}; {status_text}"
        elif self._timed_out:
            reason = EndReason.CONNECT_TIMEOUT
            detail = f"not connected after {self.spec.connect_timeout:g} s; {status_text}"
        else:
            reason, detail = self.outcome(status, was_connected=was_connected)
        return SessionEnded(
            reason=reason,
            detail=detail,
            was_connected=was_connected,
            exit_status=status,
            log_tail=client.tail.lines(),
        )
