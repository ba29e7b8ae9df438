"""The per-session reaper: the session client's parent, running as the client's own user.

Started by the supervisor (already switched to ``sdbox-session``, in a new
session, parent-death signal SIGTERM) as ``python3 -I -S -c SOURCE CONTROL
REPORT HOME FILES PROGRAM ARGS...``, SOURCE being this module's text. It
makes the client's private HOME (a new directory, mode 0700, with the
non-secret FILES, a JSON object of relative path to content), forks the
client into it and into a process group of its own (parent-death signal
SIGKILL: the client dies with its reaper; core dumps off for both), writes
the client's pid on REPORT, then waits for the client or for the agent:

- ``K`` on CONTROL: SIGKILL to the client's group (card removed);
- ``T`` on CONTROL: SIGTERM to the client's group (project switch);
- end of file on CONTROL, or SIGTERM (the agent is gone): SIGKILL to the group.

Killing the client's group is then a signal between processes of one uid,
so the agent needs no CAP_KILL; the home is the client's own because its
user made it, so the agent needs no CAP_CHOWN either. When the client exits
the reaper sweeps its group, removes the home and ends the way the client
ended (same exit code, same signal). A setup failure is reported on REPORT
as a line starting with ``E``.

Standard library only, no ``sdbox`` import: it runs with ``-I -S`` on the
base interpreter (not the agent's venv), with nothing of the agent's
``sys.path``, and needs no file of the agent's: its user may not be able to
read the agent's checkout or venv.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import sys

_PR_SET_PDEATHSIG = 1
KILL = b"K"
TERMINATE = b"T"
EXIT_SETUP_FAILED = 126
EXIT_EXEC_FAILED = 127


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _make_home(home: str, files: dict[str, str]) -> None:
    # mkdir, not makedirs: the name is new, and an existing directory
    # (someone else's, or a leftover) is never reused.
    os.mkdir(home, 0o700)
    try:
        for relative, content in files.items():
            path = os.path.normpath(os.path.join(home, relative))
            if os.path.commonpath([home, path]) != home or path == home:
                raise ValueError(f"home file {relative!r} is outside the home")
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)  # ours: the mkdir above made it
        raise


def _start_client(program: list[str], control: int, report: int, home: str) -> int:
    reaper = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the client, until exec
        try:
            os.setpgid(0, 0)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                os._exit(EXIT_SETUP_FAILED)
            if os.getppid() != reaper:  # the reaper died before the prctl
                os._exit(EXIT_SETUP_FAILED)
            os.close(control)
            os.close(report)
            os.chdir(home)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(program[0], program)  # noqa: S606 - an argv list the supervisor resolved
        finally:
            os._exit(EXIT_EXEC_FAILED)
    # Both sides set the group: whichever runs first, a kill sent after the
    # pid is reported reaches the group.
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return pid


def _end_like(status: int) -> int:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:  # SIGKILL's disposition cannot be set (EINVAL): it is the default
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    """Run the reaper; returns the exit code when the client exited normally."""
    control, report = int(argv[1]), int(argv[2])
    home, files, program = os.path.abspath(argv[3]), json.loads(argv[4]), argv[5:]
    client = 0
    try:
        # No core dump, of the client (it holds the one-time credential and
        # its session keys) nor of the reaper (which re-raises the client's
        # fatal signal on itself): the hard limit too, inherited by the
        # client, so that it cannot raise it again. The image's core_pattern
        # writes no dump either; this holds wherever the agent runs, and
        # systemd-coredump honours it. PR_SET_DUMPABLE would not do: execve
        # sets it back to 1. glibc makes this prlimit64, which the agent
        # unit's seccomp filter allows (setrlimit itself is in ~@resources).
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except OSError as exc:  # fail closed: no client that could dump its credential
        os.write(report, f"E cannot disable core dumps: {exc}\n".encode())
        return EXIT_SETUP_FAILED

    def agent_gone(_sig: int, _frame: object) -> None:
        if client:
            _signal_group(client, signal.SIGKILL)

    signal.signal(signal.SIGTERM, agent_gone)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _make_home(home, files)
    except (OSError, ValueError) as exc:
        os.write(report, f"E cannot make the session's home {home}: {exc}\n".encode())
        return EXIT_SETUP_FAILED
    try:
        client = _start_client(program, control, report, home)
    except OSError as exc:
        shutil.rmtree(home, ignore_errors=True)
        os.write(report, f"E cannot start {program[0]}: {exc}\n".encode())
        return EXIT_SETUP_FAILED
    os.write(report, f"{client}\n".encode())
    os.close(report)
    os.close(0)  # the credential on stdin is the client's alone
    exited = os.pidfd_open(client)
    watched = [exited, control]
    while True:
        ready, _, _ = select.select(watched, [], [])
        if exited in ready:
            _, status = os.waitpid(client, 0)
            _signal_group(client, signal.SIGKILL)  # no helper outlives the client
            shutil.rmtree(home, ignore_errors=True)
            return _end_like(status)
        message = os.read(control, 64)
        if not message:  # the agent is gone
            _signal_group(client, signal.SIGKILL)
            watched = [exited]
        elif KILL in message:
            _signal_group(client, signal.SIGKILL)
        elif TERMINATE in message:
            _signal_group(client, signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
