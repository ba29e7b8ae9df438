"""The outer network settings: checked against the site, kept on the data partition, installed."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from sdbox.agent.api import NetworkRefusal, NetworkStatus, Problem
from sdbox.agent.machine import Agent
from sdbox.agent.outer_network import (
    DIRECTORY,
    PENDING,
    SETTINGS_FILE,
    LinkFacts,
    NetworkStore,
    diagnose,
    install,
)
from sdbox.agent.problems import Refusal
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.network.outer import (
    Field,
    Mode,
    NetworkSettingsError,
    Why,
    check,
    from_fields,
    iwd_file_name,
    networkd_files,
)
from sdbox.network.site import SiteProfile, load_bytes
from tests.cli import sdbox_argv

SITE = b"""
[[gateways]]
address = "198.51.100.7"
identity = "gw1.centre.example"

[[networks]]
cidr = "10.20.0.0/16"
purpose = "bubbles"

[box]
interface = "eth0"
"""

NAMED_GATEWAY_SITE = SITE.replace(b'"198.51.100.7"', b'"gw1.centre.example"')


@pytest.fixture
def site() -> SiteProfile:
    return load_bytes(SITE, "site.toml")


STATIC = {"mode": "static", "address": "192.168.1.20/24", "gateway": "192.168.1.1", "dns": "192.168.1.1"}
WIFI = {"mode": "wifi", "ssid": "Maison 5G", "passphrase": "correct horse battery"}


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({"mode": "static", "address": "192.168.1.300/24", "gateway": "192.168.1.1"}, Field.ADDRESS, "not an address"),
        ({"mode": "static", "address": "192.168.1.20", "gateway": "192.168.1.1"}, Field.ADDRESS, "no prefix"),
        ({"mode": "static", "address": "192.168.1.0/24", "gateway": "192.168.1.1"}, Field.ADDRESS, "network's own"),
        ({"mode": "static", "address": "192.168.1.20/24", "gateway": "10.0.0.1"}, Field.GATEWAY, "not another address"),
        ({"mode": "static", "address": "192.168.1.20/24", "gateway": "192.168.1.20"}, Field.GATEWAY, "not another address"),
        ({"mode": "static", "address": "10.20.5.9/24", "gateway": "10.20.5.1"}, Field.ADDRESS, "overlaps the centre's network 10.20.0.0/16"),
        ({"mode": "static", "address": "10.0.0.9/8", "gateway": "10.0.0.1"}, Field.ADDRESS, "overlaps"),
        ({"mode": "static", "address": "192.168.1.20/24", "gateway": "192.168.1.1", "dns": "one.one"}, Field.DNS, "not an address"),
        ({"mode": "wifi", "ssid": "Maison", "passphrase": "short"}, Field.PASSPHRASE, "8 to 63"),
        ({"mode": "wifi", "ssid": "Maison", "passphrase": "x" * 64}, Field.PASSPHRASE, "8 to 63"),
        ({"mode": "wifi", "ssid": "Maison", "passphrase": "mot de passe été"}, Field.PASSPHRASE, "ASCII"),
        ({"mode": "wifi", "ssid": "", "passphrase": "long enough"}, Field.SSID, "1 to 32"),
        ({"mode": "wifi", "ssid": "x" * 33, "passphrase": "long enough"}, Field.SSID, "1 to 32"),
        ({"mode": "bluetooth"}, Field.MODE, "not dhcp, static or wifi"),
        ({"mode": "dhcp", "colour": "blue"}, Field.MODE, "not a network setting"),
    ],
)  # fmt: skip
def test_bad_settings_are_refused_with_the_reason_and_nothing_is_kept(
    tmp_path: Path, site: SiteProfile, values: dict[str, str], field: Field, says: str
) -> None:
    store = NetworkStore(tmp_path, site)
    store.set(STATIC)
    kept = (tmp_path / DIRECTORY / SETTINGS_FILE).read_bytes()
    with pytest.raises(NetworkSettingsError) as refused:
        store.set(values)
    assert refused.value.field is field
    assert says in refused.value.message
    assert (tmp_path / DIRECTORY / SETTINGS_FILE).read_bytes() == kept
    assert NetworkStore(tmp_path, site).settings.address == "192.168.1.20/24"


def test_a_named_gateway_needs_a_resolver_on_a_static_network(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path, load_bytes(NAMED_GATEWAY_SITE, "site.toml"))
    with pytest.raises(NetworkSettingsError, match="needs a resolver"):
        store.set({**STATIC, "dns": ""})
    store.set(STATIC)


def test_settings_survive_a_restart_and_a_reset_clears_them(tmp_path: Path, site: SiteProfile) -> None:
    NetworkStore(tmp_path, site).set(WIFI)
    path = tmp_path / DIRECTORY / SETTINGS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the passphrase
    again = NetworkStore(tmp_path, site)  # the agent after a reboot or an A/B update
    assert again.settings.mode is Mode.WIFI
    assert again.settings.passphrase == WIFI["passphrase"]
    assert WIFI["passphrase"] not in json.dumps(again.settings.public())
    assert WIFI["passphrase"] not in repr(again.settings)
    again.reset()
    assert not path.exists()
    assert NetworkStore(tmp_path, site).settings.mode is Mode.DHCP


def test_the_kept_passphrase_stays_when_the_greeter_sends_none(tmp_path: Path, site: SiteProfile) -> None:
    store = NetworkStore(tmp_path, site)
    store.set(WIFI)
    store.set({"mode": "wifi", "ssid": "Maison 5G", "passphrase": ""})
    assert store.settings.passphrase == WIFI["passphrase"]
    with pytest.raises(NetworkSettingsError, match="8 to 63"):  # another network needs its own
        store.set({"mode": "wifi", "ssid": "Bureau", "passphrase": ""})


def test_stored_settings_the_site_no_longer_allows_fall_back_to_dhcp(tmp_path: Path) -> None:
    NetworkStore(tmp_path, None).set({"mode": "static", "address": "10.20.1.5/24", "gateway": "10.20.1.1"})
    assert NetworkStore(tmp_path, load_bytes(SITE, "site.toml")).settings.mode is Mode.DHCP


def test_rendered_files_are_installed_and_stale_ones_removed(tmp_path: Path, site: SiteProfile) -> None:
    store = NetworkStore(tmp_path, site)
    networkd, iwd = tmp_path / "networkd", tmp_path / "iwd"
    (networkd).mkdir()
    (networkd / "99-someone-else.network").write_text("[Match]\n")
    store.set(STATIC)
    install(tmp_path / DIRECTORY / PENDING, networkd, iwd)
    text = (networkd / "05-sdbox-outer.network").read_text()
    assert "Name=eth0" in text
    assert "Address=192.168.1.20/24" in text
    assert "Gateway=192.168.1.1" in text
    store.set(WIFI)
    install(tmp_path / DIRECTORY / PENDING, networkd, iwd)
    assert not (networkd / "05-sdbox-outer.network").exists()
    assert (networkd / "99-someone-else.network").exists()
    wifi = (networkd / "05-sdbox-wifi.network").read_text()
    assert "DHCP=yes" in wifi
    # the link's type, not a name: the NUC's Wi-Fi is wlp0s20f3, not wlan0
    assert "Type=wlan" in wifi.splitlines()
    psk = iwd / iwd_file_name("Maison 5G")
    assert psk.name == "=4d6169736f6e203547.psk"  # iwd's name for an SSID with a space
    assert "Passphrase=correct horse battery" in psk.read_text()
    assert stat.S_IMODE(psk.stat().st_mode) == 0o600
    store.set({"mode": "dhcp"})  # DHCP chosen: written, so that it wins over the site's file
    install(tmp_path / DIRECTORY / PENDING, networkd, iwd)
    assert sorted(p.name for p in networkd.glob("*.network")) == [
        "05-sdbox-outer.network", "99-someone-else.network"
    ]
    assert "DHCP=yes" in (networkd / "05-sdbox-outer.network").read_text().splitlines()
    assert not list(iwd.glob("*.psk"))
    store.reset()  # forgotten: nothing of ours is left, the site's or the image's file applies
    install(tmp_path / DIRECTORY / PENDING, networkd, iwd)
    assert sorted(p.name for p in networkd.glob("*.network")) == ["99-someone-else.network"]


def test_the_researchers_file_sorts_before_the_sites_and_keeps_its_hardening(
    tmp_path: Path, site: SiteProfile
) -> None:
    # networkd applies the first file in lexical order that matches a link: the site
    # profile's 10-sdbox-site.network would otherwise win over the researcher's choice
    from sdbox.network.boot import NETWORKD_FILE, networkd_config

    for values in (STATIC, WIFI, {"mode": "dhcp"}):
        files = networkd_files(check(from_fields(dict(values)), site), site.box.interface)
        for name, text in files.items():
            assert name < NETWORKD_FILE.name
            for line in ("LLMNR=no", "MulticastDNS=no", "LinkLocalAddressing=no"):
                assert line in text.splitlines()
                assert line in networkd_config(site).splitlines()  # the site's own


UP = LinkFacts(True, True, ("192.168.1.20/24",), True)


@pytest.mark.parametrize(
    ("link", "tunnel", "status"),
    [
        (LinkFacts(False, False, (), False), None, NetworkStatus.NO_LINK),
        (LinkFacts(True, False, (), False), TunnelEvent(TunnelState.DOWN, reason=Reason.NO_NETWORK), NetworkStatus.NO_LINK),
        (LinkFacts(True, True, (), False), None, NetworkStatus.NO_ADDRESS),
        (LinkFacts(True, True, ("192.168.1.20/24",), False), None, NetworkStatus.NO_ROUTE),
        (UP, TunnelEvent(TunnelState.DOWN, reason=Reason.NO_NETWORK), NetworkStatus.NO_ROUTE),
        (UP, TunnelEvent(TunnelState.DOWN, reason=Reason.GATEWAY_UNREACHABLE), NetworkStatus.UDP_BLOCKED),
        (UP, TunnelEvent(TunnelState.REFUSED, reason=Reason.GATEWAY_REFUSED_BOX), NetworkStatus.GATEWAY_REFUSED),
        (UP, TunnelEvent(TunnelState.DOWN, reason=Reason.GATEWAY_CERTIFICATE_REVOKED), NetworkStatus.GATEWAY_REFUSED),
        (UP, TunnelEvent(TunnelState.DOWN, reason=Reason.STOPPED), NetworkStatus.TUNNEL_DOWN),
        (UP, TunnelEvent(TunnelState.CONNECTING), NetworkStatus.CONNECTING),
        (UP, TunnelEvent(TunnelState.UP, inner_address="10.99.0.2"), NetworkStatus.CONNECTED),
        (UP, None, NetworkStatus.LOCAL_ONLY),
    ],
)  # fmt: skip
def test_where_the_problem_is(link: LinkFacts, tunnel: TunnelEvent | None, status: NetworkStatus) -> None:
    assert diagnose(link, tunnel) is status


def _agent(tmp_path: Path, site: SiteProfile, tunnel: TunnelEvent | None = None) -> Agent:
    return Agent(
        trust=None, sensor=None, credentials=None, sessions=None,  # type: ignore[arg-type]
        endpoint_allowed=lambda _e: True, network=NetworkStore(tmp_path, site),
        tunnel_state=lambda: tunnel, link_reader=lambda _i: UP,
    )  # fmt: skip


def test_the_agent_refuses_with_the_field_and_publishes_a_change(tmp_path: Path, site: SiteProfile) -> None:
    agent = _agent(tmp_path, site)
    events: list[object] = []
    agent.listeners.append(events.append)
    with pytest.raises(Refusal) as refused:
        agent.set_network({"mode": "static", "address": "10.20.5.9/24", "gateway": "10.20.5.1"})
    assert refused.value.problem is Problem.INVALID_NETWORK
    assert refused.value.message.startswith("address overlaps_centre: ")
    assert events == []
    agent.set_network(WIFI)
    assert len(events) == 1
    assert "correct horse" not in repr(events)


def test_support_says_what_a_helpdesk_asks_for(tmp_path: Path, site: SiteProfile) -> None:
    agent = _agent(tmp_path, site, TunnelEvent(TunnelState.DOWN, reason=Reason.GATEWAY_UNREACHABLE))
    agent.support.card_inserted("BIO SSO, on-card finger")
    agent.support.problem(Problem.WRONG_FINGER)
    agent.support.problem(Problem.BROKER_UNREACHABLE)
    values = agent.support_values()
    assert values["addresses"] == "192.168.1.20/24"
    assert values["interface"] == "eth0"
    assert values["tunnel"] == "udp_blocked"
    assert values["card"] == "BIO SSO, on-card finger"
    assert values["version"]
    lines = values["problems"].splitlines()
    assert [line.split()[1] for line in lines] == ["broker_unreachable", "wrong_finger"]  # newest first


def test_the_refusal_codes_are_the_apis() -> None:
    assert [w.value for w in Why] == [r.value for r in NetworkRefusal]


def test_without_a_hook_the_machines_own_tunnel_is_followed(tmp_path: Path, site: SiteProfile) -> None:
    class Port:
        def current(self) -> TunnelEvent:
            return TunnelEvent(TunnelState.REFUSED, reason=Reason.GATEWAY_REFUSED_BOX)

    agent = Agent(
        trust=None, sensor=None, credentials=None, sessions=None,  # type: ignore[arg-type]
        endpoint_allowed=lambda _e: True, network=NetworkStore(tmp_path, site),
        link_reader=lambda _i: UP,
    )  # fmt: skip
    assert agent.network_status() is NetworkStatus.LOCAL_ONLY  # no tunnel on this site
    setattr(agent, "tunnel", Port())  # noqa: B010  (Agent(tunnel=...) on main's agent)
    assert agent.network_status() is NetworkStatus.GATEWAY_REFUSED


def test_sdbox_network_reset_forgets_the_settings(tmp_path: Path, site: SiteProfile) -> None:
    """The factory reset's step for the network: after it, the site's (or image's) network applies."""
    NetworkStore(tmp_path, site).set(WIFI)
    done = subprocess.run(
        [*sdbox_argv(), "network", "reset", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cleared" in done.stdout
    assert not (tmp_path / DIRECTORY / SETTINGS_FILE).exists()
    assert NetworkStore(tmp_path, site).settings.mode is Mode.DHCP
    # what `sdbox network apply` then installs: nothing of ours
    networkd, iwd = tmp_path / "networkd", tmp_path / "iwd"
    assert install(tmp_path / DIRECTORY / PENDING, networkd, iwd) == []


def test_nothing_is_made_for_iwd_when_there_is_nothing_for_it(tmp_path: Path, site: SiteProfile) -> None:
    # a box without iwd has no /var/lib/iwd, and /var is read-only in the apply job's sandbox:
    # making it there failed the job at boot
    store = NetworkStore(tmp_path, site)
    store.set(STATIC)
    iwd = tmp_path / "absent" / "iwd"
    install(tmp_path / DIRECTORY / PENDING, tmp_path / "networkd", iwd)
    assert not iwd.parent.exists()
    assert (tmp_path / "networkd" / "05-sdbox-outer.network").exists()


UNIT = Path(__file__).resolve().parents[2] / "debian" / "sdbox.sdbox-outer-network.service"


def _unit_values(key: str) -> list[str]:
    return [
        value for line in UNIT.read_text().splitlines() if line.startswith(f"{key}=")
        for value in line.split("=", 1)[1].split()
    ]  # fmt: skip


def test_the_apply_jobs_sandbox_can_be_set_up_on_a_read_only_root_at_boot() -> None:
    # systemd refuses to start a unit whose ReadWritePaths=/ReadOnlyPaths= name a
    # directory that is absent (without "-"): each must be made before, unsandboxed
    made = {
        line.split()[-1] for line in UNIT.read_text().splitlines()
        if line.startswith("ExecStartPre=+/bin/mkdir -p")
    }  # fmt: skip
    required = [p for p in _unit_values("ReadWritePaths") + _unit_values("ReadOnlyPaths")
                if not p.startswith("-")]  # fmt: skip
    assert required
    assert set(required) <= made
    # PrivateTmp= needs /var/tmp, which tmpfiles makes on the first boot
    assert _unit_values("PrivateTmp") == ["yes"]
    assert "systemd-tmpfiles-setup.service" in _unit_values("After")


def test_with_wifi_chosen_the_status_looks_at_the_radio(tmp_path: Path, site: SiteProfile) -> None:
    sys_net = tmp_path / "sys"
    (sys_net / "enp1s0").mkdir(parents=True)
    (sys_net / "wlp0s20f3" / "wireless").mkdir(parents=True)
    store = NetworkStore(tmp_path / "state", site)
    assert store.link_interface(sys_net) == "eth0"  # the site's wired link
    store.set(WIFI)
    assert store.link_interface(sys_net) == "wlp0s20f3"
