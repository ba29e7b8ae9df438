"""The box's nftables ruleset: nothing but what the tunnel needs on the outer interface.

Generated from the site profile, loaded atomically with ``nft -f`` (the file
replaces the ``inet sdbox`` table as a whole). On the outer links only (the
profile's interface, and a wireless one: the researcher may choose Wi-Fi on
the greeter):

- DHCP (whatever the profile's ``[box] mode``: the researcher may choose DHCP
  where the profile fixes an address);
- DNS to the resolvers, only when a gateway is a DNS name (static resolvers
  from the profile; with DHCP the lease's resolvers are added to the
  ``resolvers4``/``resolvers6`` sets at run time);
- IKE (UDP 500 and 4500, which also carries ESP-in-UDP behind NAT) and ESP,
  to and from the gateways only (gateways given as names are added to the
  ``gateways4``/``gateways6`` sets once resolved);
- replies to what the box sent (conntrack), nothing new from outside;
- until the box is enrolled, and only when asked for (``enrolment=True``): TCP
  to the site's enrolment endpoint (``[enrolment] url``), in a chain of its
  own (:data:`ENROLMENT_CHAIN`) that is flushed once enrolment is over, so the
  opening closes without reloading the rest (docs/tunnel.md, "Enrolment").

Inner traffic (before encryption / after decryption) is allowed to and from
the site's tunnel networks only, and only when it is IPsec-protected
(``rt ipsec exists`` on the way out, ``meta ipsec exists`` on the way in):
with the tunnel down, traffic for the centre is dropped rather than sent in
the clear. Everything else is dropped, and nothing is forwarded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sdbox.network.site import IpAddress, IpNetwork, SiteProfile, parse_address
from sdbox.network.strongswan import LIBIPSEC_INTERFACE, DataPlane

TABLE = "sdbox"
# emptied (`nft flush chain inet sdbox enrolment`) as soon as the box is enrolled
ENROLMENT_CHAIN = "enrolment"
IKE_PORTS = "{ 500, 4500 }"


# Wireless links: systemd's predictable names (wlp…) and the kernel's own (wlan0) both
# start so. A Wi-Fi network the researcher sets (docs/desk.md) is an outer link too.
WIRELESS_LINKS = "wl*"


def outer_links(profile: SiteProfile) -> str:
    """nft's match for the outer links: the profile's interface and any wireless one."""
    return f'{{ "{profile.box.interface}", "{WIRELESS_LINKS}" }}'


def _set(name: str, kind: str, values: Iterable[IpAddress | IpNetwork], interval: bool) -> str:
    parts = [f"type {kind};"]
    if interval:
        parts.append("flags interval;")
    items = sorted({str(v) for v in values})
    if items:  # nft refuses an empty element list; an empty set is declared without one
        parts.append(f"elements = {{ {', '.join(items)} }};")
    return f"    set {name} {{ {' '.join(parts)} }}"


def ruleset(profile: SiteProfile, data_plane: DataPlane = "kernel", *, enrolment: bool = False) -> str:
    """The ruleset file for ``nft -f``.

    ``enrolment``: also let the box reach the profile's enrolment endpoint (a box
    without a certificate; nothing is added when the profile names none).
    With charon's own data plane (``libipsec``: machines whose kernel lacks ESP)
    protected traffic is what goes into and comes out of its TUN device.
    """
    if data_plane == "kernel":
        protected_out, unprotected_in = "rt ipsec exists", "meta ipsec missing"
    else:
        protected_out = f'oifname "{LIBIPSEC_INTERFACE}"'
        unprotected_in = f'iifname != "{LIBIPSEC_INTERFACE}"'

    outer = outer_links(profile)
    gateways = [a for g in profile.gateways if (a := parse_address(g.address)) is not None]
    networks = profile.tunnel_networks
    resolvers = [ipaddress.ip_address(r) for r in profile.box.dns]
    need_dns = profile.gateways_are_names()

    def v4(values: Iterable[IpAddress | IpNetwork]) -> list[IpAddress | IpNetwork]:
        return [v for v in values if v.version == 4]

    def v6(values: Iterable[IpAddress | IpNetwork]) -> list[IpAddress | IpNetwork]:
        return [v for v in values if v.version == 6]

    sets = [
        _set("gateways4", "ipv4_addr", v4(gateways), interval=False),
        _set("gateways6", "ipv6_addr", v6(gateways), interval=False),
        _set("tunnel4", "ipv4_addr", v4(networks), interval=True),
        _set("tunnel6", "ipv6_addr", v6(networks), interval=True),
        _set("resolvers4", "ipv4_addr", v4(resolvers), interval=False),
        _set("resolvers6", "ipv6_addr", v6(resolvers), interval=False),
    ]
    # output is stateless on purpose: an established inner connection must not keep
    # flowing in the clear once its SA is gone
    out_rules = ['oifname "lo" accept', f"jump {ENROLMENT_CHAIN}"]
    enrol_rules = []
    endpoint, port = profile.enrolment.address, profile.enrolment.port
    if enrolment and endpoint is not None and port is not None:
        family = "ip" if endpoint.version == 4 else "ip6"
        enrol_rules.append(f'oifname {outer} {family} daddr {endpoint} tcp dport {port} accept')
    in_rules = [
        'iifname "lo" accept',
        # what claims to come from the centre must have come out of the tunnel
        f"ip saddr @tunnel4 {unprotected_in} drop",
        f"ip6 saddr @tunnel6 {unprotected_in} drop",
        "ct state established,related accept",
        # IPv6 needs neighbour discovery and router adverts to work at all
        f'iifname {outer} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} ip6 hoplimit 255 accept',
    ]
    out_rules.append(
        f'oifname {outer} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept'
    )
    # DHCP whatever the profile's own mode: the researcher may choose it on the greeter
    # (a box fixed at the institute, at home behind a DHCP router: docs/desk.md)
    out_rules.append(f"oifname {outer} udp sport 68 udp dport 67 accept")
    in_rules.append(f"iifname {outer} udp sport 67 udp dport 68 accept")
    out_rules.append(f"oifname {outer} udp sport 546 udp dport 547 accept")
    in_rules.append(f"iifname {outer} udp sport 547 udp dport 546 accept")
    if need_dns:
        for family, name in (("ip", "resolvers4"), ("ip6", "resolvers6")):
            out_rules.append(f'oifname {outer} {family} daddr @{name} udp dport 53 accept')
            out_rules.append(f'oifname {outer} {family} daddr @{name} tcp dport 53 accept')
    for family, name in (("ip", "gateways4"), ("ip6", "gateways6")):
        out_rules.append(f'oifname {outer} {family} daddr @{name} udp dport {IKE_PORTS} accept')
        out_rules.append(f'oifname {outer} {family} daddr @{name} meta l4proto esp accept')
        in_rules.append(
            f'iifname {outer} {family} saddr @{name} udp sport {IKE_PORTS} udp dport {IKE_PORTS} accept'
        )
        in_rules.append(f'iifname {outer} {family} saddr @{name} meta l4proto esp accept')
    for family, name in (("ip", "tunnel4"), ("ip6", "tunnel6")):
        # plaintext for the centre leaves only into an IPsec SA (replies come back
        # through the input chain's conntrack rule, new connections from it do not)
        out_rules.append(f"{family} daddr @{name} {protected_out} accept")
    lines = [
        "# generated by sdbox.network.firewall from the site profile: do not edit",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *sets,
        "",
        # declared before the output chain that jumps to it
        f"    chain {ENROLMENT_CHAIN} {{",
        *(f"        {rule}" for rule in enrol_rules),
        "    }",
        "",
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        *(f"        {rule}" for rule in in_rules),
        "    }",
        "",
        "    chain output {",
        "        type filter hook output priority filter; policy drop;",
        *(f"        {rule}" for rule in out_rules),
        "    }",
        "",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def gateway_sets(addresses: Iterable[str]) -> str:
    """An ``nft -f`` script that makes the gateway sets exactly ``addresses`` (one transaction).

    At run time, once gateways given as names are resolved: the profile's
    literal addresses must be among ``addresses``, or they are dropped too.
    """
    parsed = sorted({ipaddress.ip_address(a) for a in addresses}, key=lambda a: (a.version, a))
    lines = [f"flush set inet {TABLE} gateways4", f"flush set inet {TABLE} gateways6"]
    for version, name in ((4, "gateways4"), (6, "gateways6")):
        members = [str(a) for a in parsed if a.version == version]
        if members:
            lines.append(f"add element inet {TABLE} {name} {{ {', '.join(members)} }}")
    return "\n".join(lines) + "\n"
