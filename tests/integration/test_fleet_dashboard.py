"""An operator uses the fleet dashboard in a real headless browser.

Real parts: `sdbox fleet serve` (its own process, on loopback), boxes with
real certificates under the centre's box-identity CA (one through the box's
own `sdbox fleet report` and `sdbox fleet diagnostics`, the others as signed
requests with the versions, generations and problems of a mixed fleet), and
Chromium (`make browser`) driven over the DevTools protocol: the operator
types into the filter form, clicks links and reads the page. Screenshots go
to build/fleet-dashboard/ (the README shows one).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sdbox.centre.fleet import CertificateExpiry, Report, canonical
from tests.browser import ROOT, Browser, unavailable
from tests.cli import sdbox_argv
from tests.fleet_env import FleetPki, SoftwareBox
from tests.integration.test_fleet import JOURNAL_REMOTE, Box, Service, _fleet_cli
from tests.unit.test_fleet import request

SHOTS = ROOT / "build" / "fleet-dashboard"

pytestmark = [
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.skipif(not JOURNAL_REMOTE.exists(), reason="systemd-journal-remote is missing"),
]


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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(tmp_path / "chromium-profile")
    try:
        yield opened
    finally:
        opened.close()


def _in(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


def _check_in(service: Service, box: SoftwareBox, sequence: int, report: Report) -> dict[str, Any]:
    """One signed check-in, as the box's reporter sends it."""
    data = canonical(request(box, sequence, "checkin", report.to_json()))
    sent = urllib.request.Request(
        service.url + "/v1/checkin", data=data, method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(sent, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


def _report(version: str, generation: str, tunnel: str, *problems: str, expires_in: int = 400) -> Report:
    return Report(
        version=version, image_version=f"{version}+1765000000", slot="a", generation=generation,
        uptime_s=3600, tunnel_state=tunnel, tunnel_gateway="198.51.100.1",
        tunnel_reason="gateway_refused_box" if tunnel == "refused" else "",
        certificates=(CertificateExpiry("box-identity", _in(expires_in)),),
        card_variants=("multi-project-p256",), problems=problems,
    )  # fmt: skip


def _rows(browser: Browser) -> list[str]:
    """The box ids the list shows, top to bottom."""
    found = browser.evaluate("[...document.querySelectorAll('table tr td:first-child a')].map(a => a.innerText)")
    return [str(box) for box in found]


def test_an_operator_filters_the_fleet_opens_a_box_and_sees_certificates_and_the_rollout(
    centre: FleetPki, service: Service, browser: Browser, tmp_path: Path
) -> None:
    # the lab box runs the box's own commands: audit trail from its journal, a diagnostics upload
    lab = Box(centre.box("box-lab-01"), tmp_path / "lab", service.url)
    lab.journal.append(2, variant="multi-project-p256")
    lab.journal.append(1, event="holder_failed", problem="wrong_finger")
    assert lab.report()[0] == 0
    subprocess.run(
        [*sdbox_argv(), "fleet", "diagnostics", "--config", str(lab.config), "--reason", "ticket 4711"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    # a mixed fleet: two software versions, three generations, a refused tunnel, expiring certificates
    fleet = {
        "box-ams-07": _report("0.3.0", "nuc-g1", "up"),
        "box-ber-02": _report("0.3.1", "nuc-g2", "refused", "centre_unreachable", expires_in=12),
        "box-cph-11": _report("0.3.1", "nuc-g2", "up"),
        "box-dub-04": _report(
            "0.2.9", "nuc-g1", "down", "centre_unreachable", "sensor_unplugged", expires_in=25
        ),
    }
    identities = {name: centre.box(name) for name in fleet}
    for name, report in fleet.items():
        _check_in(service, identities[name], 1, report)
    # a rollout whose first ring is box-ams-07: offered, installed, reported
    bundle = tmp_path / "sdbox-nuc-g1-0.3.2.raucb"
    bundle.write_bytes(b"\0" * 4096)
    digest = _fleet_cli(service, "publish", str(bundle), "--version", "0.3.2+1766000000").strip()
    _fleet_cli(service, "rollout", "create", "--bundle", digest, "--ring", "box-ams-07",
               "--steps", "25,100", "--pause-above", "0.2")  # fmt: skip
    offer = _check_in(service, identities["box-ams-07"], 2, fleet["box-ams-07"])
    assert offer["update"]["version"] == "0.3.2+1766000000"
    upgraded = Report(**{**fleet["box-ams-07"].__dict__, "version": "0.3.2",
                         "image_version": "0.3.2+1766000000", "trigger": "boot"})  # fmt: skip
    _check_in(service, identities["box-ams-07"], 3, upgraded)

    # the whole fleet
    browser.open(service.url + "/")
    assert browser.text("h1") == "Boxes (5)"
    assert set(_rows(browser)) == {"box-lab-01", *fleet}
    assert "sensor_unplugged" in browser.text("table")
    browser.screenshot(SHOTS / "boxes.png")

    # filter by version, as typed into the form
    browser.fill("input[name=version]", "0.3.1")
    browser.click("button[type=submit]")
    assert "version=0.3.1" in browser.url()
    assert browser.text("h1") == "Boxes (2)"
    assert sorted(_rows(browser)) == ["box-ber-02", "box-cph-11"]
    browser.screenshot(SHOTS / "boxes-version-0.3.1.png")

    # by generation
    browser.fill("input[name=version]", "")
    browser.fill("input[name=generation]", "nuc-g1")
    browser.click("button[type=submit]")
    assert sorted(_rows(browser)) == ["box-ams-07", "box-dub-04"]

    # by problem: the boxes that cannot reach the centre
    browser.fill("input[name=generation]", "")
    browser.fill("input[name=problem]", "centre_unreachable")
    browser.click("button[type=submit]")
    assert sorted(_rows(browser)) == ["box-ber-02", "box-dub-04"]
    assert "refused" in browser.text("table")
    browser.screenshot(SHOTS / "boxes-problem.png")

    # a box's page: its state and its check-in history
    browser.click("a[href='/boxes/box-ber-02']")
    assert browser.text("h1") == "Box box-ber-02"
    page = browser.text()
    assert "nuc-g2" in page
    assert "gateway_refused_box" in page  # why its tunnel is refused, in the history

    # the lab box: its audit trail and its diagnostics upload, opened from its page
    browser.open(service.url + "/boxes/box-lab-01")
    assert "holder_failed" in browser.text()
    assert "problem=wrong_finger" in browser.text()
    assert "ticket 4711" in browser.text()
    browser.screenshot(SHOTS / "box.png")
    browser.click("a[href^='/boxes/box-lab-01/diagnostics/']")
    assert browser.text("h1").startswith("Diagnostics from box-lab-01")
    headings = browser.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)")
    assert {"versions", "network", "tunnel", "journal (sdbox units)"} <= set(headings)

    # certificates expiring within 30 days, soonest first, from the navigation bar
    browser.click("nav a[href='/certificates']")
    assert browser.text("h1") == "Certificates expiring within 30 days"
    assert _rows(browser) == ["box-ber-02", "box-dub-04"]
    browser.screenshot(SHOTS / "certificates.png")

    # the rollout's progress
    browser.click("nav a[href='/rollout']")
    rollout = browser.text()
    assert "0.3.2+1766000000" in rollout
    assert "running" in rollout
    assert "Installed\t1" in rollout
    assert "box-ams-07" in rollout
    browser.screenshot(SHOTS / "rollout.png")
