"""The fleet service's two databases behind one small interface: SQLite and PostgreSQL.

The store (:mod:`sdbox.fleet.store`) writes its SQL once, with ``?``
parameters and the subset both databases speak (``INSERT ... ON CONFLICT``,
TEXT and BIGINT); this module runs it. Each service thread keeps one
connection (no application state lives in it), and each request is one
transaction:

- **SQLite** (one file, one machine): WAL, ``BEGIN IMMEDIATE`` (one writer at
  a time), ``synchronous=FULL`` for durable commits and ``NORMAL`` for the
  others (a power cut may lose the last of those, never corrupt the file).
- **PostgreSQL** (a centre's database, several service processes): psycopg 3
  with a libpq connection string; a transaction-scoped advisory lock on the
  box serialises two requests of one box, so sequence checks cannot race;
  ``synchronous_commit`` off for the commits that may be lost.

A connection string never carries a password (refused): libpq reads it from
the service account's ``~/.pgpass`` or uses peer authentication on the local
socket, so no secret sits in the configuration file.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sdbox.errors import SdboxError

Row = tuple[Any, ...]


class FleetStoreError(SdboxError):
    """The fleet database cannot be used (names it and what to do)."""


class Tx(Protocol):
    """One transaction's statements."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement; its rows (empty for writes)."""
        ...

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        """Run one write for each parameter row (one round trip where the driver can)."""
        ...


class Database(Protocol):
    """A fleet database."""

    name: str

    def transaction(self, *, lock: str | None = None, durable: bool = True) -> Any:
        """A context manager giving a :class:`Tx`: all or nothing.

        ``lock`` names what the transaction must hold alone (a box id).
        """
        ...

    def read(self) -> Any:
        """A context manager giving a :class:`Tx` for reads."""
        ...

    def script(self, tx: Tx, sql: str) -> None:
        """Run several DDL statements inside ``tx`` (a migration)."""
        ...


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.db.execute(sql, tuple(params)).fetchall())

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, [tuple(p) for p in params])


class SqliteDatabase:
    """One SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # closing a WAL database's last connection checkpoints it: keep one per thread
        self._local = threading.local()
        # this process's writers queue here rather than in SQLite's busy handler, which sleeps
        # (1, 2, 5 ... 100 ms) between tries: measured, most of a loaded service's latency
        self._writer = threading.Lock()
        with self._connection() as db:
            db.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
                db.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as exc:
                raise FleetStoreError(f"the fleet database {self.path} cannot be opened: {exc}") from exc
            self._local.db = db
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            db.close()  # a broken connection is not reused
            self._local.db = None
            self._local.synchronous = ""
            raise FleetStoreError(
                f"the fleet database {self.path} failed ({exc}): check the disk, restore a backup"
            ) from exc

    @contextmanager
    def transaction(self, *, lock: str | None = None, durable: bool = True) -> Iterator[Tx]:
        del lock  # BEGIN IMMEDIATE already makes the whole database one writer at a time
        with self._writer, self._connection() as db:
            synchronous = "FULL" if durable else "NORMAL"
            if getattr(self._local, "synchronous", "") != synchronous:  # a statement saved
                db.execute(f"PRAGMA synchronous={synchronous}")
                self._local.synchronous = synchronous
            db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._connection() as db:
            yield _SqliteTx(db)

    def script(self, tx: Tx, sql: str) -> None:
        assert isinstance(tx, _SqliteTx)
        for statement in _statements(sql):
            tx.db.execute(statement)


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


_PASSWORD = re.compile(r"(^|\s)password\s*=|://[^/@:]*:[^/@]*@", re.IGNORECASE)


class PostgresDatabase:
    """A PostgreSQL database, by libpq connection string (no password in it)."""

    def __init__(self, conninfo: str) -> None:
        if _PASSWORD.search(conninfo):
            raise FleetStoreError(
                "the PostgreSQL connection string holds a password: put it in the service "
                "account's ~/.pgpass (or use peer authentication), never in the configuration"
            )
        try:
            import psycopg  # noqa: PLC0415  (only a centre running PostgreSQL needs it)
        except ImportError as exc:
            raise FleetStoreError(
                "PostgreSQL needs psycopg 3: install sdbox with its 'centre' extra"
            ) from exc
        self._psycopg = psycopg
        self.conninfo = conninfo
        self.name = _describe(conninfo)
        self._local = threading.local()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        psycopg = self._psycopg
        db = getattr(self._local, "db", None)
        if db is None or db.closed:
            try:
                db = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise FleetStoreError(
                    f"the fleet database {self.name} cannot be reached: {_first_line(exc)}"
                ) from exc
            self._local.db = db
        try:
            yield db
        except psycopg.OperationalError as exc:
            db.close()  # the server restarted or the link broke: reconnect next time
            self._local.db = None
            raise FleetStoreError(
                f"the fleet database {self.name} failed: {_first_line(exc)}; the request may be retried"
            ) from exc
        except psycopg.Error as exc:
            raise FleetStoreError(f"the fleet database {self.name} refused a statement: {_first_line(exc)}") from exc

    @contextmanager
    def transaction(self, *, lock: str | None = None, durable: bool = True) -> Iterator[Tx]:
        with self._connection() as db, db.transaction():
            tx = _PostgresTx(db)
            # one round trip for both (set_config(..., true) is SET LOCAL; durable: the
            # server's own setting is kept)
            if lock is not None:
                tx.execute(
                    "SELECT set_config('synchronous_commit', CASE WHEN ? THEN"
                    " current_setting('synchronous_commit') ELSE 'off' END, true),"
                    " pg_advisory_xact_lock(hashtext(?))",
                    (durable, lock),
                )
            elif not durable:
                tx.execute("SET LOCAL synchronous_commit = off")
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._connection() as db:
            yield _PostgresTx(db)

    def script(self, tx: Tx, sql: str) -> None:
        for statement in _statements(sql):
            tx.execute(statement)


class _PostgresTx:
    def __init__(self, db: Any) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.db.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), tuple(params))
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self.db.cursor() as cursor:  # psycopg 3 pipelines the rows: one round trip
            cursor.executemany(sql.replace("?", "%s"), [tuple(p) for p in params])


def _describe(conninfo: str) -> str:
    found = dict(re.findall(r"(\w+)\s*=\s*(\S+)", conninfo))
    return f"postgresql {found.get('dbname', '?')} on {found.get('host', 'the local socket')}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_database(sqlite_path: Path, postgres: str) -> Database:
    """PostgreSQL when a connection string is given, else the SQLite file."""
    if postgres:
        return PostgresDatabase(postgres)
    return SqliteDatabase(sqlite_path)
