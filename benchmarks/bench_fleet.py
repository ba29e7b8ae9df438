"""The fleet service under a simulated fleet: check-ins per second, latency, database growth.

One `sdbox fleet serve` process (SQLite) on loopback; simulated boxes (real
certificates from a throw-away box-identity CA, software keys) send signed
check-ins from a pool of client threads in this process, as fast as the
service answers. 10,000 boxes checking in every five minutes need 33.3
check-ins per second; the target is ten times that. Reported: sustained rate,
p50/p99 latency, and the database's size per box per month (a check-in every
five minutes and 50 audit events a day; the history the service keeps per box
is bounded, so the size levels off: the figure is the steady state).
"""

from __future__ import annotations

import http.client
import os
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.centre.fleet import AuditRecord, CertificateExpiry, Envelope, Report, canonical
from tests.fleet_env import POSTGRES_BIN, FleetPki, PostgresCluster, SoftwareBox

BOXES = 10_000
NEEDED_PER_S = BOXES / 300
TARGET_PER_S = 10 * NEEDED_PER_S
SIMULATED = 400  # distinct box identities on the wire (certificates are the slow part to make)
DURATION_S = 20.0
CLIENTS = 16
REPORT = Report(
    version="0.3.0", image_version="0.3.0+1765000000", slot="a", generation="nuc-g1",
    uptime_s=3600, tunnel_state="up", tunnel_gateway="198.51.100.1",
    certificates=(CertificateExpiry("box-identity", "2027-12-01T00:00:00+00:00"),),
    card_variants=("multi-project-p256",), problems=(),
)  # fmt: skip


def _request(box: SoftwareBox, sequence: int, kind: str, body: dict[str, Any]) -> bytes:
    envelope = Envelope(
        kind=kind, sequence=sequence, sent=datetime.now(UTC).isoformat(timespec="seconds"),
        box_certificate=box.certificate.public_bytes(serialization.Encoding.DER), body=body,
    )  # fmt: skip
    return canonical(replace(envelope, signature=box.sign(envelope.signed_bytes())).to_json())


def _post(port: int, path: str, data: bytes, tls: ssl.SSLContext | None = None) -> int:
    connection = (
        http.client.HTTPSConnection("127.0.0.1", port, timeout=30, context=tls)
        if tls is not None
        else http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    )
    try:
        connection.request("POST", path, data, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _tls_files(root: Path, centre: FleetPki) -> tuple[Path, Path]:
    """The service's TLS certificate (P-256, from the centre's server CA, with its chain) and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_file = root / "tls.pem", root / "tls-key.pem"
    pem = serialization.Encoding.PEM
    chain.write_bytes(centre.pki.issue_server("127.0.0.1", key.public_key()).public_bytes(pem)
                      + centre.pki.server_ca.cert.public_bytes(pem))  # fmt: skip
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return chain, key_file


def _serve(
    root: Path, centre: FleetPki, port: int, postgres: str, tls: bool = False
) -> subprocess.Popen[bytes]:
    config = root / "fleet.toml"
    text = (
        f'database = "{root / "fleet.db"}"\nanchors = "{centre.anchors}"\n'
        f'intermediates = "{centre.intermediates}"\ncrl_dir = "{centre.crl_dir}"\n'
        f'listen = "127.0.0.1:{port}"\npostgres = "{postgres}"\n'
    )
    if tls:
        chain, key_file = _tls_files(root, centre)
        text += f'tls_certificate = "{chain}"\ntls_key = "{key_file}"\n'
    config.write_text(text)
    sdbox = Path(sys.executable).parent / "sdbox"
    argv = [str(sdbox)] if sdbox.exists() else [sys.executable, "-m", "sdbox"]
    process = subprocess.Popen([*argv, "fleet", "serve", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the fleet service did not start")


def _db_bytes(database: Path, postgres: str) -> int:
    """The database's size (SQLite: with its write-ahead log folded in)."""
    if postgres:
        import psycopg

        with psycopg.connect(postgres) as db:
            row = db.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) if row else 0
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return database.stat().st_size


def run() -> dict[str, object]:
    """Print and return the figures (targets alongside, never asserted): SQLite, then PostgreSQL."""
    figures: dict[str, object] = {"sqlite": _measure("")}
    print()
    figures["sqlite_tls"] = _measure("", tls=True)
    if not (POSTGRES_BIN / "initdb").exists():
        print("\nPostgreSQL: not measured (Debian's postgresql-15 is not installed)")
        return {"figures": figures, "targets": {"checkins_per_s": TARGET_PER_S}}
    cluster = PostgresCluster()
    try:
        cluster.start()
        print()
        figures["postgresql"] = _measure(cluster.conninfo)
    finally:
        cluster.remove()
    return {"figures": figures, "targets": {"checkins_per_s": TARGET_PER_S}}


def _measure(postgres: str, *, tls: bool = False) -> dict[str, float]:
    """One run against SQLite ('') or the PostgreSQL connection string; over TLS if asked
    (a handshake per check-in: a box opens a connection for each)."""
    database = "PostgreSQL 15 (private cluster, fsync off)" if postgres else "SQLite (WAL)"
    print(f"database: {database}{', over TLS (P-256 certificate)' if tls else ''}")
    with tempfile.TemporaryDirectory(prefix="sdbox-bench-fleet-") as tmp:
        root = Path(tmp)
        centre = FleetPki(root / "centre")
        boxes = [centre.box(f"bench-{i:05d}") for i in range(SIMULATED)]
        port = 20000 + os.getpid() % 20000
        service = _serve(root, centre, port, postgres, tls)
        client_tls = ssl.create_default_context(cafile=str(centre.anchors)) if tls else None
        try:
            sequences = dict.fromkeys(range(SIMULATED), 0)
            lock = threading.Lock()
            latencies: list[float] = []
            failures = 0
            stop = time.monotonic() + DURATION_S

            def one_box(index: int) -> None:
                nonlocal failures
                while time.monotonic() < stop:
                    with lock:
                        sequences[index] += 1
                        sequence = sequences[index]
                    data = _request(boxes[index], sequence, "checkin", REPORT.to_json())
                    began = time.perf_counter()
                    status = _post(port, "/v1/checkin", data, client_tls)
                    with lock:
                        latencies.append(time.perf_counter() - began)
                        failures += status != 200

            began = time.monotonic()
            with ThreadPoolExecutor(CLIENTS) as pool:
                for worker in range(CLIENTS):
                    pool.submit(one_box, worker)
            elapsed = time.monotonic() - began
            rate = len(latencies) / elapsed
            after_checkins = _db_bytes(root / "fleet.db", postgres)
            # audit shipping: one batch of 50 events per box, the same signed path
            audit_began = time.perf_counter()
            for index in range(SIMULATED):
                events = {"events": [AuditRecord(n, n, "card_inserted", {"reader": "r"}).to_json()
                                     for n in range(1, 51)]}  # fmt: skip
                sequences[index] += 1
                _post(port, "/v1/audit", _request(boxes[index], sequences[index], "audit", events),
                      client_tls)
            audit_per_s = SIMULATED * 50 / (time.perf_counter() - audit_began)
        finally:
            service.terminate()
            service.wait(10)
        after_audit = _db_bytes(root / "fleet.db", postgres)
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000 if ordered else float("nan")
    per_checkin = after_checkins / max(1, len(latencies))
    per_event = max(0, after_audit - after_checkins) / (SIMULATED * 50)
    # steady state: the service keeps 200 check-ins per box (HISTORY_KEPT); a month of
    # audit events at 50 a day
    per_box_month = 200 * per_checkin + 30 * 50 * per_event
    figures = {
        "checkins_per_s": rate,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99_ms": p99,
        "failures": failures,
        "audit_events_per_s": audit_per_s,
        "bytes_per_checkin": per_checkin,
        "bytes_per_audit_event": per_event,
        "db_bytes_per_box_month": per_box_month,
    }
    print(f"simulated boxes on the wire   {SIMULATED} (client threads {CLIENTS}, {DURATION_S:.0f} s)")
    print(f"check-ins per second          {rate:10.1f}   needed {NEEDED_PER_S:.1f} "
          f"(10,000 boxes / 5 min), target ≥ {TARGET_PER_S:.0f}")  # fmt: skip
    print(f"latency p50 / p99             {figures['p50_ms']:7.1f} / {p99:.1f} ms")
    print(f"failed requests               {failures}")
    print(f"audit events per second       {audit_per_s:10.1f}   (batches of 50)")
    print(f"database per box per month    {per_box_month / 1024:10.1f} KiB "
          f"({per_checkin:.0f} B per check-in, 200 kept; {per_event:.0f} B per audit event, 1,500)")
    return figures
