"""`sdbox trust refresh`: CRLs from their distribution points on a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore
from tests.cli import sdbox_argv
from tests.integration.session_servers import free_port

pytestmark = pytest.mark.integration
BUILD_TIME = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class CrlBench:
    """A PKI whose distribution points are a loopback HTTP server serving ``served``."""

    pki: Pki
    served: Path
    crl_dir: Path
    config: Path
    port: int

    def publish(self, name: str, crl: x509.CertificateRevocationList) -> None:
        (self.served / f"{name}.crl").write_bytes(crl.public_bytes(serialization.Encoding.DER))

    def store(self) -> RevocationStore:
        return RevocationStore(self.crl_dir, build_time=BUILD_TIME)

    def cached(self, name: str) -> bytes:
        issuer = self.pki.authority(name).cert.subject
        held = next(iter(self.store().crls_for(issuer)))
        return held.crl.public_bytes(serialization.Encoding.DER)

    def refresh(self, *urls: str) -> tuple[int, dict[str, dict[str, object]]]:
        extra = [a for u in urls for a in ("--url", u)]
        proc = subprocess.run(
            [*sdbox_argv(), "trust", "refresh", "--config",
             str(self.config), "--json", *extra],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        doc = json.loads(proc.stdout)
        return proc.returncode, {str(r["url"]).rsplit("/", 1)[-1]: r for r in doc["results"]}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def crls(tmp_path: Path) -> Iterator[CrlBench]:
    port = free_port()
    pki = Pki.init(tmp_path / "pki", crl_base_url=f"http://127.0.0.1:{port}/")
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(_Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pem = serialization.Encoding.PEM
    (tmp_path / "roots.pem").write_bytes(pki.root.cert.public_bytes(pem))
    (tmp_path / "intermediates.pem").write_bytes(
        b"".join(c.public_bytes(pem) for c in pki.intermediates)
    )
    crl_dir = tmp_path / "crl"
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[trust]
anchors = "{tmp_path / "roots.pem"}"
intermediates = "{tmp_path / "intermediates.pem"}"
crl_dir = "{crl_dir}"
build_time = "{BUILD_TIME.isoformat()}"
crl_urls = ["http://127.0.0.1:{port}/project-ca.crl"]
"""
    )
    bench = CrlBench(pki, served, crl_dir, config, port)
    bench.publish("root", pki.crl("root"))
    bench.publish("project-ca", pki.crl("project-ca"))
    yield bench
    server.shutdown()
    server.server_close()


def test_good_refresh_replaces_the_cache_and_advances_the_time_floor(crls: CrlBench) -> None:
    code, results = crls.refresh()
    assert code == 0, results
    # root.crl comes from the intermediates' own distribution point
    assert results["root.crl"]["status"] == "updated"
    assert results["project-ca.crl"]["status"] == "updated"
    floor = crls.store().time_floor
    assert floor > BUILD_TIME
    newer = crls.pki.crl("project-ca", now=datetime.now(UTC) + timedelta(minutes=1))
    crls.publish("project-ca", newer)
    code, results = crls.refresh()
    assert code == 0
    assert results["project-ca.crl"]["status"] == "updated"
    assert results["project-ca.crl"]["crl_number"] == 2
    assert results["root.crl"]["status"] == "unchanged"
    assert crls.cached("project-ca") == newer.public_bytes(serialization.Encoding.DER)
    assert crls.store().time_floor > floor


def _forged(crls: CrlBench) -> x509.CertificateRevocationList:
    ca = crls.pki.project_ca.cert
    now = datetime.now(UTC)
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + timedelta(days=7))
        .add_extension(x509.CRLNumber(99), critical=False)
        .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    )


def _badly_numbered(crls: CrlBench, *, number: int | None) -> x509.CertificateRevocationList:
    """The project CA's own list, newer than the one held, numbered wrongly (RFC 5280 5.2.3)."""
    ca = crls.pki.project_ca
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=7))
    )
    if number is not None:  # a critical number; else none at all
        builder = builder.add_extension(x509.CRLNumber(number), critical=True)
    return builder.sign(ca.key, hashes.SHA384())


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("bad-signature", "bad_signature"),
        ("critical-number", "malformed"),
        ("no-number", "malformed"),
        ("stale", "stale"),
        ("rollback", "rollback"),
        ("missing", "unreachable"),
        ("garbage", "malformed"),
    ],
)
def test_a_bad_download_keeps_the_previous_copy(crls: CrlBench, case: str, status: str) -> None:
    code, _ = crls.refresh()
    assert code == 0
    crls.publish("project-ca", crls.pki.crl("project-ca"))  # number 2, held
    assert crls.refresh()[0] == 0
    held = crls.cached("project-ca")
    floor = crls.store().time_floor
    served = crls.served / "project-ca.crl"
    if case == "bad-signature":
        crls.publish("project-ca", _forged(crls))
    elif case in ("critical-number", "no-number"):
        number = 3 if case == "critical-number" else None
        crls.publish("project-ca", _badly_numbered(crls, number=number))
    elif case == "stale":
        past = datetime.now(UTC) - timedelta(days=30)
        crls.publish(
            "project-ca", crls.pki.crl("project-ca", now=past, next_update=past + timedelta(days=7))
        )
    elif case == "rollback":
        crls.pki._state["crl_number"]["project-ca"] = 0  # the CA's counter went backwards
        crls.publish("project-ca", crls.pki.crl("project-ca"))
    elif case == "missing":
        served.unlink()
    else:
        served.write_bytes(b"not a CRL")
    code, results = crls.refresh()
    # a distribution point not reached is temporary (75, the unit's SuccessExitStatus); a list
    # refused is a failure (1)
    assert code == (75 if status == "unreachable" else 1)
    assert results["project-ca.crl"]["status"] == status, results
    assert results["project-ca.crl"]["detail"]
    if case.endswith("number"):  # says what the CA must fix
        assert "non-critical CRL number" in str(results["project-ca.crl"]["detail"])
    assert crls.cached("project-ca") == held
    assert crls.store().time_floor == floor


def test_a_dead_server_is_reported(crls: CrlBench) -> None:
    assert crls.refresh()[0] == 0
    held = crls.cached("project-ca")
    dead = f"http://127.0.0.1:{free_port()}/dead.crl"
    code, results = crls.refresh(dead)
    assert code == 75
    unreachable = [r for r in results.values() if r["status"] == "unreachable"]
    assert len(unreachable) == 1
    assert "refused" in str(unreachable[0]["detail"]).lower()
    assert crls.cached("project-ca") == held
