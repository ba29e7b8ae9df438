"""External tools (mtools, sfdisk, zstd, ...) run with argv lists, a fixed
environment and a timeout; failures become :class:`ToolFailed` with the tail
of the tool's output."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from sdbox.bootimage.errors import ToolFailed

# Tools see a fixed PATH and C locale (stable messages), plus what the caller adds.
BASE_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
TAIL = 3000


def tail(text: str | bytes | None, limit: int = TAIL) -> str:
    """The last ``limit`` characters of a tool's output."""
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
) -> str:
    """Run ``argv``; its stdout, or :class:`ToolFailed` saying ``what`` failed."""
    full_env = dict(BASE_ENV)
    if env:
        full_env.update(env)
    try:
        done = subprocess.run(
            [os.fspath(a) for a in argv], input=input, capture_output=True,
            env=full_env, timeout=timeout, check=False, cwd=cwd,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise ToolFailed(f"{what}: {argv[0]} is not installed (make setup-system)") from exc
    except subprocess.TimeoutExpired as exc:
        raise ToolFailed(
            f"{what}: {argv[0]} did not finish within {timeout:.0f} s",
            detail=tail(exc.stderr) or tail(exc.stdout),
        ) from exc
    if done.returncode != 0:
        raise ToolFailed(
            f"{what}: {argv[0]} failed (exit {done.returncode})",
            detail=tail(done.stderr) or tail(done.stdout),
        )
    return done.stdout.decode(errors="replace")
