"""Staged updates: an operator publishes a signed RAUC bundle and rolls it out ring by ring.

A rollout names a bundle (by its SHA-256, kept in the service's bundle
directory), a first ring of named boxes, then percentages of the fleet
(stage 1 is the first percentage, and so on) and the failure rate at which it
pauses itself. At each check-in the service decides whether to offer the
bundle to that box: a box of the first ring from stage 0, any other box once
the stage's percentage covers its bucket (a stable hash of the rollout and the
box, so raising the percentage only adds boxes). A box that reports the
rollout's version has installed it; a box that reports
``update_failed:<version>`` (RAUC fell back after a failed trial boot) has
failed it. Once at least :data:`MIN_OUTCOMES` boxes have an outcome and the
failed share passes the threshold (from the first failure), the rollout pauses and offers nothing more
until an operator resumes it.

The box verifies the bundle itself (RAUC's signature, its own downgrade
refusal): the service only decides who is offered what.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdbox.errors import SdboxError
from sdbox.fleet.db import Tx

# one failure is enough to judge: pausing early costs an operator a click, a bad
# bundle reaching a percentage of the fleet costs boxes
MIN_OUTCOMES = 1
ROLLOUT_MIGRATION = """
    CREATE TABLE bundles (
        digest TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        size BIGINT NOT NULL,
        published TEXT NOT NULL
    );
    CREATE TABLE rollouts (
        id BIGINT PRIMARY KEY,
        digest TEXT NOT NULL,
        version TEXT NOT NULL,
        ring TEXT NOT NULL,
        steps TEXT NOT NULL,
        stage BIGINT NOT NULL,
        state TEXT NOT NULL,
        max_failure_rate TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE rollout_boxes (
        rollout_id BIGINT NOT NULL,
        box_id TEXT NOT NULL,
        state TEXT NOT NULL,
        updated TEXT NOT NULL,
        PRIMARY KEY (rollout_id, box_id)
    )
"""


class RolloutError(SdboxError):
    """An operator's rollout request that cannot be done (names why)."""


@dataclass(frozen=True)
class Rollout:
    """One rollout as stored."""

    id: int
    digest: str
    version: str
    ring: tuple[str, ...]
    steps: tuple[int, ...]  # percentages of the fleet, after the ring
    stage: int  # 0: the ring only; n: the ring and steps[n-1] %
    state: str  # running, paused, done
    max_failure_rate: float

    def covers(self, box_id: str) -> bool:
        """Whether the current stage offers the bundle to ``box_id``."""
        if box_id in self.ring:
            return True
        if self.stage == 0:
            return False
        return bucket(self.id, box_id) < self.steps[min(self.stage, len(self.steps)) - 1]


@dataclass(frozen=True)
class Progress:
    """Where a rollout stands."""

    rollout: Rollout
    offered: int
    installed: int
    failed: int


def bucket(rollout_id: int, box_id: str) -> int:
    """A box's place (0-99) in a rollout: stable, and independent between rollouts."""
    digest = hashlib.sha256(f"{rollout_id}\x00{box_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _rollout(row: tuple[Any, ...]) -> Rollout:
    return Rollout(
        id=int(row[0]), digest=row[1], version=row[2], ring=tuple(json.loads(row[3])),
        steps=tuple(json.loads(row[4])), stage=int(row[5]), state=row[6],
        max_failure_rate=float(row[7]),
    )  # fmt: skip


_COLUMNS = "id, digest, version, ring, steps, stage, state, max_failure_rate"


def publish(tx: Tx, bundles: Path, bundle: Path, version: str) -> str:
    """Copy ``bundle`` into the service's bundle directory; its SHA-256."""
    if not bundle.is_file():
        raise RolloutError(f"{bundle} is not a file: give the signed .raucb bundle")
    sha = hashlib.sha256()
    with bundle.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
    digest = sha.hexdigest()
    bundles.mkdir(parents=True, exist_ok=True)
    target = bundles / f"{digest}.raucb"
    if not target.exists():
        partial = target.with_suffix(".partial")
        shutil.copyfile(bundle, partial)
        partial.replace(target)
    tx.execute(
        "INSERT INTO bundles (digest, version, size, published) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (digest) DO NOTHING",
        (digest, version, target.stat().st_size, _now()),
    )
    return digest


def create(
    tx: Tx, digest: str, ring: list[str], steps: list[int], max_failure_rate: float
) -> Rollout:
    """A new rollout of a published bundle; it replaces a running one (which is marked done)."""
    rows = tx.execute("SELECT version FROM bundles WHERE digest = ?", (digest,))
    if not rows:
        raise RolloutError(f"no bundle {digest[:12]}… is published: publish it first")
    if not steps or any(not 0 < s <= 100 for s in steps) or steps != sorted(steps):
        raise RolloutError("steps must be rising percentages between 1 and 100 (e.g. 10,50,100)")
    if not 0 < max_failure_rate <= 1:
        raise RolloutError("the failure rate that pauses a rollout must be in (0, 1]")
    ((last,),) = tx.execute("SELECT COALESCE(MAX(id), 0) FROM rollouts")
    tx.execute("UPDATE rollouts SET state = 'done' WHERE state IN ('running', 'paused')")
    rollout_id = int(last) + 1
    tx.execute(
        f"INSERT INTO rollouts ({_COLUMNS}, created) VALUES (?, ?, ?, ?, ?, 0, 'running', ?, ?)",  # noqa: S608
        (rollout_id, digest, rows[0][0], json.dumps(ring), json.dumps(steps),
         repr(max_failure_rate), _now()),
    )  # fmt: skip
    return current(tx) or _missing()


def _missing() -> Rollout:
    raise RolloutError("the rollout just created cannot be read back")


def current(tx: Tx) -> Rollout | None:
    """The running or paused rollout, if any."""
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id DESC",  # noqa: S608
    )
    return _rollout(rows[0]) if rows else None


def set_stage(tx: Tx, *, advance: bool = False, state: str | None = None) -> Rollout:
    """The operator's controls: next stage, pause, resume."""
    rollout = current(tx)
    if rollout is None:
        raise RolloutError("no rollout is running")
    stage = rollout.stage + 1 if advance else rollout.stage
    if stage > len(rollout.steps):
        raise RolloutError("the rollout is at its last stage already")
    tx.execute(
        "UPDATE rollouts SET stage = ?, state = ? WHERE id = ?",
        (stage, state or rollout.state, rollout.id),
    )
    return current(tx) or _missing()


def progress(tx: Tx) -> Progress | None:
    """The current rollout and its counts."""
    rollout = current(tx)
    if rollout is None:
        return None
    counts = _counts(
        tx, "SELECT state, COUNT(*) FROM rollout_boxes WHERE rollout_id = ? GROUP BY state", rollout.id
    )
    return Progress(
        rollout, int(counts.get("offered", 0)), int(counts.get("installed", 0)),
        int(counts.get("failed", 0)),
    )  # fmt: skip


def on_checkin(tx: Tx, box_id: str, version: str, problems: tuple[str, ...]) -> dict[str, Any] | None:
    """Record the box's outcome for the current rollout; the offer to put in its answer, if any."""
    rollout = current(tx)
    if rollout is None:
        return None
    rows = tx.execute(
        "SELECT state FROM rollout_boxes WHERE rollout_id = ? AND box_id = ?", (rollout.id, box_id)
    )
    known = rows[0][0] if rows else None
    outcome = None
    if version == rollout.version:
        outcome = "installed"
    elif f"update_failed:{rollout.version}" in problems:
        outcome = "failed"
    if outcome and outcome != known:
        _set_box(tx, rollout.id, box_id, outcome)
        if outcome == "failed":
            _maybe_pause(tx, rollout)
        return None
    if known in ("installed", "failed") or rollout.state != "running" or not rollout.covers(box_id):
        return None
    if known is None:
        _set_box(tx, rollout.id, box_id, "offered")
    return {"version": rollout.version, "sha256": rollout.digest, "path": f"/v1/bundles/{rollout.digest}"}


def _counts(tx: Tx, sql: str, rollout_id: int) -> dict[str, int]:
    return {str(state): int(count) for state, count in tx.execute(sql, (rollout_id,))}


def _set_box(tx: Tx, rollout_id: int, box_id: str, state: str) -> None:
    tx.execute(
        "INSERT INTO rollout_boxes (rollout_id, box_id, state, updated) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (rollout_id, box_id) DO UPDATE SET state = excluded.state,"
        " updated = excluded.updated",
        (rollout_id, box_id, state, _now()),
    )


def _maybe_pause(tx: Tx, rollout: Rollout) -> None:
    counts = _counts(
        tx,
        "SELECT state, COUNT(*) FROM rollout_boxes WHERE rollout_id = ?"
        " AND state IN ('installed', 'failed') GROUP BY state",
        rollout.id,
    )
    failed, done = counts.get("failed", 0), sum(counts.values())
    if done >= MIN_OUTCOMES and failed / done > rollout.max_failure_rate:
        tx.execute("UPDATE rollouts SET state = 'paused' WHERE id = ?", (rollout.id,))
