"""How tests start the `sdbox` command: the one installed with the Python running the tests.

Never a path relative to the working directory (`.venv/bin/sdbox`): the
tests run from any directory, and against an installed sdbox as well as a
checkout's venv.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the repository root (for `python -m tests.…` children, which need it as their working directory)
REPO_ROOT = Path(__file__).resolve().parents[1]


def sdbox_argv() -> list[str]:
    """The argv prefix that runs `sdbox`: its console script beside this interpreter, if any.

    The console script is what a user runs (and what the packaged units call);
    without one (an interpreter that has sdbox importable but no script, e.g.
    Debian's launcher setup) it is `python -m sdbox`, the same entry point.
    """
    script = Path(sys.executable).parent / "sdbox"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "sdbox"]
