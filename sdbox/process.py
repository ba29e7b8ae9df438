"""Running an external program from product code: one way, as mkosi's ``run()``.

An argv list (never a shell), a fixed environment (PATH and a C locale, plus
what the caller adds: never the caller's own environment, which may hold
sockets and tokens), a timeout, and a typed failure that says what failed
and keeps the tail of the program's output. Long-running daemons the
emulator stack starts (pcscd) and the session clients (which have their own
supervisor, sdbox.session.supervisor) are spawned, not run; the on-box RAUC
helper (sdbox.bootimage.slots) stays standard-library only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from sdbox.errors import SdboxError

# Programs see a fixed PATH and C locale (stable messages), plus what the caller adds.
BASE_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
TAIL = 3000


class CommandFailed(SdboxError):
    """An external program failed, was missing or timed out; ``detail`` is its output's tail."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail
        self.returncode: int | None = None  # its exit code, when it ran and failed


class FailureType(Protocol):
    """What :func:`run` raises: a message, and the output's tail as ``detail``."""

    def __call__(self, message: str, detail: str = ...) -> Exception: ...


def tail(text: str | bytes | None, limit: int = TAIL) -> str:
    """The last ``limit`` characters of a program's output."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return text[-limit:]


def run(
    argv: Sequence[str | Path],
    *,
    what: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
    failure: FailureType = CommandFailed,
) -> str:
    """Run ``argv`` to completion; its stdout, else ``failure`` saying ``what`` failed and why."""
    full_env = dict(BASE_ENV)
    if env:
        full_env.update(env)
    try:
        done = subprocess.run(
            [os.fspath(a) for a in argv], input=input, capture_output=True,
            env=full_env, timeout=timeout, check=False, cwd=cwd,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise failure(f"{what}: {argv[0]} is not installed (make setup-system)") from exc
    except subprocess.TimeoutExpired as exc:
        raise failure(
            f"{what}: {argv[0]} did not finish within {timeout:.0f} s",
            detail=tail(exc.stderr) or tail(exc.stdout),
        ) from exc
    except OSError as exc:
        raise failure(f"{what}: {argv[0]} could not be started ({exc.strerror})") from exc
    if done.returncode != 0:
        error = failure(
            f"{what}: {argv[0]} failed (exit {done.returncode})",
            detail=tail(done.stderr) or tail(done.stdout),
        )
        if isinstance(error, CommandFailed):
            error.returncode = done.returncode  # a caller may act on a program's documented codes
        raise error
    return done.stdout.decode(errors="replace")
