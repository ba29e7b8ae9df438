"""The box's tunnel to the centre, between network namespaces, as an operator would see it.

Real strongSwan on both sides (charon-systemd, one per namespace), the box key
in a software TPM reached through PKCS#11 (p11-kit's server in front of
libtpm2-pkcs11), the reason for every refusal read through the tunnel module's
events (VICI + charon's error-notify alerts). tunnel_env.py has the topology.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509

from sdbox.identity import IdentityConfig
from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.trust.pki import Pki
from tests.integration.tpm_env import SoftwareTpm, tpm_identity_config
from tests.integration.tunnel_env import (
    GATEWAY_IDS,
    GATEWAYS,
    Centre,
    TunnelRig,
    expired_window,
    network_missing,
    provision_box,
    read_capture,
    tcpdump,
    tunnel_rig,
)

pytestmark = [pytest.mark.integration, pytest.mark.network, pytest.mark.timeout(240)]

UP_TIMEOUT = 40.0


@dataclass(frozen=True)
class BoxIdentity:
    config: IdentityConfig
    certificate: x509.Certificate


@pytest.fixture(scope="module")
def centre(tmp_path_factory: pytest.TempPathFactory) -> Centre:
    return Centre(Pki.init(tmp_path_factory.mktemp("centre-pki")),
                  Pki.init(tmp_path_factory.mktemp("other-pki")))  # fmt: skip


@pytest.fixture(scope="module")
def box_identity(swtpm: SoftwareTpm, centre: Centre,
                 tmp_path_factory: pytest.TempPathFactory) -> BoxIdentity:  # fmt: skip
    missing = network_missing()
    if missing:
        pytest.skip(f"network namespace tests: {missing}")
    directory = tmp_path_factory.mktemp("box-identity")
    # a token of its own on the session's TPM (test_identity_tpm makes others there)
    config = replace(
        tpm_identity_config(swtpm, directory, directory / "box.pem"), token_label="tunnel-box"
    )
    return BoxIdentity(config, provision_box(config, centre.pki))


@pytest.fixture
def rig(tmp_path: Path, swtpm: SoftwareTpm, box_identity: BoxIdentity,
        centre: Centre) -> Iterator[TunnelRig]:  # fmt: skip
    with tunnel_rig(tmp_path, swtpm, box_identity.config, centre,
                    box_identity.certificate) as rig:  # fmt: skip
        yield rig


def is_up(event: TunnelEvent) -> bool:
    return event.state is TunnelState.UP


def test_the_tunnel_comes_up_and_carries_the_centres_traffic(
    rig: TunnelRig, box_identity: BoxIdentity
) -> None:
    rig.configure_gateways()
    rig.configure_box(box_identity.config)
    # without the tunnel, the centre is not reachable (the firewall keeps plaintext off
    # the LAN route the box has)
    assert rig.echo(timeout=2) is None
    started = time.monotonic()
    rig.start_tunnel()
    up = rig.wait_for(is_up, UP_TIMEOUT)
    print(f"\ntunnel up: {up.at - started:.2f} s after start_tunnel, "
          f"{up.at - rig.charons_started_at:.2f} s after both charons were started "
          "(configuration over VICI included)")
    assert up.gateway == GATEWAYS[0]
    assert up.inner_address is not None
    assert up.inner_address.startswith("10.99.0.")
    assert rig.echo(b"hello bubble") == b"hello bubble"
    # the traffic went through an IPsec SA: its byte counters moved
    with rig.box_charon.vici() as vici:
        sas = vici.list_sas()
    assert [sa.connection for sa in sas if sa.established] == ["centre-1"]
    assert sas[0].remote_id == GATEWAY_IDS[0]


def test_a_capture_on_the_outer_interface_shows_only_ike_and_esp_to_the_gateway(
    rig: TunnelRig, box_identity: BoxIdentity, tmp_path: Path
) -> None:
    rig.configure_gateways()
    rig.configure_box(box_identity.config)
    capture = tmp_path / "outer.pcap"
    dump = tcpdump(rig.box, "eth0", capture)
    try:
        rig.start_tunnel()
        rig.wait_for(is_up, UP_TIMEOUT)
        payload = b"secret research data " * 50
        assert rig.echo(payload) == payload
        # a plaintext attempt past the tunnel: a UDP datagram to the bubble forced out of
        # the outer interface (SO_BINDTODEVICE), which only the firewall stops
        leak = rig.box.exec("python3", "-c", "import socket; s=socket.socket(socket.AF_INET, "
                            "socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, 25, b'eth0'); "
                            "s.sendto(b'leak', ('10.20.0.1', 9))", check=False)  # fmt: skip
        assert "Operation not permitted" in leak.stderr  # nft's drop, seen by the sender
        time.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait(10)
    packets = read_capture(capture)
    ip_packets = [p for p in packets if " IP " in p]
    assert ip_packets, f"the capture saw nothing: {packets}"
    for packet in ip_packets:
        ike = ".500 " in packet or ".500:" in packet or ".4500" in packet
        esp = "ESP(spi=" in packet
        assert ike or esp, packet
        assert GATEWAYS[0] in packet, packet
    assert any("ESP(spi=" in p for p in ip_packets)
    assert not any("secret research data" in p for p in packets)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("another_ca", Reason.GATEWAY_CERTIFICATE_REFUSED),
        ("another_name", Reason.GATEWAY_CERTIFICATE_REFUSED),
        ("expired", Reason.GATEWAY_CERTIFICATE_EXPIRED),
        ("revoked", Reason.GATEWAY_CERTIFICATE_REVOKED),
    ],
)
def test_a_gateway_certificate_the_box_must_not_trust_is_refused_with_its_reason(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre, case: str, reason: Reason
) -> None:
    crls = None
    if case == "another_ca":
        bad = centre.gateway_certificate(GATEWAY_IDS[0], pki=centre.other_pki)
    elif case == "another_name":
        bad = centre.gateway_certificate("intruder.centre.test")
    elif case == "expired":
        not_before, not_after = expired_window()
        bad = centre.gateway_certificate(GATEWAY_IDS[0], not_before=not_before,
                                         not_after=not_after)  # fmt: skip
    else:
        bad = centre.gateway_certificate(GATEWAY_IDS[0])
        centre.pki.revoke(bad[0], x509.ReasonFlags.key_compromise)
        crls = [centre.pki.crl("root"), centre.pki.crl("server-ca")]
    rig.configure_gateways({1: bad})
    rig.configure_box(box_identity.config, crls=crls)
    # one gateway tried: the refusal is not hidden behind a failover
    rig.start_tunnel(retry_delay_s=30, gateways=1)
    refused = rig.wait_for(lambda e: e.state is TunnelState.REFUSED, UP_TIMEOUT)
    assert refused.reason is reason, refused.describe()
    assert refused.gateway == GATEWAYS[0]
    assert rig.echo(timeout=1) is None


def test_a_box_revoked_at_the_centre_is_refused(
    rig: TunnelRig, box_identity: BoxIdentity, centre: Centre
) -> None:
    # the centre's CRL names this box's certificate (a fresh one, not the session's)
    revoked = centre.pki.issue_box(box_identity.certificate.public_key(), box_id="box-0001")
    centre.pki.revoke(revoked, x509.ReasonFlags.cessation_of_operation)
    rig.box_certificate = revoked
    rig.configure_gateways(crls=[centre.pki.crl("root"), centre.pki.crl("box-ca")])
    rig.configure_box(box_identity.config)
    rig.start_tunnel(retry_delay_s=30)
    refused = rig.wait_for(lambda e: e.state is TunnelState.REFUSED, UP_TIMEOUT)
    assert refused.reason is Reason.GATEWAY_REFUSED_BOX, refused.describe()


def test_when_the_first_gateway_is_down_the_second_is_used(
    rig: TunnelRig, box_identity: BoxIdentity
) -> None:
    rig.configure_gateways()
    rig.configure_box(box_identity.config)
    # gateway 1 is gone: its address no longer answers (not even ARP)
    rig.centre_ns.ip("addr", "del", f"{GATEWAYS[0]}/24", "dev", "uplink")
    started = time.monotonic()
    rig.start_tunnel()
    unreachable = rig.wait_for(lambda e: e.reason is Reason.GATEWAY_UNREACHABLE, UP_TIMEOUT)
    assert unreachable.gateway == GATEWAYS[0]
    up = rig.wait_for(is_up, UP_TIMEOUT)
    print(f"\nfailover to the second gateway: {up.at - started:.2f} s after start")
    assert up.gateway == GATEWAYS[1]
    assert rig.echo(b"via gateway 2") == b"via gateway 2"


def test_a_cut_outer_link_takes_the_tunnel_down_and_it_returns_with_the_link(
    rig: TunnelRig, box_identity: BoxIdentity
) -> None:
    rig.configure_gateways()
    rig.configure_box(box_identity.config)
    rig.start_tunnel()
    rig.wait_for(is_up, UP_TIMEOUT)
    mark = len(rig.events)
    rig.box.ip("link", "set", "eth0", "down")
    cut = time.monotonic()
    down = rig.wait_for(lambda e: e.state is TunnelState.DOWN, 60, since=mark)
    print(f"\nlink cut -> tunnel down reported: {down.at - cut:.2f} s")
    assert down.reason is Reason.NO_NETWORK, down.describe()
    mark = len(rig.events)
    rig.box.ip("link", "set", "eth0", "up")
    rig.box.ip("route", "replace", "10.20.0.0/16", "via", GATEWAYS[0])
    restored = time.monotonic()
    up = rig.wait_for(is_up, 60, since=mark)
    print(f"link back -> tunnel up: {up.at - restored:.2f} s")
    assert rig.echo(b"back") == b"back"


def test_a_killed_responder_takes_the_tunnel_down_and_it_returns_when_restarted(
    rig: TunnelRig, box_identity: BoxIdentity
) -> None:
    rig.configure_gateways()
    rig.configure_box(box_identity.config)
    rig.start_tunnel()
    rig.wait_for(is_up, UP_TIMEOUT)
    mark = len(rig.events)
    rig.centre_charon.kill()
    killed = time.monotonic()
    down = rig.wait_for(lambda e: e.state is TunnelState.DOWN, 60, since=mark)
    print(f"\nresponder killed -> tunnel down reported: {down.at - killed:.2f} s")
    assert down.reason is Reason.GATEWAY_UNREACHABLE, down.describe()
    assert rig.echo(timeout=1) is None
    mark = len(rig.events)
    rig.centre_charon.start()
    rig.configure_gateways()
    restarted = time.monotonic()
    up = rig.wait_for(is_up, 90, since=mark)
    print(f"responder back -> tunnel up: {up.at - restarted:.2f} s")
    assert up.gateway in GATEWAYS
    assert rig.echo(b"again") == b"again"
