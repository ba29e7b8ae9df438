"""The site profile: one declaration, errors that name the file, the section, the key and the problem."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sdbox.config import ConfigError, describe
from sdbox.network.site import SiteProfile, load

GOOD = """
[[gateways]]
address = "198.51.100.1"
identity = "gw1.centre.example"

[[gateways]]
address = "gw2.centre.example"
identity = "gw2.centre.example"

[[networks]]
cidr = "10.20.0.0/16"
purpose = "bubbles"

[[networks]]
cidr = "10.30.1.0/24"
purpose = "broker"
"""

STATIC = """
[box]
mode = "static"
address = "192.0.2.10/24"
gateway = "192.0.2.1"
dns = ["192.0.2.53"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_a_profile_loads_with_gateways_in_order_and_dhcp_by_default(tmp_path: Path) -> None:
    profile = load(write(tmp_path, GOOD))
    assert [g.identity for g in profile.gateways] == ["gw1.centre.example", "gw2.centre.example"]
    assert profile.tunnel_networks == [
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("10.30.1.0/24"),
    ]
    assert profile.box.mode == "dhcp"
    assert profile.gateways_are_names()


def test_a_static_box_network_loads(tmp_path: Path) -> None:
    profile = load(write(tmp_path, GOOD + STATIC))
    assert str(profile.box.interface_address) == "192.0.2.10/24"
    assert profile.box.dns == ["192.0.2.53"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "[tunel]\n", r"site.toml: unknown key 'tunel' \(known: box, enrolment, gateways, networks, tunnel\)"),
        (GOOD + '[enrolment]\nurl = "http://192.0.2.5:8443"\n',
         r"\[enrolment\] url: 'http://192.0.2.5:8443' is not https://ADDRESS:PORT"),
        (GOOD + '[enrolment]\nurl = "https://enrol.centre.example:8443"\n',
         r"\[enrolment\] url: enrol.centre.example is not an IP address \(nothing is resolved before enrolment\)"),
        (GOOD + '[enrolment]\nurl = "https://10.20.3.4:8443"\n',
         r"\[enrolment\] url: 10.20.3.4 is inside the tunnel network \[networks\[1\]\] 10.20.0.0/16: a box enrols before it has a tunnel"),
        (GOOD.replace('"198.51.100.1"', '"198.51.100.300"'),
         r"site.toml: \[gateways\[1\]\] address: '198.51.100.300' is neither an IP address nor a fully qualified DNS name"),
        (GOOD.replace('identity = "gw1.centre.example"', 'identity = "CN=gw1"'),
         r"\[gateways\[1\]\] identity: 'CN=gw1' is not an identity a gateway certificate can carry"),
        (GOOD.replace('address = "gw2.centre.example"\n', 'adress = "gw2.centre.example"\n'),
         r"\[gateways\[2\]\] unknown key 'adress' \(known: address, identity\)"),
        ('networks = []\ngateways = []\n', r"site.toml: gateways: the list is empty: name at least one"),
        (GOOD.split("[[networks]]", maxsplit=1)[0], r"site.toml: networks is required"),
        (GOOD.replace("10.20.0.0/16", "10.20.0.1/16"),
         r"\[networks\[1\]\] cidr: '10.20.0.1/16' has host bits set: did you mean 10.20.0.0/16\?"),
        (GOOD.replace("10.20.0.0/16", "10.20/16x"), r"\[networks\[1\]\] cidr: '10.20/16x' is not a network in CIDR notation"),
        (GOOD.replace('purpose = "broker"', 'purpose = "printing"'),
         r"\[networks\[2\]\] purpose: must be one of 'bubbles', 'broker', 'cmp', 'crl', 'time', 'fleet', 'other', not 'printing'"),
        (GOOD.replace("10.30.1.0/24", "10.20.7.0/24"),
         r"\[networks\[2\]\] cidr: 10.20.7.0/24 overlaps \[networks\[1\]\] 10.20.0.0/16"),
        (GOOD.replace('"198.51.100.1"', '"10.20.0.1"'),
         r"\[gateways\[1\]\] address: 10.20.0.1 is inside the tunnel network \[networks\[1\]\] 10.20.0.0/16"),
        (GOOD.replace('"gw2.centre.example"\nidentity', '"198.51.100.1"\nidentity'),
         r"\[gateways\[2\]\] address: 198.51.100.1 is already \[gateways\[1\]\]"),
        (GOOD + STATIC.replace("192.0.2.10/24", "10.30.1.10/24").replace("192.0.2.1\"", "10.30.1.1\""),
         r"\[box\] address: the box's network 10.30.1.0/24 overlaps the tunnel network \[networks\[2\]\] 10.30.1.0/24"),
        (GOOD + STATIC.replace("192.0.2.10/24", "192.0.2.10"), r"\[box\] address: '192.0.2.10' has no prefix length"),
        (GOOD + STATIC.replace('"192.0.2.1"', '"192.0.3.1"'),
         r"\[box\] gateway: 192.0.3.1 is not another address of the box's network 192.0.2.0/24"),
        (GOOD + STATIC.replace('dns = ["192.0.2.53"]', "dns = []"),
         r"\[box\] dns: a gateway is a DNS name, so a static network needs resolvers"),
        (GOOD + STATIC.replace('dns = ["192.0.2.53"]', 'dns = ["resolver"]'), r"\[box\] dns: 'resolver' is not an IP address"),
        (GOOD + '[box]\naddress = "192.0.2.10/24"\n', r"\[box\] address: only with mode = \"static\""),
        (GOOD + '[box]\nmode = "static"\n', r"\[box\] address: required with mode = \"static\""),
        (GOOD + '[box]\ninterface = "eth0; drop"\n', r"\[box\] interface: 'eth0; drop' is not a network interface name"),
        (GOOD + "[tunnel]\ndpd_delay_s = 0\n", r"\[tunnel\] dpd_delay_s: must be greater than 0"),
        ("gateways = 3\n", r"site.toml: gateways: expected tables"),
        ("[[gateways]\n", r"site.toml: not valid TOML"),
    ],
)  # fmt: skip
def test_errors_name_the_key_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


def test_a_missing_profile_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere.toml: the site profile does not exist"):
        load(tmp_path / "nowhere.toml")


def test_the_reference_lists_every_setting_from_the_declaration() -> None:
    reference = "\n".join(describe(SiteProfile))
    assert "[[gateways]]  # the centre's gateways, most preferred first" in reference
    assert "identity = (required)" in reference
    assert "mode = 'dhcp'" in reference
    assert "gateway_ca = '/etc/sdbox/trust/gateway-ca.pem'" in reference
