"""A CA for renewal tests: OpenSSL's CMP mock server on loopback, its RA, canned certificates.

Shared by the renewal tests (``tests/integration/renewal_env.py``) and the
hardware-in-the-loop suite's renewal scenario (``hwtests/test_09_renewal.py``,
which imports it from a checkout and skips when it is not installed).

OpenSSL 3.0's mock server returns one canned certificate. For a key update it
compares the request's oldCertID with the *canned certificate's* issuer and
serial (apps/lib/cmp_mock_srv.c, process_cert_request), so the canned
certificate is issued with the old certificate's serial, for the key the card
will generate (the emulated card's key generation is deterministic).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore
from tests.integration.session_servers import free_port, stop, wait_for_port

CMP_RA_EKU = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.28")  # id-kp-cmcRA
STORE_BUILD_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def pem(obj: Any) -> bytes:
    """PEM of a certificate."""
    return bytes(obj.public_bytes(serialization.Encoding.PEM))


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` with ``mode``."""
    path.write_bytes(data)
    path.chmod(mode)
    return path


def renewed_certificate(
    pki: Pki,
    old: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    days: int = 400,
    subject: x509.Name | None = None,
    project: str | None = None,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """What the CA issues: the old certificate's extensions for ``public_key``, same serial."""
    ca = pki.project_ca
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or old.subject)
        .issuer_name(old.issuer)
        .public_key(public_key)
        .serial_number(old.serial_number)
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )
    for ext in old.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectKeyIdentifier):
            value = x509.SubjectKeyIdentifier.from_public_key(public_key)
        if isinstance(value, x509.SubjectAlternativeName) and project is not None:
            value = x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"urn:sdbox:project:{project}")]
            )
        builder = builder.add_extension(value, ext.critical)
    return builder.sign(ca.key, hashes.SHA256())


@dataclass(frozen=True)
class CmpCa:
    """The CA's CMP identity: an RA certificate under the project CA, its key, what it trusts."""

    ra_cert: x509.Certificate
    ra_cert_path: Path
    ra_key_path: Path
    trusted: Path  # root + project CA: the mock verifies our protection against them

    def mock(self, work: Path) -> CmpMock:
        """A (not yet started) mock server speaking for this CA."""
        return CmpMock(work, self.ra_cert_path, self.ra_key_path, self.trusted)


def make_cmp_ca(work: Path, pki: Pki) -> CmpCa:
    """Issue the CMP server's (RA) certificate under ``pki``'s project CA, files in ``work``."""
    ca = pki.project_ca
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    ra_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ra_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdbox CMP RA")]))
        .issuer_name(ca.cert.subject).public_key(ra_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([CMP_RA_EKU]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ra_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )  # fmt: skip
    ra_key_pem = ra_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CmpCa(
        ra_cert=ra_cert,
        ra_cert_path=write(work / "ra.pem", pem(ra_cert)),
        ra_key_path=write(work / "ra.key", ra_key_pem, 0o600),
        trusted=write(work / "cmp-trusted.pem", pem(pki.root.cert) + pem(ca.cert)),
    )


def revocation_store(crl_dir: Path, pki: Pki) -> RevocationStore:
    """The box's CRL cache holding ``pki``'s current CRLs (root and project CA)."""
    store = RevocationStore(crl_dir, build_time=STORE_BUILD_TIME)
    for name, issuer in (("root", pki.root.cert), ("project-ca", pki.project_ca.cert)):
        store.accept(pki.crl(name).public_bytes(serialization.Encoding.DER), issuer)
    return store


class CmpMock:
    """`openssl cmp` as a mock CA on loopback; stopped by pid."""

    def __init__(self, work: Path, ra_cert: Path, ra_key: Path, trusted: Path) -> None:
        self.work, self.ra_cert, self.ra_key, self.trusted = work, ra_cert, ra_key, trusted
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The endpoint."""
        return f"http://127.0.0.1:{self.port}/pkix/"

    def start(self, canned: x509.Certificate, *extra: str, port: int = 0) -> CmpMock:
        """Serve ``canned`` (plus ``extra`` mock options), on ``port`` or a free one."""
        self.stop()
        rsp = write(self.work / f"canned-{canned.serial_number:x}.pem", pem(canned))
        self.port = port or free_port()
        self.process = subprocess.Popen(
            ["openssl", "cmp", "-port", str(self.port), "-srv_cert", str(self.ra_cert),
             "-srv_key", str(self.ra_key), "-srv_trusted", str(self.trusted),
             "-accept_raverified", "-rsp_cert", str(rsp), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        """Stop the server (the CA is gone)."""
        if self.process is not None:
            stop(self.process)
            self.process = None

    def __enter__(self) -> CmpMock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
