"""The box's outer network as the researcher sets it on the greeter: wired DHCP or static, Wi-Fi.

Pure: the settings, their checks against the site profile, and the files
that systemd-networkd (addresses, DHCP, routes) and iwd (Wi-Fi
authentication, WPA2/WPA3 personal) read. No I/O here; the agent keeps the
settings on the data partition (:mod:`sdbox.agent.outer_network`) and the
files are installed by :func:`sdbox.agent.outer_network.install`.

The outer network only carries the tunnel: nothing here routes the centre's
networks, and a static network that overlaps one of them is refused
(traffic for the centre would then leave outside the tunnel). Every refusal
names the field and the reason, and nothing is kept (docs/desk.md).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum

from sdbox.errors import SdboxError
from sdbox.network.site import SiteProfile, parse_address


class Mode(StrEnum):
    """How the box reaches its local network."""

    DHCP = "dhcp"  # wired, address from the local DHCP server (the image's default)
    STATIC = "static"  # wired, address typed in
    WIFI = "wifi"  # Wi-Fi (WPA2/WPA3 personal), address by DHCP


class Field(StrEnum):
    """The settings' names on the wire (D-Bus ``SetNetwork``'s keys) and in errors."""

    MODE = "mode"
    ADDRESS = "address"  # static: ADDRESS/PREFIX
    GATEWAY = "gateway"  # static: the local router
    DNS = "dns"  # static: resolvers, separated by spaces or commas
    SSID = "ssid"
    PASSPHRASE = "passphrase"  # noqa: S105  (the key's name; its value is never read back or logged)


class Why(StrEnum):
    """Why a setting was refused, as a code the greeter says in its language.

    The same values as :class:`sdbox.agent.api.NetworkRefusal` (a unit test
    holds them together): the greeter may import only the agent's API.
    """

    NOT_A_SETTING = "not_a_setting"
    MISSING = "missing"
    NO_PREFIX = "no_prefix"
    NOT_AN_ADDRESS = "not_an_address"
    NOT_A_HOST = "not_a_host"  # the network's own address, loopback, multicast, link-local
    ROUTER_OUTSIDE = "router_outside"
    OVERLAPS_CENTRE = "overlaps_centre"
    NEEDS_RESOLVER = "needs_resolver"
    SSID_LENGTH = "ssid_length"
    SSID_CHARACTERS = "ssid_characters"
    PASSPHRASE_LENGTH = "passphrase_length"  # noqa: S105  (a code, not a secret)
    PASSPHRASE_CHARACTERS = "passphrase_characters"  # noqa: S105


class NetworkSettingsError(SdboxError):
    """Settings refused: ``field`` says which one, ``why`` the reason's code, the message why.

    Nothing was kept.
    """

    def __init__(self, setting: Field, why: Why, message: str) -> None:
        super().__init__(message)
        self.field = setting
        self.why = why


@dataclass(frozen=True)
class OuterSettings:
    """What the researcher set (validated by :func:`check`)."""

    mode: Mode = Mode.DHCP
    address: str = ""
    gateway: str = ""
    dns: tuple[str, ...] = ()
    ssid: str = ""
    passphrase: str = field(default="", repr=False)  # the Wi-Fi secret: kept out of repr and logs

    def public(self) -> dict[str, str]:
        """Every setting but the passphrase (D-Bus ``Network``; whether one is set, not its value)."""
        return {
            Field.MODE.value: self.mode.value,
            Field.ADDRESS.value: self.address,
            Field.GATEWAY.value: self.gateway,
            Field.DNS.value: " ".join(self.dns),
            Field.SSID.value: self.ssid,
            "passphrase_set": "1" if self.passphrase else "0",
        }

    def stored(self) -> dict[str, str]:
        """Everything, for the settings file on the data partition (mode 0600)."""
        return {**self.public(), Field.PASSPHRASE.value: self.passphrase}


def from_fields(values: dict[str, str], previous: OuterSettings | None = None) -> OuterSettings:
    """Settings from the greeter's fields (unknown keys refused); not yet checked.

    An empty passphrase for the Wi-Fi network already kept means "keep it":
    the greeter never reads a passphrase back, so it cannot send it again.
    """
    known = {f.value for f in Field}
    for key in values:
        if key not in known:
            raise NetworkSettingsError(Field.MODE, Why.NOT_A_SETTING, f"{key!r} is not a network setting")
    try:
        mode = Mode(values.get(Field.MODE, Mode.DHCP.value))
    except ValueError:
        raise NetworkSettingsError(
            Field.MODE, Why.NOT_A_SETTING, f"{values.get(Field.MODE)!r} is not dhcp, static or wifi"
        ) from None
    dns = tuple(part for part in re.split(r"[\s,]+", values.get(Field.DNS, "")) if part)
    ssid = values.get(Field.SSID, "")
    passphrase = values.get(Field.PASSPHRASE, "")
    if (
        mode is Mode.WIFI and not passphrase and previous is not None
        and previous.mode is Mode.WIFI and previous.ssid == ssid
    ):  # fmt: skip
        passphrase = previous.passphrase
    return OuterSettings(
        mode=mode,
        address=values.get(Field.ADDRESS, "").strip() if mode is Mode.STATIC else "",
        gateway=values.get(Field.GATEWAY, "").strip() if mode is Mode.STATIC else "",
        dns=dns if mode is Mode.STATIC else (),
        ssid=ssid if mode is Mode.WIFI else "",
        passphrase=passphrase if mode is Mode.WIFI else "",
    )


def _check_static(settings: OuterSettings, site: SiteProfile | None) -> None:
    if not settings.address:
        raise NetworkSettingsError(Field.ADDRESS, Why.MISSING, "an address is needed (e.g. 192.168.1.20/24)")
    if "/" not in settings.address:
        raise NetworkSettingsError(
            Field.ADDRESS, Why.NO_PREFIX, f"{settings.address!r} has no prefix length (e.g. 192.168.1.20/24)"
        )
    try:
        own = ipaddress.ip_interface(settings.address)
    except ValueError:
        raise NetworkSettingsError(
            Field.ADDRESS, Why.NOT_AN_ADDRESS, f"{settings.address!r} is not an address (e.g. 192.168.1.20/24)"
        ) from None
    if own.ip in (own.network.network_address, own.network.broadcast_address) and (
        own.network.num_addresses > 2
    ):
        raise NetworkSettingsError(
            Field.ADDRESS, Why.NOT_A_HOST, f"{own.ip} is the network's own address, not a host's"
        )
    if own.ip.is_loopback or own.ip.is_multicast or own.ip.is_unspecified or own.ip.is_link_local:
        raise NetworkSettingsError(Field.ADDRESS, Why.NOT_A_HOST, f"{own.ip} cannot be the box's address")
    router = parse_address(settings.gateway)
    if router is None:
        raise NetworkSettingsError(
            Field.GATEWAY, Why.NOT_AN_ADDRESS, f"{settings.gateway!r} is not an address (the local router, e.g. 192.168.1.1)"
        )
    if router not in own.network or router == own.ip:
        raise NetworkSettingsError(
            Field.GATEWAY, Why.ROUTER_OUTSIDE, f"{router} is not another address of the network {own.network}"
        )
    for server in settings.dns:
        if parse_address(server) is None:
            raise NetworkSettingsError(Field.DNS, Why.NOT_AN_ADDRESS, f"{server!r} is not an address")
    if site is None:
        return
    for network in site.tunnel_networks:
        if network.version == own.network.version and network.overlaps(own.network):
            raise NetworkSettingsError(
                Field.ADDRESS, Why.OVERLAPS_CENTRE,
                f"the network {own.network} overlaps the centre's network {network}, which only "
                "the tunnel may carry: choose another address",
            )
    for gateway in site.gateways:
        address = parse_address(gateway.address)
        if address is not None and address == own.ip:
            raise NetworkSettingsError(Field.ADDRESS, Why.OVERLAPS_CENTRE, f"{own.ip} is the centre's gateway")
    if site.gateways_are_names() and not settings.dns:
        raise NetworkSettingsError(
            Field.DNS, Why.NEEDS_RESOLVER, "the centre's gateway is a name: a static network needs a resolver"
        )


# IEEE 802.11i: a passphrase of 8 to 63 printable ASCII characters, or the key as 64 hex digits
_HEX_KEY = re.compile(r"[0-9A-Fa-f]{64}")


def _check_wifi(settings: OuterSettings) -> None:
    raw = settings.ssid.encode("utf-8")
    if not 1 <= len(raw) <= 32:
        raise NetworkSettingsError(Field.SSID, Why.SSID_LENGTH, "a network name has 1 to 32 bytes")
    if any(ord(ch) < 32 for ch in settings.ssid):
        raise NetworkSettingsError(
            Field.SSID, Why.SSID_CHARACTERS, "the network name has a control character"
        )
    secret = settings.passphrase
    if _HEX_KEY.fullmatch(secret):
        return
    if not 8 <= len(secret) <= 63:
        raise NetworkSettingsError(
            Field.PASSPHRASE, Why.PASSPHRASE_LENGTH, "a Wi-Fi passphrase has 8 to 63 characters (WPA2/WPA3 personal)"
        )
    if not all(32 <= ord(ch) <= 126 for ch in secret):
        raise NetworkSettingsError(
            Field.PASSPHRASE, Why.PASSPHRASE_CHARACTERS, "a Wi-Fi passphrase has letters, digits and ASCII signs only"
        )


def check(settings: OuterSettings, site: SiteProfile | None) -> OuterSettings:
    """``settings`` if the box may use them; :class:`NetworkSettingsError` with the reason if not."""
    if settings.mode is Mode.STATIC:
        _check_static(settings, site)
    elif settings.mode is Mode.WIFI:
        _check_wifi(settings)
    return settings


# -- the files ---------------------------------------------------------------------

# Which file wins: networkd applies to a link the first .network file, in lexical order
# over /etc, /run and /usr/lib, whose [Match] fits it. sdbox-site writes the site
# profile's file for the outer interface as 10-sdbox-site.network; the researcher's
# setting must win for that link, so its files sort before it (05-). The site profile
# still governs what is the box's and not the researcher's (docs/desk.md, "Which
# setting wins"): which interface is outer, the firewall (sdbox-site), that no
# centre network is routed outside the tunnel (:func:`check`), and the link's
# hardening below, which every file of ours carries as the site's does.
WIRED_FILE = "05-sdbox-outer.network"
WIFI_FILE = "05-sdbox-wifi.network"
# what the site profile's networkd file sets on the outer link (sdbox.network.boot):
# no name resolution broadcast on the local network, no IPv4 link-local address
LINK_HARDENING = ("LLMNR=no", "MulticastDNS=no", "LinkLocalAddressing=no")


def networkd_files(settings: OuterSettings, interface: str) -> dict[str, str]:
    """systemd-networkd's file for ``settings`` (name -> text).

    DHCP too is written: a researcher who chooses it at home must get it even
    where the site profile gives the box a fixed address (its file would
    apply otherwise). Forgetting the settings (:meth:`NetworkStore.reset`)
    writes nothing, and the site's or the image's file applies again.
    """
    if settings.mode is Mode.STATIC:
        lines = [
            "# sdbox: the outer network as set on the greeter (static)",
            "[Match]", f"Name={interface}", "",
            "[Network]", f"Address={settings.address}", f"Gateway={settings.gateway}",
            *(f"DNS={server}" for server in settings.dns),
            *LINK_HARDENING, "IPv6AcceptRA=no",
        ]  # fmt: skip
        return {WIRED_FILE: "\n".join(lines) + "\n"}
    if settings.mode is Mode.WIFI:
        # iwd authenticates; networkd gives the address (iwd's own DHCP stays off). The
        # match is the link's type, not a name: predictable names are wlp…, not wlan0.
        lines = [
            "# sdbox: the outer network as set on the greeter (Wi-Fi, address by DHCP)",
            "[Match]", "Type=wlan", "WLANInterfaceType=station", "",
            "[Network]", "DHCP=yes", *LINK_HARDENING, "", "[DHCPv4]", "RouteMetric=600",
        ]  # fmt: skip
        return {WIFI_FILE: "\n".join(lines) + "\n"}
    lines = [
        "# sdbox: the outer network as set on the greeter (DHCP)",
        "[Match]", f"Name={interface}", "",
        "[Network]", "DHCP=yes", *LINK_HARDENING, "IPv6AcceptRA=yes",
    ]  # fmt: skip
    return {WIRED_FILE: "\n".join(lines) + "\n"}


_PLAIN_SSID = re.compile(r"[A-Za-z0-9_-]+")


def iwd_file_name(ssid: str) -> str:
    """iwd's name for a WPA-personal network's file (iwd.network(5)): plain, or ``=`` + hex."""
    if _PLAIN_SSID.fullmatch(ssid):
        return f"{ssid}.psk"
    return "=" + ssid.encode("utf-8").hex() + ".psk"


def iwd_files(settings: OuterSettings) -> dict[str, str]:
    """iwd's network file for ``settings`` (name -> text); {} for a wired network.

    WPA2 and WPA3 personal share one file: iwd picks SAE (WPA3) when the
    access point offers it and PSK (WPA2) otherwise, from the same
    passphrase. A 64-digit hex key is WPA2's raw key (SAE has none).
    """
    if settings.mode is not Mode.WIFI:
        return {}
    secret = settings.passphrase
    key = f"PreSharedKey={secret}" if _HEX_KEY.fullmatch(secret) else f"Passphrase={secret}"
    lines = ["[Security]", key, "", "[Settings]", "AutoConnect=true"]
    return {iwd_file_name(settings.ssid): "\n".join(lines) + "\n"}
