"""`--json` on the real stack: standard output is the JSON document alone.

The commands here need pcscd, a card or the whole agent stack; the others are
run in tests/unit/test_cli_surface.py, which also checks that every command
with `--json` is run somewhere.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli import sdbox_argv
from tests.integration.conftest import InsertedCard


def test_card_readers_json_is_the_document_alone(demo_card: InsertedCard) -> None:
    done = subprocess.run(
        [*sdbox_argv(), "card", "readers", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    readers = {r["reader"]: r for r in json.loads(done.stdout)}
    assert readers[demo_card.reader]["card"] is True
    assert readers[demo_card.reader]["atr"].startswith("3B88")


def test_agent_bench_json_is_the_document_alone_and_runs_from_anywhere(tmp_path: Path) -> None:
    # the console script, started away from the checkout: it finds benchmarks/
    # and tests/ beside the sdbox it belongs to (it used to ask for a checkout)
    done = subprocess.run(
        [*sdbox_argv(), "agent", "bench", "--json", "--rounds", "1", "--idle-seconds", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout)  # fails on the table or anything else in front of it
    assert figures["rounds"] == 1
    for key in ("insert_to_session_s", "switch_s", "removal_teardown_s", "agent_rss_mb"):
        assert figures[key] > 0
    assert "insert_to_session_s" in done.stderr  # the table is still shown, on stderr
