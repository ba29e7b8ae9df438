"""External tools (mtools, sfdisk, zstd, ...) for the image and flashing.

They run through product code's one runner (:func:`sdbox.process.run`:
argv lists, a fixed environment, a timeout); a failure here is a
:class:`ToolFailed` with the tail of the tool's output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sdbox import process
from sdbox.bootimage.errors import ToolFailed
from sdbox.process import BASE_ENV, TAIL, tail

__all__ = ["BASE_ENV", "TAIL", "run", "tail"]


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
    return process.run(
        argv, what=what, timeout=timeout, env=env, input=input, cwd=cwd, failure=ToolFailed
    )
