"""The box's and the reference gateway's strongSwan configuration, generated from the site profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.network import firewall, strongswan
from sdbox.network.site import load
from sdbox.trust.pki import Pki

SITE = """
[[gateways]]
address = "192.0.2.1"
identity = "gw1.centre.test"

[[gateways]]
address = "192.0.2.3"
identity = "gw2.centre.test"

[[networks]]
cidr = "10.20.0.0/16"
purpose = "bubbles"

[[networks]]
cidr = "10.30.0.0/24"
purpose = "broker"

[tunnel]
dpd_delay_s = 7
rekey_time_s = 3600
"""

WEAK = ("sha1", "modp1024", "md5", "3des", "cbc", "modp768", "aes128-sha1")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def box_cert(pki: Pki) -> x509.Certificate:
    return pki.issue_box(ec.generate_private_key(ec.SECP256R1()).public_key(), box_id="box-7")


def test_one_connection_per_gateway_in_the_profiles_order(
    tmp_path: Path, pki: Pki, box_cert: x509.Certificate
) -> None:
    (tmp_path / "site.toml").write_text(SITE)
    profile = load(tmp_path / "site.toml")
    conns = strongswan.box_connections(
        profile, box_certificate=box_cert, gateway_ca=pki.server_ca.cert
    )
    assert list(conns) == ["centre-1", "centre-2"]
    first, second = conns["centre-1"], conns["centre-2"]
    assert first["remote_addrs"] == ["192.0.2.1"]
    assert second["remote_addrs"] == ["192.0.2.3"]
    remote = first["remote"]
    assert isinstance(remote, dict)
    # the gateway is pinned by its identity and by the gateway CA alone
    assert remote["id"] == "gw1.centre.test"
    assert remote["cacerts"] == [strongswan.pem(pki.server_ca.cert)]
    assert remote["revocation"] == "strict"
    assert first["version"] == "2"
    assert first["dpd_delay"] == "7s"
    assert first["rekey_time"] == "3600s"
    child = first["children"]
    assert isinstance(child, dict)
    assert child[strongswan.CHILD_NAME]["remote_ts"] == ["10.20.0.0/16", "10.30.0.0/24"]


def test_only_modern_proposals_are_offered_and_accepted(tmp_path: Path, pki: Pki,
                                                        box_cert: x509.Certificate) -> None:
    (tmp_path / "site.toml").write_text(SITE)
    profile = load(tmp_path / "site.toml")
    box = strongswan.box_connection(profile, 1, box_certificate=box_cert,
                                    gateway_ca=pki.server_ca.cert)  # fmt: skip
    gateway = strongswan.gateway_connection(strongswan.GatewaySpec(
        identity="gw1.centre.test", certificate=box_cert, box_ca=pki.box_ca.cert,
        networks=["10.20.0.0/16"], pool="10.99.0.0/24"))  # fmt: skip
    for conn in (box, gateway):
        proposals = [*conn["proposals"], *conn["children"][strongswan.CHILD_NAME]["esp_proposals"]]
        assert proposals == ["aes256gcm16-prfsha384-ecp384", "aes256gcm16-ecp384"]
        for proposal in proposals:
            assert not any(weak in proposal for weak in WEAK)


def test_the_gateway_accepts_only_boxes_of_the_box_ca_with_revocation_checked(
    pki: Pki, box_cert: x509.Certificate
) -> None:
    spec = strongswan.GatewaySpec(identity="gw1.centre.test", certificate=box_cert,
                                  box_ca=pki.box_ca.cert, networks=["10.20.0.0/16"],
                                  pool="10.99.0.0/24", local_addrs=["192.0.2.1"])  # fmt: skip
    conn = strongswan.gateway_connection(spec)
    assert conn["remote"] == {"auth": "pubkey", "cacerts": [strongswan.pem(pki.box_ca.cert)],
                              "revocation": "strict"}  # fmt: skip
    assert conn["pools"] == [strongswan.POOL_NAME]
    assert strongswan.gateway_pool(spec) == {"boxes": {"addrs": "10.99.0.0/24"}}
    text = strongswan.swanctl_conf(
        {"gateway": strongswan.gateway_connection(spec, cert_ref=lambda c: "gw1.pem")},
        pools=strongswan.gateway_pool(spec),
    )
    assert "        local_addrs = 192.0.2.1" in text
    assert "            cacerts = gw1.pem" in text
    assert "            revocation = strict" in text
    assert "pools {\n    boxes {\n        addrs = 10.99.0.0/24\n    }\n}" in text


def test_charon_loads_named_plugins_only_and_its_own_sockets(tmp_path: Path) -> None:
    paths = strongswan.CharonPaths(tmp_path / "charon.vici", tmp_path / "charon.enfy")
    text = strongswan.charon_conf(paths, pkcs11_modules={"tpm": strongswan.P11_KIT_CLIENT})
    load_line = next(line for line in text.splitlines() if line.strip().startswith("load ="))
    plugins = load_line.split("=", 1)[1].split()
    assert not {"curl", "ldap", "stroke"} & set(plugins)
    assert {"pkcs11", "revocation", "vici", "error-notify", "kdf"} <= set(plugins)
    assert f"socket = unix://{tmp_path}/charon.vici" in text
    assert f"path = {strongswan.P11_KIT_CLIENT}" in text
    assert "enable_ocsp = no" in text


def test_the_box_key_is_named_by_its_pkcs11_id_never_exported() -> None:
    message = strongswan.TokenKey(key_id=b"\x01").load_token("the-pin")
    assert message == {"handle": "01", "pin": "the-pin"}
    argv = strongswan.p11_kit_server_argv(Path("/run/sdbox/p11.sock"), "sdbox box")
    assert argv[-1] == "pkcs11:token=sdbox%20box"


def test_the_firewall_names_only_the_gateways_and_tunnel_networks(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SITE)
    rules = firewall.ruleset(load(tmp_path / "site.toml"))
    assert "set gateways4 { type ipv4_addr; elements = { 192.0.2.1, 192.0.2.3 }; }" in rules
    assert "elements = { 10.20.0.0/16, 10.30.0.0/24 }" in rules
    assert rules.count("policy drop;") == 3
    # the profile's interface and any wireless link (the researcher's Wi-Fi) are outer links
    assert 'oifname { "eth0", "wl*" } udp sport 68 udp dport 67 accept' in rules  # DHCP
    assert "dport 53" not in rules  # gateways are addresses: no DNS before the tunnel
    assert "ip daddr @tunnel4 rt ipsec exists accept" in rules
    assert "ct state established" not in rules.split("chain output")[1]


def test_with_charons_own_data_plane_only_its_tun_device_carries_centre_traffic(
    tmp_path: Path,
) -> None:
    (tmp_path / "site.toml").write_text(SITE)
    rules = firewall.ruleset(load(tmp_path / "site.toml"), data_plane="libipsec")
    assert 'ip daddr @tunnel4 oifname "ipsec0" accept' in rules
    assert 'ip saddr @tunnel4 iifname != "ipsec0" drop' in rules
    assert "rt ipsec" not in rules


def test_a_centre_operator_gets_the_gateways_swanctl_conf(tmp_path: Path, pki: Pki) -> None:
    from click.testing import CliRunner

    from sdbox._cli import cli

    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "gw1.pem").write_bytes(strongswan.pem(pki.issue_server("gw1.centre.test", key.public_key())))
    (tmp_path / "box-ca.pem").write_bytes(strongswan.pem(pki.box_ca.cert))
    result = CliRunner().invoke(cli, [
        "tunnel", "gateway-config", "--identity", "gw1.centre.test",
        "--certificate", str(tmp_path / "gw1.pem"), "--box-ca", str(tmp_path / "box-ca.pem"),
        "--network", "10.20.0.0/16", "--pool", "10.99.0.0/24"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "            certs = gw1.pem" in result.output
    assert "            cacerts = box-ca.pem" in result.output
    assert "        proposals = aes256gcm16-prfsha384-ecp384" in result.output


def test_dhcp_is_allowed_where_the_profile_fixes_the_address(tmp_path: Path) -> None:
    # a box fixed at the institute may be set to DHCP on the greeter at home (docs/desk.md)
    static = SITE + '[box]\nmode = "static"\naddress = "198.51.100.10/24"\ngateway = "198.51.100.1"\n'
    (tmp_path / "site.toml").write_text(static)
    profile = load(tmp_path / "site.toml")
    assert profile.box.mode == "static"
    rules = firewall.ruleset(profile)
    assert 'iifname { "eth0", "wl*" } udp sport 67 udp dport 68 accept' in rules
