"""A centre's fleet service over a throw-away PKI, and boxes with software identities (tests only).

The service is the real one (:class:`sdbox.fleet.service.FleetServer` on
loopback); the boxes sign with software keys certified by the PKI's
box-identity CA, as :class:`sdbox.identity.DevelopmentIdentity` does, because
these tests are about the fleet protocol and not the TPM (the identity tests
cover that).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.fleet.service import FleetConfig
from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore


@dataclass
class SoftwareBox:
    """A box identity with its key in memory (the Signer protocol)."""

    box_id: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, ec.ECDSA(hashes.SHA256()))

    def write(self, directory: Path) -> tuple[Path, Path]:
        """The certificate and key as files (for a development identity in agent.toml)."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "box.pem", directory / "box-key.pem"
        cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key.chmod(0o600)
        return cert, key


class FleetPki:
    """The centre's PKI as the fleet service sees it: anchors, CAs, CRLs held."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = Pki.init(root / "pki", now=datetime.now(UTC) - timedelta(days=1))
        self.anchors = root / "anchors.pem"
        self.intermediates = root / "intermediates.pem"
        pem = serialization.Encoding.PEM
        self.anchors.write_bytes(self.pki.root.cert.public_bytes(pem))
        self.intermediates.write_bytes(b"".join(c.public_bytes(pem) for c in self.pki.intermediates))
        self.crl_dir = root / "crls"
        self.refresh_crls()

    def refresh_crls(self) -> None:
        """Publish and accept every CA's current list (after a revocation, say)."""
        store = RevocationStore(self.crl_dir, build_time=datetime(2026, 1, 1, tzinfo=UTC))
        for name in ("root", "box-ca"):
            authority = self.pki.authority(name)
            crl = self.pki.crl(name)
            store.accept(crl.public_bytes(serialization.Encoding.DER), authority.cert)

    def box(self, box_id: str | None = None) -> SoftwareBox:
        """A newly enrolled box."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = box_id or f"box-{uuid.uuid4().hex[:8]}"
        certificate = self.pki.issue_box(key.public_key(), box_id=name)
        return SoftwareBox(name, certificate, key)

    def config(
        self, database: Path, listen: str = "127.0.0.1:0", postgres: str = ""
    ) -> FleetConfig:
        """The service's configuration over this PKI."""
        return FleetConfig(
            database=database,
            postgres=postgres,
            anchors=self.anchors,
            intermediates=self.intermediates,
            crl_dir=self.crl_dir,
            listen=listen,
        )


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


class PostgresCluster:
    """A private PostgreSQL cluster (Debian's server binaries), run as the postgres account.

    Its socket lives in its own directory and TCP is off: only this test reaches it.
    """

    def __init__(self) -> None:
        import pwd
        import tempfile

        self.account = pwd.getpwnam("postgres")
        self.root = Path(tempfile.mkdtemp(prefix="sdbox-pg-", dir="/tmp"))
        os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        self.data = self.root / "data"
        self.port = 5432  # on a private socket directory: no clash with a system server
        self.conninfo = f"host={self.root} port={self.port} dbname=fleet user=postgres"

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True, capture_output=True, timeout=120, cwd=self.root,
        )  # fmt: skip

    def start(self, *, init: bool = True) -> None:
        if init:
            self._as_postgres(
                str(POSTGRES_BIN / "initdb"), "-D", str(self.data), "--auth=trust",
                "--no-sync", "-U", "postgres",
            )  # fmt: skip
        self._as_postgres(
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.root / "log"),
            "-o", f"-k {self.root} -p {self.port} -c listen_addresses='' -c fsync=off",
            "start",
        )  # fmt: skip
        if init:
            self._as_postgres(
                str(POSTGRES_BIN / "createdb"), "-h", str(self.root), "-p", str(self.port), "fleet"
            )

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(str(POSTGRES_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", mode, "stop")

    def remove(self) -> None:
        import shutil

        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
