"""The fleet protocol and service logic: who may report, replays, exactly-once audit, bad input."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.centre.checkin import backoff_s
from sdbox.centre.fleet import (
    MAX_EVENTS_PER_BATCH,
    AuditRecord,
    CertificateExpiry,
    Envelope,
    FleetProtocolError,
    Report,
    parse_audit_batch,
    parse_envelope,
    parse_report,
)
from sdbox.fleet import store
from sdbox.fleet.service import Fleet, Refused
from sdbox.fleet.store import BoxFilter
from tests.fleet_env import FleetPki, SoftwareBox

REPORT = Report(
    version="0.3.0", image_version="0.3.0+1765000000", slot="a", generation="qemu-q35",
    uptime_s=42, tunnel_state="up", tunnel_gateway="192.0.2.1",
    certificates=(CertificateExpiry("box-identity", "2027-12-01T00:00:00+00:00"),),
    card_variants=("multi-project-p256",), problems=("wrong_finger",),
)  # fmt: skip


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> FleetPki:
    return FleetPki(tmp_path_factory.mktemp("fleet"))


@pytest.fixture
def fleet(centre: FleetPki, tmp_path: Path) -> Fleet:
    return Fleet(centre.config(tmp_path / "fleet.db"))


def request(box: SoftwareBox, sequence: int, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    envelope = Envelope(
        kind=kind, sequence=sequence, sent=datetime.now(UTC).isoformat(),
        box_certificate=box.certificate.public_bytes(serialization.Encoding.DER), body=body,
    )  # fmt: skip
    return replace(envelope, signature=box.sign(envelope.signed_bytes())).to_json()


def events(first: int, count: int) -> dict[str, Any]:
    return {
        "events": [
            AuditRecord(n, 1_765_000_000_000_000 + n, "card_inserted", {"reader": "r1"}).to_json()
            for n in range(first, first + count)
        ]
    }


def test_a_check_in_is_listed_with_what_an_operator_filters_on(fleet: Fleet, centre: FleetPki) -> None:
    box = centre.box()
    assert fleet.handle(request(box, 1, "checkin", REPORT.to_json())) == {
        "accepted": 1,
        "audit_through": 0,
    }
    (row,) = fleet.store.boxes()
    assert (row.box_id, row.version, row.generation, row.tunnel_state) == (
        box.box_id, "0.3.0", "qemu-q35", "up",
    )  # fmt: skip
    assert row.problems == ("wrong_finger",)
    assert fleet.store.boxes(BoxFilter(problem="wrong_finger")) == [row]
    assert fleet.store.boxes(BoxFilter(version="0.2.0")) == []
    assert fleet.store.boxes(BoxFilter(silent_for_s=3600)) == []  # it was just seen
    assert fleet.store.expiring(within_days=100_000) == [
        (box.box_id, "box-identity", "2027-12-01T00:00:00+00:00")
    ]


def test_the_box_id_comes_from_the_certificate_not_the_body(fleet: Fleet, centre: FleetPki) -> None:
    box = centre.box("box-real")
    body = {**REPORT.to_json(), "box_id": "box-someone-else"}
    fleet.handle(request(box, 1, "checkin", body))
    assert [b.box_id for b in fleet.store.boxes()] == ["box-real"]


def test_a_request_signed_by_another_key_is_refused(fleet: Fleet, centre: FleetPki) -> None:
    box, other = centre.box(), centre.box()
    forged = request(replace(other, certificate=box.certificate), 1, "checkin", REPORT.to_json())
    with pytest.raises(Refused, match="not signed by the box's key") as refused:
        fleet.handle(forged)
    assert refused.value.status == 403
    assert fleet.store.boxes() == []


def test_a_box_from_another_centre_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    stranger = FleetPki(tmp_path / "other").box()
    with pytest.raises(Refused, match="not recognised") as refused:
        fleet.handle(request(stranger, 1, "checkin", REPORT.to_json()))
    assert refused.value.code == "box_identity"


def test_a_revoked_box_is_refused(tmp_path: Path) -> None:
    centre = FleetPki(tmp_path / "centre")
    fleet = Fleet(centre.config(tmp_path / "fleet.db"))
    box = centre.box()
    fleet.handle(request(box, 1, "checkin", REPORT.to_json()))
    centre.pki.revoke(box.certificate, x509.ReasonFlags.key_compromise)
    centre.refresh_crls()
    with pytest.raises(Refused, match="revoked"):
        fleet.handle(request(box, 2, "checkin", REPORT.to_json()))


def test_a_replayed_request_is_refused_and_a_retry_gets_the_same_answer(
    fleet: Fleet, centre: FleetPki
) -> None:
    box = centre.box()
    first = request(box, 1, "checkin", REPORT.to_json())
    fleet.handle(first)
    second = request(box, 2, "checkin", REPORT.to_json())
    fleet.handle(second)
    assert fleet.handle(second)["accepted"] == 2  # the same request again: the same answer
    with pytest.raises(Refused, match="not newer") as replayed:
        fleet.handle(first)
    assert (replayed.value.status, replayed.value.extra) == (409, {"last_sequence": 2})
    other = {**REPORT.to_json(), "uptime_s": 1}
    with pytest.raises(Refused, match="not newer"):  # another request under a used number
        fleet.handle(request(box, 2, "checkin", other))


def test_audit_events_are_stored_once_in_order(fleet: Fleet, centre: FleetPki) -> None:
    box = centre.box()
    assert fleet.handle(request(box, 1, "audit", events(1, 3)))["audit_through"] == 3
    # the box rebooted before saving the answer: it sends 2..5 again under a new sequence
    assert fleet.handle(request(box, 2, "audit", events(2, 4)))["audit_through"] == 5
    assert [r.number for r in fleet.store.audit_events(box.box_id)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"events": []}, "non-empty list"),
        ({"events": [{"number": 0, "realtime_us": 1, "event": "x"}]}, "'number'"),
        (events(1, MAX_EVENTS_PER_BATCH + 1), "at most"),
        ({"events": [*events(1, 1)["events"], *events(3, 1)["events"]]}, "consecutively"),
        ({"events": [{"number": 1, "realtime_us": 1, "event": "x", "fields": {"k": 1}}]}, "short text"),
    ],
)
def test_a_malformed_audit_batch_names_its_problem(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(FleetProtocolError, match=problem):
        parse_audit_batch(body)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"version": ""}, "'version' must not be empty"),
        ({"uptime_s": -1}, "'uptime_s'"),
        ({"uptime_s": True}, "'uptime_s'"),
        ({"problems": ["x"] * 65}, "more than 64"),
        ({"certificates": [{"role": "box", "not_after": "yesterday"}]}, "ISO 8601"),
        ({"generation": "g" * 600}, "longer than"),
    ],
)
def test_a_malformed_report_names_its_field(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(FleetProtocolError, match=problem):
        parse_report({**REPORT.to_json(), **change})


def test_a_malformed_envelope_is_refused_before_any_certificate_work(fleet: Fleet) -> None:
    for raw, problem in [
        ([], "not a JSON object"),
        ({"version": "sdbox-fleet/0"}, "'version'"),
        ({"version": "sdbox-fleet/1", "kind": "delete", "body": {}}, "'kind'"),
    ]:
        with pytest.raises(FleetProtocolError, match=problem):
            parse_envelope(raw)
        with pytest.raises(Refused, match=problem):
            fleet.handle(raw)


def test_backoff_grows_with_failures_and_stays_under_the_interval() -> None:
    waits = [backoff_s(n, 300, rng=lambda: 1.0) for n in range(6)]
    assert waits == [300, 15, 30, 60, 120, 240]
    assert backoff_s(20, 300, rng=lambda: 0.0) == 150  # capped at the interval, jitter from half


def test_the_report_as_sent_has_every_field_of_the_report() -> None:
    # to_json is written by hand for speed: a field added to Report must not be left out
    assert REPORT.to_json() == json.loads(json.dumps(asdict(REPORT)))


def test_a_renewed_certificate_leaves_the_expiring_list_and_history_is_bounded(
    fleet: Fleet, centre: FleetPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "HISTORY_KEPT", 3)
    box = centre.box()
    soon = replace(REPORT, certificates=(CertificateExpiry("box-identity", "2026-01-02T00:00:00+00:00"),))
    fleet.handle(request(box, 1, "checkin", soon.to_json()))
    assert [role for b, role, _ in fleet.store.expiring(30) if b == box.box_id] == ["box-identity"]
    fleet.handle(request(box, 2, "checkin", REPORT.to_json()))  # renewed: expires in 2027
    fleet.handle(request(box, 3, "checkin", REPORT.to_json()))  # the same again: nothing rewritten
    assert [b for b, _, _ in fleet.store.expiring(30)].count(box.box_id) == 0
    for sequence in (4, 5, 6):
        fleet.handle(request(box, sequence, "checkin", REPORT.to_json()))
    found = fleet.store.box(box.box_id)
    assert found is not None
    assert [h["sequence"] for h in found[1]] == [6, 5, 4]  # the newest HISTORY_KEPT
