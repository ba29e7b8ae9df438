"""Bring up the real PC/SC stack for emulated cards: pcscd with the vpcd driver.

Used by the integration tests, the demo and the benchmarks. An already
running pcscd is reused (a developer's machine may run one as a service);
otherwise ours is started in the foreground with a reader configuration of
its own and stopped by its pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sdbox.errors import SdboxError
from sdbox.smartcard.emulator.vpcd import VPCD_BASE_PORT
from sdbox.smartcard.errors import CardAccessError, PcscUnavailable
from sdbox.smartcard.pcsc import PcscContext

_log = logging.getLogger(__name__)

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
READER_PREFIX = "Virtual PCD"
VPCD_READERS = 2  # vpcd's default configuration: "Virtual PCD 00 00" and "00 01"
# pcscd is one per machine (it ignores PCSCLITE_CSOCK_NAME), so test runs,
# the demo and benchmarks on one machine share it: users hold a shared lock,
# and the one that started it stops it only when nobody else holds one.
_FALLBACK_LOCK_DIR = "/tmp"  # noqa: S108  (lock files hold no data; /run/lock is preferred)
LOCK_DIR = Path(
    os.environ.get(
        "SDBOX_LOCK_DIR", "/run/lock" if os.access("/run/lock", os.W_OK) else _FALLBACK_LOCK_DIR
    )
)


def _lock_file(name: str) -> IO[bytes]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    return (LOCK_DIR / f"sdbox-{name}.lock").open("ab")


class StackError(SdboxError):
    """pcscd or the vpcd driver could not be started."""


def reader_name(index: int) -> str:
    """The name pcscd gives vpcd's reader ``index``."""
    return f"{READER_PREFIX} 00 {index:02d}"


def _virtual_readers() -> list[str] | None:
    context = PcscContext()
    try:
        return [r for r in context.list_readers() if r.startswith(READER_PREFIX)]
    except CardAccessError:
        return None
    finally:
        context.release()


class PcscDaemon:
    """pcscd with vpcd readers on ``port`` (and ``port + 1``)."""

    def __init__(self, port: int = VPCD_BASE_PORT) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None
        self._confdir: Path | None = None
        self.log_path: Path | None = None
        self._users: IO[bytes] | None = None

    @property
    def shared(self) -> bool:
        """Whether another user (test run, demo, soak) holds the daemon too.

        Each user holds an exclusive lock on a file of its own; another user's
        file that can be locked is a dead user's, and is removed. (One shared
        lock that each user tried to upgrade could not work: a failed
        LOCK_SH -> LOCK_EX conversion drops the lock it had, so a check made
        while another run was there left this run holding nothing, and that
        run's last user then stopped the pcscd under it.)
        """
        if self._users is None:
            return False
        own = Path(self._users.name)
        # The single shared lock earlier versions held: probed, never taken (older runs).
        legacy = LOCK_DIR / f"sdbox-pcscd-{self.port}.lock"
        for path in [legacy, *LOCK_DIR.glob(f"sdbox-pcscd-{self.port}-user-*.lock")]:
            if path == own or not path.exists():
                continue
            try:
                probe = path.open("ab")
            except OSError:
                continue
            with probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                if path != legacy:
                    path.unlink(missing_ok=True)  # its user is gone
        return False

    @property
    def owned(self) -> bool:
        """Whether this object started the daemon (and will stop it)."""
        return self.process is not None

    def join(self) -> None:
        """Count this object among the daemon's users (see :attr:`shared`)."""
        if self._users is None:
            self._users = _lock_file(f"pcscd-{self.port}-user-{os.getpid()}-{id(self):x}")
            fcntl.flock(self._users, fcntl.LOCK_EX)

    def start(self, timeout_s: float = 15.0) -> None:
        """Reuse a running pcscd that has vpcd readers, or start one."""
        self.join()
        if _virtual_readers():
            _log.info("reusing the running pcscd")
            return
        pcscd = shutil.which("pcscd") or "/usr/sbin/pcscd"
        if not Path(pcscd).exists() or not VPCD_DRIVER.exists():
            raise StackError(
                "pcscd or the vpcd driver is not installed: run `make setup` "
                "(Debian packages pcscd and vsmartcard-vpcd)"
            )
        self._confdir = Path(tempfile.mkdtemp(prefix="sdbox-pcscd-"))
        (self._confdir / "vpcd").write_text(
            f'FRIENDLYNAME "{READER_PREFIX}"\n'
            f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
            f"LIBPATH      {VPCD_DRIVER}\n"
            f"CHANNELID    0x{self.port:04X}\n"
        )
        self.log_path = self._confdir / "pcscd.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [pcscd, "--foreground", "--config", str(self._confdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._pid_file.write_text(str(self.process.pid))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(
                    f"pcscd exited at start (code {self.process.returncode}): {self.log_tail()}"
                )
            if _virtual_readers():
                return
            time.sleep(0.1)
        self.stop()
        raise StackError(f"pcscd did not show the vpcd readers within {timeout_s:.0f} s")

    def log_tail(self, lines: int = 20) -> str:
        """The end of pcscd's log (for error messages)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def _pid_file(self) -> Path:
        return LOCK_DIR / f"sdbox-pcscd-{self.port}.pid"

    def _stop_left_behind(self) -> None:
        """Stop a pcscd that an earlier sdbox run started and had to leave to others.

        Called by the last user only; the pid is trusted only if that process
        is still a pcscd running with an sdbox configuration directory.
        """
        try:
            pid = int(self._pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            self._pid_file.unlink(missing_ok=True)
            return
        if cmdline and cmdline[0].endswith(b"pcscd") and any(b"sdbox-pcscd-" in a for a in cmdline):
            _log.info("stopping the pcscd an earlier sdbox run left running (pid %d)", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self._pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the daemon if this object started it and nobody else uses it."""
        if self.process is not None and self.shared:
            _log.info("pcscd is in use by another sdbox run: leaving it running")
            self.process = None  # the pid file lets the last user stop it
        elif self.process is None and self._users is not None and not self.shared:
            self._stop_left_behind()
        process, self.process = self.process, None
        if process is None:
            return
        self._pid_file.unlink(missing_ok=True)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again (fault tests: pcscd restarted under a client)."""
        if not self.owned or self.shared:
            raise StackError(
                "this pcscd was not started by us, or is shared: refusing to restart it"
            )
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop and remove the temporary configuration."""
        self.stop()
        if self._users is not None:
            Path(self._users.name).unlink(missing_ok=True)
            self._users.close()
            self._users = None
        if self._confdir is not None:
            shutil.rmtree(self._confdir, ignore_errors=True)
            self._confdir = None


def wait_for_card(reader: str, *, present: bool, timeout_s: float = 10.0) -> bool:
    """Wait (on pcscd's events) until ``reader`` holds a card, or none."""
    context = PcscContext()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                states = [s for s in context.reader_states() if s.name == reader]
            except PcscUnavailable:  # pcscd restarting (another run's, or ours): ask again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
                continue
            if states and states[0].present == present:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(PcscUnavailable):
                context.wait_for_change(states, min(remaining, 1.0))
    finally:
        context.release()


@contextlib.contextmanager
def reserve_reader(timeout_s: float = 600.0) -> Iterator[int]:
    """Hold one vpcd reader index for the duration (other runs wait for it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for index in range(VPCD_READERS):
            handle = _lock_file(f"vpcd-reader-{index}")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                handle.close()
            return
        if time.monotonic() > deadline:
            raise StackError("every vpcd reader is held by another sdbox run")
        time.sleep(0.2)
