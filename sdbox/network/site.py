"""The site profile (``site.toml``): where the centre is and how the box reaches it.

Written once per site at flashing (``sdbox flash --site FILE``, into the
config area), it names the centre's IPsec gateways in order of preference,
the centre networks reached through the tunnel, and the box's own network.
Declared once as frozen dataclasses (:mod:`sdbox.config`): the parser, the
checks, the error messages (``FILE: [section] key: problem``) and
``sdbox site config-reference`` all come from these declarations. What one
key cannot check alone (overlaps, a gateway behind its own tunnel, a name to
resolve without a resolver) is checked by :func:`check_profile` afterwards,
with messages of the same shape.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sdbox.config import ConfigError, load_section, setting

DEFAULT_PATH = Path("/etc/sdbox/site.toml")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Purpose = Literal["bubbles", "broker", "cmp", "crl", "time", "fleet", "other"]

# RFC 1123 host names: labels of letters, digits and inner hyphens, at least one dot
# (a bare label would be resolved through a search domain the site does not control).
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})+\.?")


def parse_address(value: str) -> IpAddress | None:
    """``value`` as an IP address, or None when it is not one."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def is_dns_name(value: str) -> bool:
    """Whether ``value`` is a fully qualified DNS host name (not an IP address)."""
    return (
        parse_address(value) is None
        and len(value) <= 253
        and _DNS_NAME.fullmatch(value) is not None
        and not value.rstrip(".").rsplit(".", 1)[-1].isdigit()
    )


def _host(value: str) -> str | None:
    if parse_address(value) is not None or is_dns_name(value):
        return None
    return f"{value!r} is neither an IP address nor a fully qualified DNS name"


def _ike_identity(value: str) -> str | None:
    # the gateway's certificate must carry this as a subjectAltName (DNS or IP):
    # strongSwan's remote.id is matched against it
    if parse_address(value) is not None or is_dns_name(value):
        return None
    return (
        f"{value!r} is not an identity a gateway certificate can carry "
        "(a DNS name or an IP address of its subjectAltName)"
    )


def _network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not a network in CIDR notation ({exc})"
        return f"{value!r} has host bits set: did you mean {loose}?"
    return None


def _interface_address(value: str) -> str | None:
    if not value:
        return None
    try:
        interface = ipaddress.ip_interface(value)
    except ValueError:
        return f"{value!r} is not ADDRESS/PREFIX (e.g. 192.0.2.10/24)"
    if "/" not in value:
        return f"{value!r} has no prefix length (ADDRESS/PREFIX, e.g. 192.0.2.10/24)"
    if interface.ip == interface.network.network_address and interface.network.num_addresses > 2:
        return f"{value!r} is the network's own address, not a host address"
    return None


def _optional_address(value: str) -> str | None:
    if value and parse_address(value) is None:
        return f"{value!r} is not an IP address"
    return None


def _addresses(values: list[str]) -> str | None:
    for value in values:
        if parse_address(value) is None:
            return f"{value!r} is not an IP address"
    return None


def _positive_int(value: int) -> str | None:
    return None if value > 0 else "must be greater than 0"


def _interface_name(value: str) -> str | None:
    # IFNAMSIZ is 16 with the terminating NUL; nft and ip take the name as is
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", value):
        return None
    return f"{value!r} is not a network interface name (1-15 letters, digits, '_', '.', '-')"


@dataclass(frozen=True)
class Gateway:
    """One IPsec gateway of the centre."""

    address: str = setting(help="where to reach it: an IP address or a DNS name", check=_host)
    identity: str = setting(
        help="its IKE identity, a subjectAltName of its certificate (strongSwan remote.id)",
        check=_ike_identity,
    )


@dataclass(frozen=True)
class CentreNetwork:
    """A centre network reached only through the tunnel."""

    cidr: str = setting(help="the network, e.g. 10.20.0.0/16", check=_network)
    purpose: Purpose = setting(
        "other", help="what lives there: bubbles, broker, cmp, crl, time, fleet or other"
    )

    @property
    def network(self) -> IpNetwork:
        """The parsed network."""
        return ipaddress.ip_network(self.cidr)


@dataclass(frozen=True)
class BoxNetwork:
    """The box's own (outer) network."""

    interface: str = setting(
        "eth0", help="the outer interface (the only one the firewall lets IKE/ESP out of)",
        check=_interface_name,
    )  # fmt: skip
    mode: Literal["dhcp", "static"] = setting("dhcp", help="dhcp, or static (address below)")
    address: str = setting("", help="static: ADDRESS/PREFIX", check=_interface_address)
    gateway: str = setting("", help="static: the default router", check=_optional_address)
    dns: list[str] = setting(
        [], help="static: resolvers (needed when a gateway is a DNS name)", check=_addresses
    )

    @property
    def interface_address(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | None:
        """The static address, or None with DHCP."""
        return ipaddress.ip_interface(self.address) if self.address else None


@dataclass(frozen=True)
class TunnelSettings:
    """How the tunnel is kept up."""

    gateway_ca: Path = setting(
        Path("/etc/sdbox/trust/gateway-ca.pem"),
        help="the CA that certifies the centre's gateways: a gateway certified by any other is refused",
    )
    dpd_delay_s: int = setting(
        30, help="dead peer detection: probe the gateway after this many idle seconds",
        check=_positive_int,
    )  # fmt: skip
    rekey_time_s: int = setting(
        14400, help="rekey the IKE SA after this many seconds", check=_positive_int
    )


def _enrolment_url(value: str) -> str | None:
    if not value:
        return None
    where = urlsplit(value)
    try:
        port = where.port
    except ValueError:
        port = None
    if where.scheme != "https" or where.hostname is None or port is None or where.path not in ("", "/"):
        return f"{value!r} is not https://ADDRESS:PORT"
    if parse_address(where.hostname) is None:
        return f"{where.hostname} is not an IP address (nothing is resolved before enrolment)"
    return None


@dataclass(frozen=True)
class EnrolmentEndpoint:
    """Where an unenrolled box reaches the centre's enrolment service, outside the tunnel."""

    url: str = setting(
        "",
        help="https://ADDRESS:PORT of the broker's enrolment service on the outer network; the "
        "firewall lets the box reach it only until the box is enrolled (\"\": the image's broker)",
        check=_enrolment_url,
    )

    @property
    def address(self) -> IpAddress | None:
        """The endpoint's address, or None when the profile names none."""
        return parse_address(urlsplit(self.url).hostname or "") if self.url else None

    @property
    def port(self) -> int | None:
        """The endpoint's TCP port, or None when the profile names none."""
        return urlsplit(self.url).port if self.url else None


def _non_empty(values: list[object]) -> str | None:
    return None if values else "the list is empty: name at least one"


@dataclass(frozen=True)
class SiteProfile:
    """The whole site profile."""

    gateways: list[Gateway] = setting(
        help="the centre's gateways, most preferred first", check=_non_empty
    )
    networks: list[CentreNetwork] = setting(
        help="centre networks reached through the tunnel (and only through it)", check=_non_empty
    )
    box: BoxNetwork = setting(BoxNetwork(), help="the box's own network")
    tunnel: TunnelSettings = setting(TunnelSettings(), help="tunnel settings")
    enrolment: EnrolmentEndpoint = setting(
        EnrolmentEndpoint(), help="first boot: the enrolment service outside the tunnel"
    )

    @property
    def tunnel_networks(self) -> list[IpNetwork]:
        """The centre networks, parsed, in the profile's order."""
        return [n.network for n in self.networks]

    def gateways_are_names(self) -> bool:
        """Whether some gateway needs DNS before the tunnel exists."""
        return any(parse_address(g.address) is None for g in self.gateways)


def check_profile(profile: SiteProfile, where: str) -> SiteProfile:
    """What one key cannot check alone; ``FILE: [section] key: problem`` on the first problem."""
    seen: dict[str, int] = {}
    for i, gateway in enumerate(profile.gateways, start=1):
        key = gateway.address.rstrip(".").lower()
        if key in seen:
            raise ConfigError(
                f"{where}: [gateways[{i}]] address: {gateway.address} is already "
                f"[gateways[{seen[key]}]]"
            )
        seen[key] = i
        address = parse_address(gateway.address)
        for j, network in enumerate(profile.networks, start=1):
            if address is not None and address in network.network:
                raise ConfigError(
                    f"{where}: [gateways[{i}]] address: {address} is inside the tunnel network "
                    f"[networks[{j}]] {network.cidr}: a gateway cannot be reached through its own "
                    "tunnel"
                )
    networks = profile.networks
    for j, network in enumerate(networks, start=1):
        for k in range(1, j):
            other = networks[k - 1]
            if network.network.version == other.network.version and network.network.overlaps(
                other.network
            ):
                raise ConfigError(
                    f"{where}: [networks[{j}]] cidr: {network.cidr} overlaps [networks[{k}]] "
                    f"{other.cidr}: list each centre network once"
                )
    enrolment = profile.enrolment.address
    for j, network in enumerate(networks, start=1):
        if enrolment is not None and enrolment in network.network:
            raise ConfigError(
                f"{where}: [enrolment] url: {enrolment} is inside the tunnel network "
                f"[networks[{j}]] {network.cidr}: a box enrols before it has a tunnel"
            )
    box = profile.box
    if box.mode == "static":
        if not box.address or not box.gateway:
            missing = "address" if not box.address else "gateway"
            raise ConfigError(f"{where}: [box] {missing}: required with mode = \"static\"")
        own = ipaddress.ip_interface(box.address)
        router = ipaddress.ip_address(box.gateway)
        if router not in own.network or router == own.ip:
            raise ConfigError(
                f"{where}: [box] gateway: {router} is not another address of the box's network "
                f"{own.network}"
            )
        for j, network in enumerate(networks, start=1):
            if own.network.version == network.network.version and own.network.overlaps(
                network.network
            ):
                raise ConfigError(
                    f"{where}: [box] address: the box's network {own.network} overlaps the tunnel "
                    f"network [networks[{j}]] {network.cidr}: traffic for the centre would leave "
                    "outside the tunnel"
                )
        if profile.gateways_are_names() and not box.dns:
            raise ConfigError(
                f"{where}: [box] dns: a gateway is a DNS name, so a static network needs resolvers"
            )
    else:
        for key, value in (("address", box.address), ("gateway", box.gateway)):
            if value:
                raise ConfigError(
                    f"{where}: [box] {key}: only with mode = \"static\" (DHCP provides it)"
                )
        if box.dns:
            raise ConfigError(
                f"{where}: [box] dns: only with mode = \"static\" (DHCP provides the resolvers)"
            )
    return profile


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a :class:`ConfigError` that names it."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: the site profile does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc


def load_bytes(data: bytes, where: str) -> SiteProfile:
    """Validate a site profile given as bytes; ``where`` names it in errors."""
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text: is this a site profile?") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc})") from exc
    return check_profile(load_section(SiteProfile, raw, where), where)


def load(path: Path = DEFAULT_PATH) -> SiteProfile:
    """Load and validate a site profile."""
    return load_bytes(read_bytes(path), str(path))
