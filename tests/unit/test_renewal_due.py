"""The renewal timer's job: what is due, from what the agent saw (no card needed)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sdbox.renewal.due import DueFileError, mark_due, record_seen

NOW = datetime(2031, 3, 1, tzinfo=UTC)


def test_due_lists_what_falls_inside_the_window_and_audits_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record_seen(tmp_path, "aa" * 16, {"census-2021": NOW + timedelta(days=10, hours=1),
                                      "genomics-lab": NOW + timedelta(days=200)})  # fmt: skip
    record_seen(tmp_path, "bb" * 16, {"health-cohort": NOW - timedelta(days=2)})
    with caplog.at_level(logging.INFO):
        due = mark_due(tmp_path, window_days=30, now=NOW)
    assert [(d.card[:2], d.project, d.days_left) for d in due] == [
        ("aa", "census-2021", 10),
        ("bb", "health-cohort", -2),
    ]
    written = json.loads((tmp_path / "due.json").read_text())
    assert [d["project"] for d in written] == ["census-2021", "health-cohort"]
    assert caplog.text.count("renewal_due") == 2
    assert "expired" in caplog.text
    assert (tmp_path / "seen.json").stat().st_mode & 0o777 == 0o644  # public data, timer's user


def test_a_card_seen_again_replaces_its_own_entry(tmp_path: Path) -> None:
    record_seen(tmp_path, "aa" * 16, {"census-2021": NOW + timedelta(days=5)})
    record_seen(tmp_path, "aa" * 16, {"census-2021": NOW + timedelta(days=400)})  # renewed
    assert mark_due(tmp_path, window_days=30, now=NOW) == []


def test_a_damaged_seen_file_is_a_clear_error_and_the_agent_rewrites_it(tmp_path: Path) -> None:
    (tmp_path / "seen.json").write_text("{not json")
    with pytest.raises(DueFileError, match="agent writes it again"):
        mark_due(tmp_path, window_days=30, now=NOW)
    record_seen(tmp_path, "aa" * 16, {"census-2021": NOW + timedelta(days=5)})
    assert len(mark_due(tmp_path, window_days=30, now=NOW)) == 1


def test_mark_due_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    record_seen(state / "renewal", "cc" * 16, {"census-2021": datetime.now(UTC) + timedelta(days=3)})
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{state}"\n[policy]\nrenewal_window_days = 30\n')
    done = subprocess.run(
        [sys.executable, "-m", "sdbox", "renewal", "mark-due", "--config", str(config), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [d["project"] for d in json.loads(done.stdout)] == ["census-2021"]
