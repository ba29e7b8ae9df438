"""Staged updates: who is offered what, when a rollout pauses, and the box's download and reboot rules."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import datetime, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sdbox.centre.updates import Offer, UpdateError, Updater, in_window, parse_window
from sdbox.fleet import rollouts
from sdbox.fleet.db import SqliteDatabase
from sdbox.fleet.store import FleetStore

BUNDLE = b"a signed RAUC bundle, as far as these tests care" * 1000
SHA = hashlib.sha256(BUNDLE).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> FleetStore:
    return FleetStore(SqliteDatabase(tmp_path / "fleet.db"))


def _published(store: FleetStore, tmp_path: Path, ring: list[str], steps: list[int]) -> rollouts.Rollout:
    source = tmp_path / "b.raucb"
    source.write_bytes(BUNDLE)
    with store.transaction() as tx:
        digest = rollouts.publish(tx, tmp_path / "bundles", source, "0.4.0+1")
        return rollouts.create(tx, digest, ring, steps, 0.25)


def _offers(store: FleetStore, boxes: list[str], version: str = "0.3.0+1") -> set[str]:
    offered = set()
    with store.transaction() as tx:
        for box in boxes:
            if rollouts.on_checkin(tx, box, version, ()) is not None:
                offered.add(box)
    return offered


def test_buckets_are_stable_spread_and_differ_between_rollouts() -> None:
    boxes = [f"box-{n:05d}" for n in range(2000)]
    first = [rollouts.bucket(1, b) for b in boxes]
    assert first == [rollouts.bucket(1, b) for b in boxes]
    assert 150 <= sum(b < 10 for b in first) <= 250  # about 10 % of 2000
    assert first != [rollouts.bucket(2, b) for b in boxes]  # a new rollout, a new first 10 %


def test_stages_offer_the_ring_then_growing_percentages(store: FleetStore, tmp_path: Path) -> None:
    fleet = [f"box-{n:04d}" for n in range(1000)]
    _published(store, tmp_path, ["box-0007"], [10, 50, 100])
    assert _offers(store, fleet) == {"box-0007"}
    with store.transaction() as tx:
        rollouts.set_stage(tx, advance=True)
    ten = _offers(store, fleet)
    assert 60 <= len(ten) <= 140
    assert "box-0007" in ten
    with store.transaction() as tx:
        rollouts.set_stage(tx, advance=True)
    fifty = _offers(store, fleet)
    assert ten <= fifty  # raising the percentage only adds boxes
    assert 400 <= len(fifty) <= 600
    assert _offers(store, fleet, version="0.4.0+1") == set()  # boxes already on it: nothing


def test_a_failed_update_pauses_the_rollout_and_nobody_new_is_offered_it(
    store: FleetStore, tmp_path: Path
) -> None:
    _published(store, tmp_path, ["a", "b", "c", "d"], [100])
    assert _offers(store, ["a", "b", "c", "d"]) == {"a", "b", "c", "d"}
    with store.transaction() as tx:
        rollouts.on_checkin(tx, "a", "0.4.0+1", ())
        rollouts.on_checkin(tx, "b", "0.3.0+1", ("update_failed:0.4.0+1",))
        progress = rollouts.progress(tx)
    assert progress is not None
    assert (progress.installed, progress.failed, progress.rollout.state) == (1, 1, "paused")
    assert _offers(store, ["c", "e"]) == set()
    with store.transaction() as tx:
        rollouts.set_stage(tx, state="running")
    assert _offers(store, ["c"]) == {"c"}


def test_rollouts_refuse_what_cannot_be_done(store: FleetStore, tmp_path: Path) -> None:
    with store.transaction() as tx, pytest.raises(rollouts.RolloutError, match="publish it first"):
        rollouts.create(tx, "0" * 64, [], [10], 0.1)
    with store.transaction() as tx, pytest.raises(rollouts.RolloutError, match="no rollout"):
        rollouts.set_stage(tx, advance=True)
    with pytest.raises(rollouts.RolloutError, match="rising percentages"):
        _published(store, tmp_path, [], [50, 10])


@pytest.fixture
def bundle_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def do_GET(self) -> None:
            body = BUNDLE if self.path == f"/v1/bundles/{SHA}" else BUNDLE[:-1] + b"!"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_box_installs_the_offered_bundle_once_and_judges_it_after_the_reboot(
    bundle_server: str, tmp_path: Path
) -> None:
    installed: list[bytes] = []
    updater = Updater(bundle_server, tmp_path, install=lambda p: installed.append(p.read_bytes()))
    offer = Offer.parse({"version": "0.4.0+1", "sha256": SHA, "path": f"/v1/bundles/{SHA}"})
    assert offer is not None
    updater.apply(offer)
    updater.apply(offer)  # offered again before the reboot: not installed twice
    assert installed == [BUNDLE]
    assert list((tmp_path / "updates").glob("*.raucb")) == []  # the bundle is not kept
    assert Updater(bundle_server, tmp_path, install=print).after_boot("0.3.0+1") == [
        "update_failed:0.4.0+1"
    ]
    assert updater.pending() is None


def test_a_bundle_that_does_not_match_its_hash_is_discarded(bundle_server: str, tmp_path: Path) -> None:
    other = hashlib.sha256(b"x").hexdigest()
    updater = Updater(bundle_server, tmp_path, install=lambda p: pytest.fail("installed"))
    with pytest.raises(UpdateError, match="does not have the offered SHA-256"):
        updater.apply(Offer("0.4.0+1", other, f"/v1/bundles/{other}"))
    assert list((tmp_path / "updates").iterdir()) == []
    assert updater.pending() is None


def test_offers_from_elsewhere_are_ignored() -> None:
    assert Offer.parse({"version": "1", "sha256": SHA, "path": "http://evil.example/x"}) is None
    assert Offer.parse({"version": "1", "sha256": "zz", "path": "/v1/bundles/zz"}) is None
    assert Offer.parse("update") is None


def test_the_box_reboots_only_without_a_card_and_inside_its_window(tmp_path: Path) -> None:
    updater = Updater("http://127.0.0.1:9", tmp_path, install=lambda p: None)
    night = parse_window("23:00-05:00")
    at_2 = datetime(2026, 12, 8, 2, 0)
    assert in_window(at_2, night)
    assert not in_window(datetime(2026, 12, 8, 14, 0), night)
    assert in_window(datetime(2026, 12, 8, 3, 0), (time(1), time(5)))
    assert not updater.reboot_due(at_2, night, card_present=False)  # nothing installed
    (tmp_path / "updates" / "pending.json").write_text('{"version": "0.4.0+1"}')
    assert updater.reboot_due(at_2, night, card_present=False)
    assert not updater.reboot_due(at_2, night, card_present=True)
    with pytest.raises(UpdateError, match="HH:MM-HH:MM"):
        parse_window("tonight")
