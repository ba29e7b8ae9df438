"""A box checks in and ships its audit trail to the fleet service, through outages and resets.

Real parts: the fleet service (`sdbox fleet serve`, its own process, on
loopback), the box's `sdbox fleet report` command, and real systemd journal
files holding the box's audit events (written from journal export format by
Debian's systemd-journal-remote, since test machines run no journald). The box
identity is a development (software) key: the TPM path is the identity tests'.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.fleet.service import FleetServer
from sdbox.fleet.store import FleetStore
from tests.cli import sdbox_argv
from tests.fleet_env import FleetPki, SoftwareBox

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")

pytestmark = pytest.mark.skipif(
    not JOURNAL_REMOTE.exists(),
    reason="systemd-journal-remote is missing (make setup installs it: tier 'fleet')",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Journal:
    """The box's journal: audit events appended as real journal files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.files = 0
        self.written = 0

    def append(self, count: int, event: str = "card_inserted", **fields: str) -> None:
        """``count`` audit events (and one ordinary log line that must never leave the box)."""
        entries = []
        for _ in range(count):
            self.written += 1
            lines = [
                f"__REALTIME_TIMESTAMP={1_765_000_000_000_000 + self.written * 1000}",
                "_BOOT_ID=0123456789abcdef0123456789abcdef",
                f"MESSAGE={event}: event {self.written}",
                f"SDBOX_EVENT={event}",
                f"SDBOX_SEQ={self.written}",
                *(f"SDBOX_{k.upper()}={v}" for k, v in fields.items()),
            ]
            entries.append("\n".join(lines) + "\n")
        entries.append("__REALTIME_TIMESTAMP=1765000000000001\nMESSAGE=a researcher's secret\n")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.files += 1
        subprocess.run(
            [str(JOURNAL_REMOTE), f"--output={self.directory}/part{self.files:03d}.journal", "-"],
            # export format: every entry ends with an empty line, the last one too
            input=("\n".join(entries) + "\n").encode(), check=True, capture_output=True, timeout=30,
        )  # fmt: skip


class Service:
    """`sdbox fleet serve` in its own process."""

    def __init__(self, centre: FleetPki, root: Path) -> None:
        self.port = _free_port()
        self.database = root / "fleet.db"
        self.config = root / "fleet.toml"
        self.config.write_text(
            f'database = "{self.database}"\nanchors = "{centre.anchors}"\n'
            f'intermediates = "{centre.intermediates}"\ncrl_dir = "{centre.crl_dir}"\n'
            f'listen = "127.0.0.1:{self.port}"\nbundles = "{root / "bundles"}"\n'
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*sdbox_argv(), "fleet", "serve", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read().decode()  # type: ignore[union-attr]
                time.sleep(0.1)
        raise AssertionError("the fleet service did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


class Box:
    """A box's fleet configuration, identity and journal."""

    def __init__(self, identity: SoftwareBox, root: Path, url: str) -> None:
        self.identity = identity
        self.root = root
        certificate, key = identity.write(root / "identity")
        self.journal = Journal(root / "journal")
        agent = root / "agent.toml"
        agent.write_text(
            f'[identity]\nkind = "development"\ncertificate = "{certificate}"\nkey_file = "{key}"\n'
        )
        (root / "generation").write_text("qemu-q35\n")
        (root / "image-version").write_text("0.3.0+1765000000\n")
        self.config = root / "fleet.toml"
        self.config.write_text(
            f'url = "{url}"\nstate_dir = "{root / "state"}"\nagent_config = "{agent}"\n'
            f'journal_dir = "{self.journal.directory}"\nvici_socket = "{root / "no-charon.vici"}"\n'
            f'generation_file = "{root / "generation"}"\n'
            f'image_version_file = "{root / "image-version"}"\n'
        )

    def report(self) -> tuple[int, dict[str, object]]:
        done = subprocess.run(
            [*sdbox_argv(), "fleet", "report", "--config", str(self.config), "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode in (0, 75), done.stderr[-2000:]
        return done.returncode, json.loads(done.stdout)


@pytest.fixture
def centre(tmp_path: Path) -> FleetPki:
    return FleetPki(tmp_path / "centre")


@pytest.fixture
def service(centre: FleetPki, tmp_path: Path) -> Iterator[Service]:
    running = Service(centre, tmp_path)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_a_box_checks_in_and_ships_its_audit_trail(
    centre: FleetPki, service: Service, tmp_path: Path
) -> None:
    box = Box(centre.box("box-0042"), tmp_path / "box", service.url)
    box.journal.append(3, variant="multi-project-p256")
    box.journal.append(1, event="holder_failed", problem="wrong_finger")
    rc, first = box.report()
    assert rc == 0
    assert first["checkins_sent"] == 1
    # the first check-in aligns the numbering; the events follow in the same run
    assert first["audit_events_sent"] == 4
    status, page = service.get("/")
    assert status == 200
    assert "box-0042" in page
    assert "qemu-q35" in page
    status, page = service.get("/boxes/box-0042")
    assert status == 200
    assert "holder_failed" in page
    events = FleetStore(service.database).audit_events("box-0042")
    assert [e.fields["seq"] for e in events] == ["1", "2", "3", "4"]
    assert all("secret" not in json.dumps(e.fields) for e in events)  # only SDBOX_* fields left
    (row,) = FleetStore(service.database).boxes()
    assert row.problems == ("wrong_finger",)
    assert row.tunnel_state == "none"  # no charon on this box


def test_the_centre_away_loses_and_duplicates_nothing(
    centre: FleetPki, service: Service, tmp_path: Path
) -> None:
    box = Box(centre.box("box-0043"), tmp_path / "box", service.url)
    box.journal.append(2)
    assert box.report()[0] == 0
    service.stop()
    box.journal.append(3)
    for _ in range(3):  # three scheduled runs while the centre is down
        rc, outcome = box.report()
        assert rc == 75
        assert "cannot be reached" in str(outcome["error"])
    assert outcome["checkins_pending"] == 3
    service.start()
    box.journal.append(1)
    rc, outcome = box.report()
    assert rc == 0
    assert (outcome["checkins_sent"], outcome["checkins_pending"]) == (4, 0)
    assert outcome["audit_events_sent"] == 4
    events = FleetStore(service.database).audit_events("box-0043")
    assert [e.number for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.fields["seq"] for e in events] == ["1", "2", "3", "4", "5", "6"]


def test_a_box_whose_state_was_reset_carries_on_without_duplicates(
    centre: FleetPki, service: Service, tmp_path: Path
) -> None:
    box = Box(centre.box("box-0044"), tmp_path / "box", service.url)
    box.journal.append(2)
    assert box.report()[0] == 0
    shutil.rmtree(box.root / "state")  # a factory reset of the data partition ...
    shutil.rmtree(box.journal.directory)  # ... clears the journal too
    box.journal.files = 0
    box.journal.append(1)
    rc, outcome = box.report()
    assert rc == 0, outcome
    events = FleetStore(service.database).audit_events("box-0044")
    assert [e.number for e in events] == [1, 2, 3]  # the new event continues the numbering


def test_a_revoked_box_is_refused_and_told_why(
    centre: FleetPki, service: Service, tmp_path: Path
) -> None:
    box = Box(centre.box("box-0045"), tmp_path / "box", service.url)
    assert box.report()[0] == 0
    centre.pki.revoke(box.identity.certificate, x509.ReasonFlags.key_compromise)
    centre.refresh_crls()
    rc, outcome = box.report()
    assert rc == 75
    assert "revoked" in str(outcome["error"])
    assert outcome["checkins_pending"] == 1  # kept: an operator may reinstate the box


def test_malformed_and_oversized_requests_are_refused_and_the_service_keeps_serving(
    service: Service,
) -> None:
    for body, status in [(b"{not json", 400), (b"[]", 400), (b"x" * (300 * 1024), 413)]:
        request = urllib.request.Request(
            service.url + "/v1/checkin", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status
    assert service.get("/")[0] == 200
    assert service.get("/boxes/nobody")[0] == 404


def _fleet_cli(service: Service, *args: str) -> str:
    """`sdbox fleet <command> [<sub>] --config <the service's> <args>`."""
    split = 2 if args[0] == "rollout" else 1
    done = subprocess.run(
        [*sdbox_argv(), "fleet", *args[:split], "--config", str(service.config), *args[split:]],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def test_a_rollout_reaches_its_first_ring_and_pauses_on_a_failed_update(
    centre: FleetPki, service: Service, tmp_path: Path
) -> None:
    bundle = tmp_path / "sdbox-qemu-q35-0.4.0.raucb"
    bundle.write_bytes(os.urandom(300_000))  # the service never opens it: the box's RAUC does
    digest = _fleet_cli(service, "publish", str(bundle), "--version", "0.4.0+1766000000").strip()
    assert len(digest) == 64
    ring = [Box(centre.box(f"box-00{n}"), tmp_path / f"box{n}", service.url) for n in (50, 51)]
    outside = Box(centre.box("box-0099"), tmp_path / "box99", service.url)
    _fleet_cli(service, "rollout", "create", "--bundle", digest, "--ring", "box-0050,box-0051",
               "--steps", "50,100", "--pause-above", "0.4")  # fmt: skip
    offers = [b.report()[1]["update"] for b in (*ring, outside)]
    assert offers[2] is None  # not in the ring, stage 0
    for offer in offers[:2]:
        assert offer == {"version": "0.4.0+1766000000", "sha256": digest, "path": f"/v1/bundles/{digest}"}
    # the offered bundle is what was published, byte for byte
    with urllib.request.urlopen(f"{service.url}/v1/bundles/{digest}", timeout=10) as answer:
        assert answer.read() == bundle.read_bytes()
    # box 50 boots into the new image; box 51 fell back (RAUC) and says so
    (ring[0].root / "image-version").write_text("0.4.0+1766000000\n")
    assert ring[0].report()[1]["update"] is None
    progress = json.loads(_fleet_cli(service, "rollout", "status", "--json"))
    assert (progress["installed"], progress["failed"], progress["rollout"]["state"]) == (1, 0, "running")
    ring[1].journal.append(1, event="agent_started", problem="update_failed:0.4.0+1766000000")
    ring[1].report()
    progress = json.loads(_fleet_cli(service, "rollout", "status", "--json"))
    assert (progress["installed"], progress["failed"]) == (1, 1)
    assert progress["rollout"]["state"] == "paused"  # 1 of 2 failed: above 40 %
    _fleet_cli(service, "rollout", "advance")
    assert outside.report()[1]["update"] is None  # paused: nobody new is offered it
    assert service.get("/v1/bundles/" + "0" * 64)[0] == 404
    status, page = service.get("/rollout")
    assert status == 200
    assert "paused" in page


def test_diagnostics_reach_the_box_page_with_sdbox_lines_only(
    centre: FleetPki, service: Service, tmp_path: Path
) -> None:
    box = Box(centre.box("box-0060"), tmp_path / "box", service.url)
    lines = "\n".join(
        f"__REALTIME_TIMESTAMP={1_765_000_000_000_000 + n}\n_BOOT_ID=0123456789abcdef0123456789abcdef\n"
        f"_SYSTEMD_UNIT={unit}\nMESSAGE={text}\n"
        for n, (unit, text) in enumerate([
            ("sdbox-agent.service", "the centre cannot be reached: gateway refused the box"),
            ("cron.service", "an unrelated unit's line"),
            ("sdbox-greeter.service", "greeter connected to the agent"),
        ])
    )  # fmt: skip
    box.journal.directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(JOURNAL_REMOTE), f"--output={box.journal.directory}/units.journal", "-"],
        input=(lines + "\n").encode(), check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    done = subprocess.run(
        [*sdbox_argv(), "fleet", "diagnostics", "--config", str(box.config),
         "--reason", "ticket 4711", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    sent = json.loads(done.stdout)
    assert {"versions", "network", "tunnel", "journal (sdbox units)"} <= set(sent["sections"])
    status, page = service.get("/boxes/box-0060")
    assert status == 200
    assert "ticket 4711" in page
    status, page = service.get(f"/boxes/box-0060/diagnostics/{sent['accepted']}")
    assert status == 200
    assert "gateway refused the box" in page
    assert "greeter connected" in page
    assert "unrelated unit" not in page
    assert "qemu-q35" in page  # the versions section


def test_over_tls_a_silent_connection_does_not_hold_up_the_boxes(
    centre: FleetPki, tmp_path: Path
) -> None:
    """The TLS handshake runs in a worker, with a time limit: a client that connects and says
    nothing (a scanner, a stalled box) cannot stop the others checking in."""
    key = ec.generate_private_key(ec.SECP256R1())
    chain, key_file = tmp_path / "tls.pem", tmp_path / "tls-key.pem"
    chain.write_bytes(
        centre.pki.issue_server("127.0.0.1", key.public_key()).public_bytes(serialization.Encoding.PEM)
        + centre.pki.server_ca.cert.public_bytes(serialization.Encoding.PEM)
    )
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    config = replace(centre.config(tmp_path / "fleet.db"), tls_certificate=str(chain),
                     tls_key=str(key_file), workers=2)  # fmt: skip
    server = FleetServer(config)
    server.start()
    try:
        host, port = server.httpd.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=5):  # connects, never says hello
            box = Box(centre.box("box-0080"), tmp_path / "box", server.url)
            with box.config.open("a") as config_file:
                config_file.write(f'ca_bundle = "{centre.anchors}"\n')
            rc, outcome = box.report()
        assert rc == 0, outcome
        assert outcome["checkins_sent"] == 1
        assert server.url.startswith("https://")
    finally:
        server.stop()
