"""Test tiers mean what they say: `-m "not integration"` leaves the real stack out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _collected(tmp_path: Path, *args: str) -> list[str]:
    # from another directory, as CI or a developer may run it; no cache written
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args, str(TESTS / "integration")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # 0: collected; 5: nothing left after deselection. Anything else is a collection error.
    assert done.returncode in (0, 5), done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_not_integration_selects_no_integration_test(tmp_path: Path) -> None:
    everything = _collected(tmp_path)
    assert len(everything) > 100  # the directory does collect: the check below is not vacuous
    assert _collected(tmp_path, "-m", "not integration") == []
    assert sorted(_collected(tmp_path, "-m", "integration")) == sorted(everything)
