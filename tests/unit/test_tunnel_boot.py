"""The boot-time tunnel's pure parts: the enrolment opening, networkd's file, the time floor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sdbox.network import boot, firewall
from sdbox.network.site import load_bytes

SITE = """
[[gateways]]
address = "192.0.2.1"
identity = "gw1.centre.test"

[[networks]]
cidr = "10.20.0.0/16"
purpose = "broker"

[box]
interface = "enp0s4"
mode = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
"""
ENROLMENT = '[enrolment]\nurl = "https://192.0.2.5:8443"\n'


def _chain(rules: str, name: str) -> list[str]:
    body = rules.split(f"chain {name} {{", 1)[1].split("\n    }", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_an_unenrolled_box_may_reach_the_enrolment_endpoint_and_nothing_more() -> None:
    rules = firewall.ruleset(load_bytes((SITE + ENROLMENT).encode(), "site.toml"), enrolment=True)
    assert _chain(rules, "enrolment") == [
        'oifname { "enp0s4", "wl*" } ip daddr 192.0.2.5 tcp dport 8443 accept'
    ]
    assert "jump enrolment" in _chain(rules, "output")


def test_an_enrolled_box_has_no_opening_and_no_profile_endpoint_means_none() -> None:
    enrolled = firewall.ruleset(load_bytes((SITE + ENROLMENT).encode(), "site.toml"))
    assert _chain(enrolled, "enrolment") == []
    no_endpoint = firewall.ruleset(load_bytes(SITE.encode(), "site.toml"), enrolment=True)
    assert _chain(no_endpoint, "enrolment") == []
    assert "8443" not in enrolled + no_endpoint


def test_the_outer_network_is_configured_from_the_profile() -> None:
    static = boot.networkd_config(load_bytes(SITE.encode(), "site.toml"))
    assert "Name=enp0s4" in static
    assert "Address=192.0.2.10/24" in static
    assert "Gateway=192.0.2.1" in static
    assert "DHCP" not in static
    dhcp = boot.networkd_config(load_bytes(SITE.split("[box]", maxsplit=1)[0].encode(), "site.toml"))
    assert "Name=eth0" in dhcp
    assert "DHCP=yes" in dhcp
    assert "Address=" not in dhcp


def test_a_clock_behind_the_floor_is_set_forward_and_never_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_to: list[float] = []
    monkeypatch.setattr("sdbox.network.boot.time.clock_settime", lambda _clock, value: set_to.append(value))
    floor = datetime(2026, 12, 1, tzinfo=UTC)
    assert boot.apply_time_floor(floor, now=floor + timedelta(days=3)) is None
    assert set_to == []
    assert boot.apply_time_floor(floor, now=datetime(2000, 1, 1, tzinfo=UTC)) == floor
    assert set_to == [floor.timestamp()]


def test_a_box_without_a_certificate_is_told_it_is_not_enrolled(tmp_path: Path) -> None:
    profile = load_bytes(SITE.encode(), "site.toml")
    with pytest.raises(boot.BootTunnelError, match="it is not enrolled, so there is no tunnel"):
        boot.read_material(profile, anchors=tmp_path / "roots.pem",
                           certificate=tmp_path / "box.pem", crl_dirs=[])  # fmt: skip


def test_readiness_reaches_systemds_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert boot.sd_notify("READY=1")
        assert server.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not boot.sd_notify("READY=1")
