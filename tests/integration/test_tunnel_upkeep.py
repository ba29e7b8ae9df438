"""The tunnel kept right while the box runs: refreshed CRLs reach charon; named gateways resolve.

Same namespaces, charons and TPM key as test_tunnel.py (its fixtures); the
box's CRL cache and the `sdbox` commands an operator (or the packaged units)
runs are the real ones.
"""

from __future__ import annotations

import functools
import http.server
import json
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.network import firewall, strongswan
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.network.named import NamedGateways
from sdbox.network.site import SiteProfile, load_bytes
from sdbox.network.tunnel import GatewayTarget, Tunnel, gateway_targets
from sdbox.trust.pki import Pki
from tests.cli import sdbox_argv
from tests.integration import test_tunnel
from tests.integration.centre_env import thread_in_netns
from tests.integration.session_servers import free_port
from tests.integration.test_tunnel import UP_TIMEOUT, BoxIdentity
from tests.integration.tpm_env import SoftwareTpm, tpm_identity_config
from tests.integration.tunnel_env import (
    BOX_OUTER,
    CENTRE_NET,
    GATEWAY_IDS,
    GATEWAYS,
    Centre,
    TunnelRig,
    namespaces,
    network_missing,
    provision_box,
)

pytestmark = [pytest.mark.integration, pytest.mark.network, pytest.mark.timeout(240)]

# test_tunnel.py's fixtures, under the same names here (the box key is this module's own)
centre = test_tunnel.centre
rig = test_tunnel.rig


@pytest.fixture(scope="module")
def box_identity(swtpm: SoftwareTpm, centre: Centre,
                 tmp_path_factory: pytest.TempPathFactory) -> BoxIdentity:  # fmt: skip
    missing = network_missing()
    if missing:
        pytest.skip(f"network namespace tests: {missing}")
    directory = tmp_path_factory.mktemp("box-identity-upkeep")
    # a token of its own: test_tunnel.py's is on the same session TPM, with its PIN elsewhere
    config = replace(
        tpm_identity_config(swtpm, directory, directory / "box.pem"), token_label="tunnel-upkeep"
    )
    return BoxIdentity(config, provision_box(config, centre.pki))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def distribution(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The centre's CRL distribution point, on the host's loopback: (directory served, base URL)."""
    served = tmp_path / "www"
    served.mkdir()
    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(_Quiet, directory=str(served))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def _agent_trust(tmp_path: Path, pki: Pki, base_url: str) -> Path:
    """The [trust] part of the box's agent configuration, with an empty CRL cache."""
    pem = serialization.Encoding.PEM
    (tmp_path / "roots.pem").write_bytes(pki.root.cert.public_bytes(pem))
    (tmp_path / "intermediates.pem").write_bytes(
        b"".join(c.public_bytes(pem) for c in pki.intermediates)
    )
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[trust]
anchors = "{tmp_path / "roots.pem"}"
intermediates = "{tmp_path / "intermediates.pem"}"
crl_dir = "{tmp_path / "crl"}"
build_time = "{pki.root.cert.not_valid_before_utc.isoformat()}"
crl_urls = ["{base_url}/root.crl", "{base_url}/server-ca.crl"]
""")
    return config


def _publish(served: Path, name: str, crl: x509.CertificateRevocationList) -> None:
    (served / f"{name}.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))


def _reconnect(rig: TunnelRig) -> TunnelEvent:
    """A new IKE SA to gateway 1 (the old one closed): what the gateway's certificate gets now."""
    if rig.tunnel is not None:
        rig.tunnel.stop()
        rig.tunnel = None
    mark = len(rig.events)
    rig.start_tunnel(retry_delay_s=30, gateways=1)
    return rig.wait_for(lambda e: e.state in (TunnelState.UP, TunnelState.REFUSED), UP_TIMEOUT,
                        since=mark)  # fmt: skip


def _sdbox(*args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run([*sdbox_argv(), *args, "--json"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    return done.returncode, json.loads(done.stdout)


def test_a_refreshed_crl_reaches_charon_and_a_gateway_revoked_since_is_refused(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre, tmp_path: Path,
    distribution: tuple[Path, str],
) -> None:  # fmt: skip
    served, base_url = distribution
    gateway = centre.gateway_certificate(GATEWAY_IDS[0])
    rig.configure_gateways({1: gateway})
    rig.configure_box(box_identity.config)  # the CRLs the box had when charon started
    assert _reconnect(rig).state is TunnelState.UP
    # the centre revokes the gateway's certificate and publishes its CA's next list
    centre.pki.revoke(gateway[0], x509.ReasonFlags.key_compromise)
    _publish(served, "root", centre.pki.crl("root"))
    _publish(served, "server-ca", centre.pki.crl("server-ca"))
    # charon still holds the old lists: a new IKE SA still accepts the gateway
    assert _reconnect(rig).state is TunnelState.UP
    config = _agent_trust(tmp_path, centre.pki, base_url)
    vici = str(rig.box_charon.paths.vici_socket)
    code, doc = _sdbox("trust", "refresh", "--config", str(config), "--charon-vici", vici)
    results = doc["results"]
    assert isinstance(results, list)
    status = {r["url"]: r["status"] for r in results}
    assert status[f"{base_url}/root.crl"] == "updated", doc
    assert status[f"{base_url}/server-ca.crl"] == "updated", doc
    # the test PKI's certificates also name distribution points nobody serves here: the
    # refresh reports them unreached (75: temporary, every cached list kept), and charon gets
    # the newest lists held all the same
    unreached = set(status.values()) - {"updated"}
    assert code == (0 if not unreached else 75 if unreached == {"unreachable"} else 1), doc
    charon = doc["charon"]
    assert isinstance(charon, dict)
    assert charon["loaded"] == 2
    assert sorted(charon["issuers"]) == sorted(
        c.subject.rfc4514_string() for c in (centre.pki.root.cert, centre.pki.server_ca.cert)
    )
    refused = _reconnect(rig)
    assert refused.state is TunnelState.REFUSED, refused.describe()
    assert refused.reason is Reason.GATEWAY_CERTIFICATE_REVOKED, refused.describe()
    # the step alone, as a root unit runs it after the refresh: the same lists, nothing breaks
    code, again = _sdbox("tunnel", "load-crls", "--config", str(config), "--vici", vici)
    assert code == 0, again
    assert again["loaded"] == 2
    refused = _reconnect(rig)
    assert refused.reason is Reason.GATEWAY_CERTIFICATE_REVOKED, refused.describe()


def test_loading_crls_into_a_charon_that_is_not_there_is_a_failure_that_says_so(
    tmp_path: Path, centre: Centre, distribution: tuple[Path, str]
) -> None:
    config = _agent_trust(tmp_path, centre.pki, distribution[1])
    code, doc = _sdbox("tunnel", "load-crls", "--config", str(config),
                       "--vici", str(tmp_path / "no-charon.vici"))  # fmt: skip
    assert code == 1
    assert "no-charon.vici" in str(doc["error"])


# --- gateways given as DNS names ----------------------------------------------------

RESOLVER = "192.0.2.53"  # the site's resolver, on the outer network (the centre's side of it)


class TinyDns:
    """A DNS server for the test (dnsmasq is not installed here): A records from ``zone``.

    Written apart from sdbox.network.dns on purpose: the client is not checked
    against its own reading of RFC 1035. AAAA questions get an empty answer,
    unknown names NXDOMAIN. Every question is kept in ``asked`` as (name, type, source).
    """

    def __init__(self, zone: dict[str, str]) -> None:
        self.zone = zone
        self.asked: list[tuple[str, int, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((RESOLVER, 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                message, source = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            ident, _flags, _qd, _an, _ns, _ar = struct.unpack_from("!6H", message)
            labels, offset = [], 12
            while message[offset]:
                labels.append(message[offset + 1 : offset + 1 + message[offset]].decode())
                offset += 1 + message[offset]
            question = message[12 : offset + 5]
            name, qtype = ".".join(labels).lower(), struct.unpack_from("!H", message, offset + 1)[0]
            self.asked.append((name, qtype, source[0]))
            address = self.zone.get(name)
            rcode, answers = (3, b"") if address is None else (0, b"")
            if address is not None and qtype == 1:
                answers = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
            header = struct.pack("!6H", ident, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
            self.sock.sendto(header + question + answers, source)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _named_site(gateways: list[tuple[str, str]]) -> SiteProfile:
    entries = "".join(f'[[gateways]]\naddress = "{a}"\nidentity = "{i}"\n\n' for a, i in gateways)
    return load_bytes((entries + f"""
[[networks]]
cidr = "{CENTRE_NET}"
purpose = "bubbles"

[box]
interface = "eth0"
mode = "static"
address = "{BOX_OUTER}/24"
gateway = "{GATEWAYS[0]}"
dns = ["{RESOLVER}"]

[tunnel]
gateway_ca = "/unused/in/tests.pem"
dpd_delay_s = 2
rekey_time_s = 3600
""").encode(), "site.toml")


@pytest.fixture
def named_rig(rig: TunnelRig) -> Iterator[tuple[TunnelRig, TinyDns]]:
    rig.centre_ns.ip("addr", "add", f"{RESOLVER}/24", "dev", "uplink")
    with thread_in_netns(rig.centre_ns.name):  # the server's socket lives in the centre's namespace
        dns = TinyDns({GATEWAY_IDS[0]: GATEWAYS[0], GATEWAY_IDS[1]: GATEWAYS[1]})
    try:
        yield rig, dns
    finally:
        dns.close()


def _start_named(rig: TunnelRig, box_identity: BoxIdentity) -> Tunnel:
    """The box's tunnel on ``rig.profile``, named gateways resolved from inside the box."""
    rig.load_firewall()  # the named profile's ruleset: no gateway address in it yet
    rig.configure_gateways()
    rig.configure_box(box_identity.config)
    connections = strongswan.box_connections(rig.profile, box_certificate=rig.box_certificate,
                                             gateway_ca=rig.centre.pki.server_ca.cert)  # fmt: skip
    named = NamedGateways(rig.profile, connections, rig.box_charon.paths.vici_socket)

    def prepare(target: GatewayTarget) -> str:
        with thread_in_netns(rig.box.name):  # its DNS and its nft, as on the box
            return named(target)

    tunnel = Tunnel(rig.box_charon.paths.vici_socket, rig.box_charon.paths.notify_socket,
                    gateway_targets([g.address for g in rig.profile.gateways]),
                    retry_delay_s=30, route_probe=rig.box.route_exists, prepare=prepare)  # fmt: skip
    tunnel.subscribe(rig._record)
    rig.tunnel = tunnel
    tunnel.start()
    return tunnel


def _gateway_set(rig: TunnelRig) -> str:
    return rig.box.exec("nft", "list", "set", "inet", "sdbox", "gateways4").stdout


def test_a_gateway_given_by_name_is_resolved_through_the_sites_resolver_and_let_through(
    named_rig: tuple[TunnelRig, TinyDns], box_identity: BoxIdentity
) -> None:
    rig, dns = named_rig
    rig.profile = _named_site([(GATEWAY_IDS[0], GATEWAY_IDS[0])])
    _start_named(rig, box_identity)
    up = rig.wait_for(lambda e: e.state is TunnelState.UP, UP_TIMEOUT)
    assert up.gateway == GATEWAYS[0]
    assert GATEWAY_IDS[0] in up.detail
    assert rig.echo(b"by name") == b"by name"
    # asked from the box's outer address, of the site's resolver (not /etc/hosts, not the host's)
    assert (GATEWAY_IDS[0], 1, BOX_OUTER) in dns.asked
    # the firewall learnt the address at run time: it was not in the profile's ruleset
    assert GATEWAYS[0] in _gateway_set(rig)
    assert GATEWAYS[0] not in firewall.ruleset(rig.profile, "libipsec")


def test_a_gateway_name_that_does_not_resolve_is_unreachable_and_the_next_one_is_used(
    named_rig: tuple[TunnelRig, TinyDns], box_identity: BoxIdentity
) -> None:
    rig, dns = named_rig
    rig.profile = _named_site([("gw-gone.centre.test", GATEWAY_IDS[0]),
                               (GATEWAY_IDS[1], GATEWAY_IDS[1])])  # fmt: skip
    _start_named(rig, box_identity)
    gone = rig.wait_for(lambda e: e.gateway == "gw-gone.centre.test", UP_TIMEOUT)
    assert gone.reason is Reason.GATEWAY_UNREACHABLE, gone.describe()
    assert "does not exist" in gone.detail
    assert ("gw-gone.centre.test", 1, BOX_OUTER) in dns.asked
    up = rig.wait_for(lambda e: e.state is TunnelState.UP, UP_TIMEOUT)
    assert up.gateway == GATEWAYS[1]
    assert rig.echo(b"second") == b"second"
    # only the address that resolved is let through
    assert GATEWAYS[1] in _gateway_set(rig)
    assert GATEWAYS[0] not in _gateway_set(rig)


# --- the benchmark's distance ---------------------------------------------------------


def test_the_delaying_link_holds_every_round_trip_for_what_it_is_asked() -> None:
    """The instrument of `make bench` (no netem here): a TCP handshake across it is one round trip.

    A lower bound only, which load cannot break: the relay holds each frame at
    least half the round trip each way (how much longer depends on the machine).
    """
    missing = network_missing()
    if missing:
        pytest.skip(f"network namespace tests: {missing}")
    with namespaces(rtt_ms=120) as (box, centre_ns):
        with thread_in_netns(centre_ns.name):
            listener = socket.create_server((GATEWAYS[0], 0))
        port = listener.getsockname()[1]
        handshakes = []
        try:
            with thread_in_netns(box.name):
                for _ in range(3):
                    started = time.monotonic()
                    with socket.create_connection((GATEWAYS[0], port), timeout=10):
                        handshakes.append(time.monotonic() - started)
                    listener.accept()[0].close()
        finally:
            listener.close()
    assert len(handshakes) == 3
    assert min(handshakes) >= 0.120, handshakes
