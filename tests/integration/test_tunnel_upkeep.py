"""The tunnel kept right while the box runs: refreshed CRLs reach charon; named gateways resolve.

Same namespaces, charons and TPM key as test_tunnel.py (its fixtures); the
box's CRL cache and the `sdbox` commands an operator (or the packaged units)
runs are the real ones.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.network.events import Reason, TunnelEvent, TunnelState
from sdbox.trust.pki import Pki
from tests.cli import sdbox_argv
from tests.integration import test_tunnel
from tests.integration.session_servers import free_port
from tests.integration.test_tunnel import UP_TIMEOUT, BoxIdentity
from tests.integration.tunnel_env import GATEWAY_IDS, Centre, TunnelRig

pytestmark = [pytest.mark.integration, pytest.mark.network, pytest.mark.timeout(240)]

# test_tunnel.py's fixtures, under the same names here
centre = test_tunnel.centre
box_identity = test_tunnel.box_identity
rig = test_tunnel.rig


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
    # refresh reports them and fails, and charon gets the newest lists held all the same
    assert code == (0 if set(status.values()) == {"updated"} else 1)
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
