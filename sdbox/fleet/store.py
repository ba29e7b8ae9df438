"""The fleet's records: boxes, their check-ins, audit events and request sequence.

One SQL text for SQLite (one file, one machine) and PostgreSQL (a centre's
database shared by several service processes): :mod:`sdbox.fleet.db` runs it.
Every request is one transaction; the service holds no state between
requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sdbox.centre.fleet import AuditRecord, Diagnostics, Report
from sdbox.errors import SdboxError
from sdbox.fleet.db import Database, FleetStoreError, SqliteDatabase, Tx
from sdbox.fleet.rollouts import ROLLOUT_MIGRATION

HISTORY_KEPT = 200  # check-ins kept per box (the box page's history)
DIAGNOSTICS_KEPT = 10  # diagnostics uploads kept per box

# Applied in order; the database records how many ran. Never edit one that shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE boxes (
        box_id TEXT PRIMARY KEY,
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        last_sequence BIGINT NOT NULL,
        last_digest TEXT NOT NULL,
        last_answer TEXT NOT NULL,
        version TEXT NOT NULL DEFAULT '',
        image_version TEXT NOT NULL DEFAULT '',
        slot TEXT NOT NULL DEFAULT '',
        generation TEXT NOT NULL DEFAULT '',
        tunnel_state TEXT NOT NULL DEFAULT '',
        problems TEXT NOT NULL DEFAULT '[]',
        report TEXT NOT NULL DEFAULT '{}',
        audit_through BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE checkins (
        box_id TEXT NOT NULL,
        received TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        report TEXT NOT NULL,
        PRIMARY KEY (box_id, sequence)
    );
    CREATE TABLE audit_events (
        box_id TEXT NOT NULL,
        number BIGINT NOT NULL,
        realtime_us BIGINT NOT NULL,
        event TEXT NOT NULL,
        fields TEXT NOT NULL,
        received TEXT NOT NULL,
        PRIMARY KEY (box_id, number)
    );
    CREATE TABLE certificates (
        box_id TEXT NOT NULL,
        role TEXT NOT NULL,
        not_after TEXT NOT NULL,
        PRIMARY KEY (box_id, role)
    );
    CREATE INDEX checkins_by_time ON checkins (box_id, received);
    CREATE INDEX certificates_by_expiry ON certificates (not_after);
    """,
    ROLLOUT_MIGRATION,
    """
    CREATE TABLE diagnostics (
        box_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        received TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (box_id, sequence)
    )
    """,
)


class Replayed(SdboxError):
    """A request older than the last one accepted from this box."""

    def __init__(self, message: str, last_sequence: int) -> None:
        super().__init__(message)
        self.last_sequence = last_sequence


@dataclass(frozen=True)
class Admission:
    """What :meth:`FleetStore.admit` found in the box's row."""

    earlier: dict[str, Any] | None  # a retried request: the answer it was given
    audit_through: int  # the highest audit event number held for the box
    certificates: list[dict[str, str]] | None  # those of its last report (None: none yet)


@dataclass(frozen=True)
class BoxRow:
    """What the dashboard lists for one box."""

    box_id: str
    first_seen: str
    last_seen: str
    version: str
    image_version: str
    slot: str
    generation: str
    tunnel_state: str
    problems: tuple[str, ...]
    audit_through: int


@dataclass(frozen=True)
class BoxFilter:
    """The dashboard's filters ('' and 0: any)."""

    version: str = ""
    generation: str = ""
    problem: str = ""  # a problem code in the box's latest report
    silent_for_s: int = 0  # not seen for at least this long


def _box_row(r: tuple[Any, ...]) -> BoxRow:
    return BoxRow(
        box_id=r[0], first_seen=r[1], last_seen=r[2], version=r[3], image_version=r[4],
        slot=r[5], generation=r[6], tunnel_state=r[7], problems=tuple(json.loads(r[8])),
        audit_through=int(r[9]),
    )  # fmt: skip


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class FleetStore:
    """The fleet's records in one database (created and migrated on first use)."""

    def __init__(self, database: Database | Path) -> None:
        self.db: Database = SqliteDatabase(database) if isinstance(database, Path) else database
        with self.db.transaction() as tx:
            self._migrate(tx)

    def transaction(self, *, lock: str | None = None, durable: bool = True) -> Any:
        """One request's work, all or nothing (see :meth:`sdbox.fleet.db.Database.transaction`).

        Check-ins pass ``durable=False`` (the next one supersedes a lost one);
        audit events are always durable: once acknowledged, the box moves its
        cursor past them.
        """
        return self.db.transaction(lock=lock, durable=durable)

    def _migrate(self, tx: Tx) -> None:
        tx.execute("CREATE TABLE IF NOT EXISTS schema_version (applied BIGINT NOT NULL)")
        rows = tx.execute("SELECT applied FROM schema_version")
        applied = int(rows[0][0]) if rows else 0
        if not rows:
            tx.execute("INSERT INTO schema_version (applied) VALUES (0)")
        if applied > len(MIGRATIONS):
            raise FleetStoreError(
                f"the fleet database {self.db.name} is newer (schema {applied}) than this "
                f"service ({len(MIGRATIONS)}): run the newer release"
            )
        for number, script in enumerate(MIGRATIONS[applied:], start=applied + 1):
            self.db.script(tx, script)  # in the same transaction as its record
            tx.execute("UPDATE schema_version SET applied = ?", (number,))

    # -- writes (inside one transaction) ---------------------------------------

    @staticmethod
    def admit(db: Tx, box_id: str, sequence: int, digest: str) -> Admission:
        """Check the request's sequence; what the box's row says (a retry's earlier answer).

        Raises :class:`Replayed` for an older request, or a different one under
        the same number.
        """
        rows = db.execute(
            "SELECT last_sequence, last_digest, last_answer, audit_through, report FROM boxes"
            " WHERE box_id = ?",
            (box_id,),
        )
        if not rows:
            return Admission(None, 0, None)
        last_sequence, last_digest, last_answer, through, report = rows[0]
        if sequence == last_sequence and digest == last_digest:
            return Admission(json.loads(last_answer), int(through), None)
        if sequence <= last_sequence:
            raise Replayed(
                f"request {sequence} of box {box_id} is not newer than {last_sequence}, "
                "the last one accepted",
                last_sequence,
            )
        return Admission(None, int(through), json.loads(report).get("certificates"))

    @staticmethod
    def remember(
        db: Tx, box_id: str, sequence: int, digest: str, answer: dict[str, Any],
        audit_through: int | None = None,
    ) -> None:
        """Record the accepted request and its answer (for an idempotent retry)."""
        now = _now()
        db.execute(
            "INSERT INTO boxes (box_id, first_seen, last_seen, last_sequence, last_digest, last_answer,"
            " audit_through) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (box_id) DO UPDATE SET"
            " last_seen = excluded.last_seen, last_sequence = excluded.last_sequence,"
            " last_digest = excluded.last_digest, last_answer = excluded.last_answer,"
            " audit_through = CASE WHEN ? THEN excluded.audit_through ELSE boxes.audit_through END",
            (box_id, now, now, sequence, digest, json.dumps(answer), audit_through or 0,
             audit_through is not None),
        )  # fmt: skip

    @staticmethod
    def record_checkin(
        db: Tx, box_id: str, sequence: int, digest: str, report: Report,
        answer: dict[str, Any], admission: Admission,
    ) -> None:
        """The accepted check-in: the box's latest state and the answer in one statement, a row
        of history, and its certificates' expiries when they changed.

        Few statements on purpose: each is a round trip to PostgreSQL, and the
        check-in is the request every box sends every few minutes.
        """
        body = report.to_json()
        data = json.dumps(body, sort_keys=True)
        now = _now()
        db.execute(
            "INSERT INTO boxes (box_id, first_seen, last_seen, last_sequence, last_digest, last_answer,"
            " version, image_version, slot, generation, tunnel_state, problems, report)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (box_id) DO UPDATE SET"
            " last_seen = excluded.last_seen, last_sequence = excluded.last_sequence,"
            " last_digest = excluded.last_digest, last_answer = excluded.last_answer,"
            " version = excluded.version, image_version = excluded.image_version,"
            " slot = excluded.slot, generation = excluded.generation,"
            " tunnel_state = excluded.tunnel_state, problems = excluded.problems,"
            " report = excluded.report",
            (box_id, now, now, sequence, digest, json.dumps(answer), report.version,
             report.image_version, report.slot, report.generation, report.tunnel_state,
             json.dumps(list(report.problems)), data),
        )  # fmt: skip
        db.execute(
            "INSERT INTO checkins (box_id, received, sequence, report) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (box_id, sequence) DO NOTHING",
            (box_id, now, sequence, data),
        )
        # one in, the oldest beyond HISTORY_KEPT out: a walk of the primary key's index
        db.execute(
            "DELETE FROM checkins WHERE box_id = ? AND sequence <= (SELECT sequence FROM checkins"
            " WHERE box_id = ? ORDER BY sequence DESC LIMIT 1 OFFSET ?)",
            (box_id, box_id, HISTORY_KEPT),
        )
        if body["certificates"] == admission.certificates:
            return  # the same certificates as last time: nothing to rewrite
        db.execute("DELETE FROM certificates WHERE box_id = ?", (box_id,))
        for cert in report.certificates:
            db.execute(
                "INSERT INTO certificates (box_id, role, not_after) VALUES (?, ?, ?)"
                " ON CONFLICT (box_id, role) DO UPDATE SET not_after = excluded.not_after",
                (box_id, cert.role, datetime.fromisoformat(cert.not_after).astimezone(UTC).isoformat()),
            )

    @staticmethod
    def audit_through(db: Tx, box_id: str) -> int:
        """The highest audit event number held for the box (0: none)."""
        ((through,),) = db.execute(
            "SELECT COALESCE(MAX(number), 0) FROM audit_events WHERE box_id = ?", (box_id,)
        )
        return int(through)

    @staticmethod
    def record_audit(db: Tx, box_id: str, records: list[AuditRecord]) -> int:
        """Store each event number once; return how far the centre holds the box's events."""
        received = _now()
        db.executemany(
            "INSERT INTO audit_events (box_id, number, realtime_us, event, fields, received)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (box_id, number) DO NOTHING",
            [(box_id, record.number, record.realtime_us, record.event,
              json.dumps(record.fields, sort_keys=True), received) for record in records],
        )  # fmt: skip
        # the box's row records it with the answer (remember), where check-ins read it
        return FleetStore.audit_through(db, box_id)

    @staticmethod
    def record_diagnostics(db: Tx, box_id: str, sequence: int, upload: Diagnostics) -> None:
        """Keep one diagnostics upload (the newest :data:`DIAGNOSTICS_KEPT` per box)."""
        db.execute(
            "INSERT INTO diagnostics (box_id, sequence, received, body) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (box_id, sequence) DO NOTHING",
            (box_id, sequence, _now(), json.dumps(upload.to_json())),
        )
        db.execute(
            "DELETE FROM diagnostics WHERE box_id = ? AND sequence NOT IN (SELECT sequence FROM"
            " diagnostics WHERE box_id = ? ORDER BY sequence DESC LIMIT ?)",
            (box_id, box_id, DIAGNOSTICS_KEPT),
        )

    # -- reads -------------------------------------------------------------------

    def diagnostics(self, box_id: str, sequence: int) -> tuple[str, Diagnostics] | None:
        """One upload: when it arrived and what it holds."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT received, body FROM diagnostics WHERE box_id = ? AND sequence = ?",
                (box_id, sequence),
            )
        if not rows:
            return None
        body = json.loads(rows[0][1])
        return str(rows[0][0]), Diagnostics(body.get("reason", ""), body.get("sections", {}))

    def diagnostics_list(self, box_id: str) -> list[tuple[int, str, str]]:
        """(sequence, received, reason) of a box's uploads, newest first."""
        with self.db.read() as db:
            rows = db.execute(
                "SELECT sequence, received, body FROM diagnostics WHERE box_id = ?"
                " ORDER BY sequence DESC",
                (box_id,),
            )
        return [(int(r[0]), str(r[1]), str(json.loads(r[2]).get("reason", ""))) for r in rows]

    def boxes(self, where: BoxFilter | None = None) -> list[BoxRow]:
        """The boxes, filtered; most recently seen first."""
        where = where or BoxFilter()
        since = datetime.now(UTC) - timedelta(seconds=where.silent_for_s)
        with self.db.read() as db:
            rows = db.execute(
                "SELECT box_id, first_seen, last_seen, version, image_version, slot, generation,"
                " tunnel_state, problems, audit_through FROM boxes"
                " WHERE (? = '' OR version = ?) AND (? = '' OR generation = ?)"
                " AND (? = 0 OR last_seen < ?) ORDER BY last_seen DESC, box_id",
                (where.version, where.version, where.generation, where.generation,
                 where.silent_for_s, since.isoformat(timespec="seconds")),
            )  # fmt: skip
        found = [_box_row(r) for r in rows]
        return [b for b in found if not where.problem or where.problem in b.problems]

    def box(self, box_id: str) -> tuple[BoxRow, list[dict[str, Any]], list[dict[str, Any]]] | None:
        """One box, its recent check-ins (newest first) and its recent audit events."""
        rows = [b for b in self.boxes() if b.box_id == box_id]
        if not rows:
            return None
        with self.db.read() as db:
            history = [
                {"received": r[0], "sequence": r[1], **json.loads(r[2])}
                for r in db.execute(
                    "SELECT received, sequence, report FROM checkins WHERE box_id = ?"
                    " ORDER BY sequence DESC LIMIT 50",
                    (box_id,),
                )
            ]
            events = [
                {"number": r[0], "realtime_us": r[1], "event": r[2], "fields": json.loads(r[3])}
                for r in db.execute(
                    "SELECT number, realtime_us, event, fields FROM audit_events WHERE box_id = ?"
                    " ORDER BY number DESC LIMIT 100",
                    (box_id,),
                )
            ]
        return rows[0], history, events

    def expiring(self, within_days: int) -> list[tuple[str, str, str]]:
        """(box, role, not after) for certificates that expire within ``within_days``, soonest first."""
        until = (datetime.now(UTC) + timedelta(days=within_days)).isoformat()
        with self.db.read() as db:
            return [
                (str(r[0]), str(r[1]), str(r[2]))
                for r in db.execute(
                    "SELECT box_id, role, not_after FROM certificates WHERE not_after <= ?"
                    " ORDER BY not_after, box_id",
                    (until,),
                )
            ]

    def audit_events(self, box_id: str) -> list[AuditRecord]:
        """Every event the centre holds for a box, in order (tests and exports)."""
        with self.db.read() as db:
            return [
                AuditRecord(number=r[0], realtime_us=r[1], event=r[2], fields=json.loads(r[3]))
                for r in db.execute(
                    "SELECT number, realtime_us, event, fields FROM audit_events WHERE box_id = ?"
                    " ORDER BY number",
                    (box_id,),
                )
            ]
