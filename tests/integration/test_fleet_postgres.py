"""The fleet service on PostgreSQL: the same records, several writers, a database restart.

A private cluster of Debian's PostgreSQL 15 (initdb in a temporary directory,
run as the postgres account, its socket in that directory, TCP off).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sdbox.fleet.db import FleetStoreError
from sdbox.fleet.service import Fleet, Refused
from sdbox.fleet.store import BoxFilter
from tests.fleet_env import POSTGRES_BIN, FleetPki, PostgresCluster
from tests.unit.test_fleet import REPORT, events, request

pytestmark = pytest.mark.skipif(
    not (POSTGRES_BIN / "initdb").exists(), reason="PostgreSQL 15 is missing (apt: postgresql-15)"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    running = PostgresCluster()
    try:
        running.start()
        yield running
    finally:
        running.remove()


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    return FleetPki(tmp_path_factory.mktemp("fleet-pg"))


@pytest.fixture
def fleet(centre: FleetPki, cluster: PostgresCluster, tmp_path: Path) -> Fleet:
    return Fleet(centre.config(tmp_path / "unused.db", postgres=cluster.conninfo))


def test_check_ins_and_audit_events_are_kept_once(fleet: Fleet, centre: FleetPki) -> None:
    box = centre.box()
    assert fleet.handle(request(box, 1, "checkin", REPORT.to_json()))["accepted"] == 1
    assert fleet.handle(request(box, 2, "audit", events(1, 3)))["audit_through"] == 3
    assert fleet.handle(request(box, 3, "audit", events(2, 4)))["audit_through"] == 5
    assert [r.number for r in fleet.store.audit_events(box.box_id)] == [1, 2, 3, 4, 5]
    (row,) = [b for b in fleet.store.boxes(BoxFilter(problem="wrong_finger")) if b.box_id == box.box_id]
    assert (row.generation, row.audit_through) == ("qemu-q35", 5)
    with pytest.raises(Refused, match="not newer"):
        fleet.handle(request(box, 2, "checkin", REPORT.to_json()))


def test_concurrent_requests_of_one_box_cannot_both_take_a_sequence(
    fleet: Fleet, centre: FleetPki
) -> None:
    box = centre.box()
    # two service threads get requests 1..20 of the same box in any order: every
    # sequence is accepted at most once, and the last one accepted is the highest
    requests = [request(box, n, "checkin", REPORT.to_json()) for n in range(1, 21)]

    def send(raw: dict[str, object]) -> int:
        try:
            return int(fleet.handle(raw)["accepted"])
        except Refused:
            return 0

    with ThreadPoolExecutor(4) as pool:
        accepted = [n for n in pool.map(send, requests) if n]
    assert len(accepted) == len(set(accepted))
    assert accepted == sorted(accepted)  # each admitted one was newer than the one before
    with fleet.store.db.read() as tx:
        ((last,),) = tx.execute("SELECT last_sequence FROM boxes WHERE box_id = ?", (box.box_id,))
    assert last == max(accepted)


def test_a_database_restart_fails_the_request_in_flight_and_the_next_one_succeeds(
    fleet: Fleet, centre: FleetPki, cluster: PostgresCluster
) -> None:
    box = centre.box()
    fleet.handle(request(box, 1, "checkin", REPORT.to_json()))
    cluster.stop()
    try:
        with pytest.raises(FleetStoreError, match="fleet database"):
            fleet.handle(request(box, 2, "audit", events(1, 2)))
    finally:
        cluster.start(init=False)
    # the box retries the same events under a new sequence: nothing lost, nothing twice
    assert fleet.handle(request(box, 3, "audit", events(1, 2)))["audit_through"] == 2
    assert [r.number for r in fleet.store.audit_events(box.box_id)] == [1, 2]


def test_a_password_in_the_connection_string_is_refused(centre: FleetPki, tmp_path: Path) -> None:
    for conninfo in ("host=/tmp dbname=fleet password=hunter2", "postgresql://fleet:hunter2@db/fleet"):
        with pytest.raises(FleetStoreError, match="pgpass"):
            Fleet(centre.config(tmp_path / "unused.db", postgres=conninfo))
