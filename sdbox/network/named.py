"""Gateways given as DNS names: resolved at each attempt, the firewall and charon told.

A site profile may name a gateway (``address = "gw2.centre.example"``), so
that a centre can move it without touching its boxes. Before each attempt
on such a gateway, :class:`NamedGateways` (the tunnel's ``prepare`` hook):

1. asks the site's resolvers (``[box] dns``; sdbox.network.dns, not the C
   library's resolver, which would ask whoever /etc/resolv.conf names);
2. sets the firewall's ``gateways4``/``gateways6`` to the profile's literal
   addresses plus every name's latest addresses (one ``nft -f`` transaction:
   a gateway that moved loses its old address);
3. reloads that gateway's connection in charon with the addresses as
   ``remote_addrs``, so that charon never resolves anything itself and
   sends its first packet where the firewall expects it.

The gateway is still pinned by its IKE identity and CA: DNS only says where
to knock. A name that does not resolve is "gateway unreachable", with the
resolvers' answers as the detail, and the next gateway is tried.

With DHCP the resolvers come from the lease; wiring the DHCP client to
``resolvers`` (and to the firewall's ``resolvers4``/``resolvers6`` sets)
belongs to the boot-time tunnel, which is not written yet (docs/tunnel.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sdbox.network import firewall, strongswan
from sdbox.network.dns import resolve
from sdbox.network.site import SiteProfile, parse_address
from sdbox.network.tunnel import GatewayTarget, Vici
from sdbox.process import run

RuleLoader = Callable[[str], None]


def load_rules(script: str) -> None:
    """``nft -f -`` with ``script`` (root, in the box's network namespace)."""
    run(["nft", "-f", "-"], what="updating the firewall's gateway sets", timeout=10,
        input=script.encode())  # fmt: skip


class NamedGateways:
    """The tunnel's ``prepare`` hook for a site profile (literal addresses pass through)."""

    def __init__(
        self,
        profile: SiteProfile,
        connections: Mapping[str, strongswan.Section],
        vici_socket: Path,
        *,
        resolvers: Sequence[str] | None = None,
        load: RuleLoader = load_rules,
        timeout_s: float = 2.0,
    ) -> None:
        self._literal = [g.address for g in profile.gateways if parse_address(g.address)]
        self._connections = connections
        self._vici_socket = vici_socket
        self._resolvers = list(profile.box.dns if resolvers is None else resolvers)
        self._load = load
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._resolved: dict[str, list[str]] = {}

    def __call__(self, target: GatewayTarget) -> str:
        """The address to try ``target`` at, made reachable (DnsError, CommandFailed, TunnelError)."""
        if parse_address(target.address) is not None:
            return target.address
        addresses = resolve(target.address, self._resolvers, timeout_s=self._timeout_s)
        with self._lock:
            self._resolved[target.address] = addresses
            allowed = self._literal + [a for found in self._resolved.values() for a in found]
        self._load(firewall.gateway_sets(allowed))
        connection = dict(self._connections[target.connection])
        connection["remote_addrs"] = addresses
        with Vici(self._vici_socket) as vici:
            vici.load_connections({target.connection: connection})
        return addresses[0]
