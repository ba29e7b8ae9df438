"""A test and development PKI kept in a directory.

It issues everything the sdbox profile needs (docs/trust.md): a root; the
project-credential, bubble-server and box-identity CAs under it; the
directory-signing certificate; and project, holder, server and box leaf
certificates for public keys generated elsewhere (on a card, in a TPM). It
revokes and publishes numbered CRLs.

Layout of the directory (PEM files; private keys mode 0600)::

    root.pem root.key  project-ca.pem project-ca.key  server-ca.pem ...
    directory-signer.pem directory-signer.key
    state.json        CRL numbers, revocations, CRL distribution base URL
    issued/<serial>.pem   every leaf issued, for the record

This is a development tool: real deployments keep CA keys in an HSM.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdbox.certificates import load_certificate
from sdbox.trust import oids
from sdbox.trust.errors import PkiError

CA_NAMES: tuple[str, ...] = ("root", "project-ca", "server-ca", "box-ca")
"""The authorities of the PKI, by file stem (``crl(ca)`` takes these names)."""

_ROOT_LIFETIME = timedelta(days=20 * 365)
_CA_LIFETIME = timedelta(days=10 * 365)
_LEAF_LIFETIME = timedelta(days=365)
_CRL_LIFETIME = timedelta(days=7)
_DEFAULT_CRL_BASE = "http://crl.sdbox.invalid/"

# Which policy each issuing CA carries and certifies under (see oids.py).
_CA_POLICY = {
    "project-ca": oids.POLICY_PROJECT,
    "server-ca": oids.POLICY_SERVER,
    "box-ca": oids.POLICY_BOX,
}
_CA_TITLE = {
    "root": "sdbox Root CA",
    "project-ca": "sdbox Project Credentials CA",
    "server-ca": "sdbox Bubble Server CA",
    "box-ca": "sdbox Box Identity CA",
}


@dataclass(frozen=True)
class Issued:
    """A certificate and, where the PKI holds it, its private key."""

    cert: x509.Certificate
    key: PrivateKeyTypes | None


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sdbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(**set_bits: bool) -> x509.KeyUsage:
    bits = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    bits.update(set_bits)
    return x509.KeyUsage(**bits)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _signing_hash(
    key: CertificateIssuerPrivateKeyTypes,
) -> hashes.SHA256 | hashes.SHA384 | None:
    # Ed25519/Ed448 sign without a separate hash; P-384 pairs with SHA-384.
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    if isinstance(key, ec.EllipticCurvePrivateKey) or hasattr(key, "key_size"):
        return hashes.SHA256()
    return None


class Pki:
    """A development PKI stored in ``path`` (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        authorities: dict[str, Issued],
        directory_signer: Issued,
        state: dict[str, Any],
    ) -> None:
        self.path = path
        self._ca = authorities
        self.directory_signer = directory_signer
        self._state = state

    # -- the authorities ---------------------------------------------------

    @property
    def root(self) -> Issued:
        """The self-signed root (the trust anchor boxes ship)."""
        return self._ca["root"]

    @property
    def project_ca(self) -> Issued:
        """Issues project credentials, holder certificates and the directory signer."""
        return self._ca["project-ca"]

    @property
    def server_ca(self) -> Issued:
        """Issues bubble server certificates."""
        return self._ca["server-ca"]

    @property
    def box_ca(self) -> Issued:
        """Issues box identity certificates."""
        return self._ca["box-ca"]

    def authority(self, ca: str) -> Issued:
        """The authority named ``ca`` (one of :data:`CA_NAMES`)."""
        try:
            return self._ca[ca]
        except KeyError:
            raise PkiError(
                f"There is no authority named {ca!r}; use one of {', '.join(CA_NAMES)}."
            ) from None

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """The issuing CAs' certificates (what a verifier needs besides the root)."""
        return [self._ca[name].cert for name in CA_NAMES[1:]]

    # -- creation and loading ---------------------------------------------

    @classmethod
    def init(
        cls, path: Path, *, now: datetime | None = None, crl_base_url: str = _DEFAULT_CRL_BASE
    ) -> Pki:
        """Create a new PKI in ``path`` (which must not already hold one)."""
        now = now or _now()
        path.mkdir(parents=True, exist_ok=True)
        if (path / "state.json").exists():
            raise PkiError(f"{path} already holds a PKI; use another directory or remove it.")
        state: dict[str, Any] = {
            "crl_base_url": crl_base_url,
            "crl_number": dict.fromkeys(CA_NAMES, 0),
            "revoked": {name: [] for name in CA_NAMES},
        }
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_cert = _build_ca_cert(
            subject=_name(_CA_TITLE["root"]),
            public_key=root_key.public_key(),
            issuer_cert=None,
            issuer_key=root_key,
            not_before=now,
            not_after=now + _ROOT_LIFETIME,
            path_length=1,
            policy=None,
            crl_url=None,
        )
        authorities = {"root": Issued(root_cert, root_key)}
        for name in CA_NAMES[1:]:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _build_ca_cert(
                subject=_name(_CA_TITLE[name]),
                public_key=key.public_key(),
                issuer_cert=root_cert,
                issuer_key=root_key,
                not_before=now,
                not_after=now + _CA_LIFETIME,
                path_length=0,
                policy=_CA_POLICY[name],
                crl_url=crl_base_url + "root.crl",
            )
            authorities[name] = Issued(cert, key)
        pki = cls(path, authorities, Issued(root_cert, None), state)
        signer_key = ec.generate_private_key(ec.SECP256R1())
        signer_cert = pki._issue(
            "project-ca",
            signer_key.public_key(),
            subject_cn="sdbox Project Directory Signer",
            not_before=now,
            not_after=now + _CA_LIFETIME,
            key_usage=_key_usage(digital_signature=True),
            eku=[oids.EKU_DIRECTORY_SIGNING],
            san=None,
            record=False,
        )
        pki.directory_signer = Issued(signer_cert, signer_key)
        for name, issued in authorities.items():
            _write_public(
                path / f"{name}.pem", issued.cert.public_bytes(serialization.Encoding.PEM)
            )
            assert issued.key is not None
            _write_private(path / f"{name}.key", _key_pem(issued.key))
        _write_public(
            path / "directory-signer.pem", signer_cert.public_bytes(serialization.Encoding.PEM)
        )
        _write_private(path / "directory-signer.key", _key_pem(signer_key))
        pki._save_state()
        return pki

    @classmethod
    def open(cls, path: Path) -> Pki:
        """Load the PKI kept in ``path``."""
        try:
            state = json.loads((path / "state.json").read_text())
            authorities = {name: _load_issued(path, name) for name in CA_NAMES}
            signer = _load_issued(path, "directory-signer")
        except FileNotFoundError as exc:
            raise PkiError(
                f"{path} does not hold a complete PKI ({Path(exc.filename).name} is missing); "
                "create one with `sdbox pki init`."
            ) from exc
        except (ValueError, json.JSONDecodeError) as exc:
            raise PkiError(f"{path} holds a damaged PKI file: {exc}") from exc
        return cls(path, authorities, signer, state)

    def _save_state(self) -> None:
        _write_public(self.path / "state.json", json.dumps(self._state, indent=2).encode())

    # -- issuing -------------------------------------------------------------

    def _issue(
        self,
        ca: str,
        public_key: CertificatePublicKeyTypes,
        *,
        subject_cn: str,
        not_before: datetime | None,
        not_after: datetime | None,
        key_usage: x509.KeyUsage,
        eku: list[x509.ObjectIdentifier],
        san: list[x509.GeneralName] | None,
        record: bool = True,
    ) -> x509.Certificate:
        issuer = self.authority(ca)
        assert issuer.key is not None
        issuer_key: CertificateIssuerPrivateKeyTypes = issuer.key  # type: ignore[assignment]
        start = not_before or _now()
        end = not_after or start + _LEAF_LIFETIME
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject_cn))
            .issuer_name(issuer.cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .add_extension(
                x509.CertificatePolicies([x509.PolicyInformation(_CA_POLICY[ca], None)]),
                critical=False,
            )
            .add_extension(_crl_dp(self._state["crl_base_url"] + f"{ca}.crl"), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(issuer_key, _signing_hash(issuer_key))
        if record:
            issued_dir = self.path / "issued"
            issued_dir.mkdir(exist_ok=True)
            _write_public(
                issued_dir / f"{cert.serial_number:x}.pem",
                cert.public_bytes(serialization.Encoding.PEM),
            )
        return cert

    def issue_project(
        self,
        project_id: str,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        subject_cn: str,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """A project credential bound to ``project_id``.

        EC keys (P-256, P-384) are key-agreement keys: PIV uses them for ECDH.
        RSA-2048 keys (an older card variant, docs/card-variants.md) cannot do
        ECDH: theirs is a signature key, and possession is proven by signing.
        """
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size != 2048:
                raise PkiError("RSA project keys are RSA-2048.")
            usage = _key_usage(digital_signature=True)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            usage = _key_usage(key_agreement=True)
        else:
            raise PkiError("Project keys are EC (P-256, P-384) or RSA-2048 keys.")
        if not project_id or any(c.isspace() or c in ":/" for c in project_id):
            raise PkiError(f"{project_id!r} is not a valid project id (no spaces, ':' or '/').")
        return self._issue(
            "project-ca",
            public_key,
            subject_cn=subject_cn,
            not_before=not_before,
            not_after=not_after,
            key_usage=usage,
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
            san=[x509.UniformResourceIdentifier(oids.PROJECT_URN_PREFIX + project_id)],
        )

    def issue_holder(
        self,
        public_key: CertificatePublicKeyTypes,
        *,
        subject_cn: str,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """The holder's PIV authentication certificate (a signature key, RSA or EC)."""
        return self._issue(
            "project-ca",
            public_key,
            subject_cn=subject_cn,
            not_before=not_before,
            not_after=not_after,
            key_usage=_key_usage(digital_signature=True),
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
            san=None,
        )

    def issue_server(
        self,
        hostname: str,
        public_key: CertificatePublicKeyTypes,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        also: Sequence[str] = (),
    ) -> x509.Certificate:
        """A bubble server's TLS certificate for ``hostname`` (a DNS name or an IP),
        and for the names in ``also`` (a server reached at several addresses)."""
        names: list[x509.GeneralName] = []
        for each in (hostname, *also):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(each)))
            except ValueError:
                names.append(x509.DNSName(each))
        # RSA TLS servers may still use key transport; EC keys only sign.
        rsa_like = hasattr(public_key, "key_size") and not isinstance(
            public_key, ec.EllipticCurvePublicKey
        )
        return self._issue(
            "server-ca",
            public_key,
            subject_cn=hostname,
            not_before=not_before,
            not_after=not_after,
            key_usage=_key_usage(digital_signature=True, key_encipherment=rsa_like),
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
            san=names,
        )

    def issue_box(
        self,
        public_key: CertificatePublicKeyTypes,
        *,
        box_id: str,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """A box identity certificate (the box's TPM-held key)."""
        return self._issue(
            "box-ca",
            public_key,
            subject_cn=f"sdbox box {box_id}",
            not_before=not_before,
            not_after=not_after,
            key_usage=_key_usage(digital_signature=True),
            eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
            san=[x509.UniformResourceIdentifier(oids.BOX_URN_PREFIX + box_id)],
        )

    def issue_enrolment_operator(
        self,
        public_key: CertificatePublicKeyTypes,
        *,
        operator: str,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> x509.Certificate:
        """A card-office operator's key for remote enrolment authorisations (names the operator)."""
        return self._issue(
            "project-ca",
            public_key,
            subject_cn=operator,
            not_before=not_before,
            not_after=not_after,
            key_usage=_key_usage(digital_signature=True),
            eku=[oids.EKU_ENROLMENT_OPERATOR],
            san=None,
        )

    # -- revocation ----------------------------------------------------------

    def _issuer_of(self, cert: x509.Certificate) -> str:
        for name in CA_NAMES:
            if cert.issuer == self._ca[name].cert.subject:
                return name
        raise PkiError("That certificate was not issued by this PKI.")

    def revoke(
        self,
        cert: x509.Certificate,
        reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
        when: datetime | None = None,
    ) -> None:
        """Put ``cert`` on its issuer's next CRL."""
        ca = self._issuer_of(cert)
        entries: list[dict[str, Any]] = self._state["revoked"][ca]
        if any(int(e["serial"], 16) == cert.serial_number for e in entries):
            return
        entries.append(
            {
                "serial": f"{cert.serial_number:x}",
                "date": (when or _now()).isoformat(),
                "reason": reason.value,
            }
        )
        self._save_state()

    def crl(
        self,
        ca: str,
        *,
        now: datetime | None = None,
        next_update: datetime | None = None,
    ) -> x509.CertificateRevocationList:
        """Sign and return ``ca``'s next CRL (each call takes the next CRL number)."""
        issuer = self.authority(ca)
        assert issuer.key is not None
        issuer_key: CertificateIssuerPrivateKeyTypes = issuer.key  # type: ignore[assignment]
        this_update = now or _now()
        number = int(self._state["crl_number"][ca]) + 1
        self._state["crl_number"][ca] = number
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.cert.subject)
            .last_update(this_update)
            .next_update(next_update or this_update + _CRL_LIFETIME)
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        for entry in _revoked_entries(self._state["revoked"][ca]):
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(issuer_key, _signing_hash(issuer_key))
        self._save_state()
        return crl

    def publish(self, out: Path, *, now: datetime | None = None) -> list[Path]:
        """Write a fresh CRL of every authority into ``out`` as ``<ca>.crl`` (DER)."""
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in CA_NAMES:
            target = out / f"{name}.crl"
            _write_public(target, self.crl(name, now=now).public_bytes(serialization.Encoding.DER))
            written.append(target)
        return written


def _revoked_entries(entries: list[dict[str, Any]]) -> Iterator[x509.RevokedCertificate]:
    for entry in entries:
        builder = x509.RevokedCertificateBuilder(
            serial_number=int(entry["serial"], 16),
            revocation_date=datetime.fromisoformat(entry["date"]),
        )
        reason = x509.ReasonFlags(entry["reason"])
        if reason is not x509.ReasonFlags.unspecified:
            builder = builder.add_extension(x509.CRLReason(reason), critical=False)
        yield builder.build()


def _serial() -> int:
    # 159 random bits: positive, at most 20 octets (RFC 5280 4.1.2.2).
    return secrets.randbits(159) | (1 << 158)


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)],
                relative_name=None,
                reasons=None,
                crl_issuer=None,
            )
        ]
    )


def _build_ca_cert(
    *,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_cert: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
    policy: x509.ObjectIdentifier | None,
    crl_url: str | None,
) -> x509.Certificate:
    issuer_public = issuer_cert.public_key() if issuer_cert else public_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if policy is not None:
        builder = builder.add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(policy, None)]), critical=False
        )
    if crl_url is not None:
        builder = builder.add_extension(_crl_dp(crl_url), critical=False)
    return builder.sign(issuer_key, _signing_hash(issuer_key))


def _load_issued(path: Path, stem: str) -> Issued:
    cert = load_certificate((path / f"{stem}.pem").read_bytes(), f"{stem} certificate")
    key_path = path / f"{stem}.key"
    key = None
    with contextlib.suppress(FileNotFoundError):
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    return Issued(cert, key)
