"""The renewal timer's job: what is due, from what the agent saw (no card needed)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sdbox.renewal.due import DueFileError, mark_due, record_renewability, record_seen

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


RSA_REFUSAL = (
    "renewal: the box generates EC project keys only, so RSA project keys are not renewed "
    "on the box; the card office re-issues them"
)


def test_a_card_the_box_cannot_renew_is_listed_with_the_reason_not_marked_due(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record_seen(tmp_path, "aa" * 16, {"census-2021": NOW + timedelta(days=10, hours=1)})
    record_seen(tmp_path, "bb" * 16, {"census-2021": NOW + timedelta(days=12, hours=1)})
    record_renewability(tmp_path, "aa" * 16, RSA_REFUSAL)  # what the agent asked the RSA card
    record_renewability(tmp_path, "bb" * 16, None)  # a P-256 card: renewable
    with caplog.at_level(logging.INFO):
        due = mark_due(tmp_path, window_days=30, now=NOW)
    assert [(d.card[:2], d.refusal) for d in due] == [("aa", RSA_REFUSAL), ("bb", None)]
    written = json.loads((tmp_path / "due.json").read_text())
    assert [(d["renewable"], d["reason"]) for d in written] == [(False, RSA_REFUSAL), (True, None)]
    # the journal: one due for renewal, one the card office must re-issue
    assert caplog.text.count("renewal_due") == 1
    assert "renewal_failed" in caplog.text
    assert "this box cannot renew it: " + RSA_REFUSAL in caplog.text


def test_mark_due_command_says_why_a_card_is_not_renewed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    soon = datetime.now(UTC) + timedelta(days=3, hours=1)
    record_seen(state / "renewal", "cc" * 16, {"census-2021": soon})
    record_renewability(state / "renewal", "cc" * 16, RSA_REFUSAL)
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{state}"\n[policy]\nrenewal_window_days = 30\n')
    done = subprocess.run(
        [sys.executable, "-m", "sdbox", "renewal", "mark-due", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"census-2021: expires in 3 days, not renewed on this box: {RSA_REFUSAL} (card cccccccc…)\n"
    )


def test_a_damaged_renewability_file_is_a_clear_error(tmp_path: Path) -> None:
    record_seen(tmp_path, "aa" * 16, {"census-2021": NOW + timedelta(days=5)})
    (tmp_path / "renewability.json").write_text("[1, 2]")
    with pytest.raises(DueFileError, match="the agent asks them again"):
        mark_due(tmp_path, window_days=30, now=NOW)
    record_renewability(tmp_path, "aa" * 16, None)  # the agent's next card replaces it
    assert [d.refusal for d in mark_due(tmp_path, window_days=30, now=NOW)] == [None]
