"""A generated corpus of certificate chains for differential testing against OpenSSL.

Each :class:`Case` is one chain (root, zero to two intermediates, leaf), the
CRLs the verifier gets, a validation time and a purpose, built to exercise one
rule: the kinds are in :data:`KINDS`. Chains are built here rather than with
``sdbox.trust.pki`` so that they can break the profile on purpose (path
length, key usage, missing extensions, weak keys).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime(2031, 6, 1, tzinfo=UTC)
HOST = "server.test"
DAY = timedelta(days=1)

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Case:
    """One chain to validate, and how it was broken."""

    kind: str
    purpose: str  # "client" | "server"
    keytype: str
    depth: int  # number of intermediates
    leaf: x509.Certificate
    intermediates: list[x509.Certificate]
    root: x509.Certificate
    crls: list[x509.CertificateRevocationList]
    at: datetime = NOW

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.purpose}-{self.keytype}-d{self.depth}"


@dataclass
class _Spec:
    """How to build one chain; every field defaults to the valid case."""

    leaf_window: tuple[timedelta, timedelta] = (-30 * DAY, 300 * DAY)
    int_window: tuple[timedelta, timedelta] = (-365 * DAY, 5 * 365 * DAY)
    leaf_eku: list[x509.ObjectIdentifier] | None = None  # None: purpose's EKU
    no_eku: bool = False
    leaf_ku: dict[str, bool] | None = None  # None: the purpose's usual bits
    int_ku: dict[str, bool] = field(
        default_factory=lambda: {"key_cert_sign": True, "crl_sign": True}
    )
    root_pathlen: int | None = None
    int_pathlen: int | None = None
    san: bool = True
    revoke_leaf: bool = False
    revoke_int: bool = False
    stale_leaf_crl: bool = False
    stale_root_crl: bool = False
    drop_leaf_crl: bool = False
    forge_leaf_crl: bool = False
    tamper_leaf: bool = False
    tamper_int: bool = False
    drop_intermediate: bool = False
    leaf_key: Key | None = None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_KU_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _ku(**bits: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**{n: bits.get(n, False) for n in _KU_BITS})


def _hash(key: Key) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


_serials = itertools.count(0x1000)


def _cert(
    *,
    subject: str,
    key: Key,
    issuer: x509.Certificate | None,
    issuer_key: Key,
    window: tuple[timedelta, timedelta],
    ca: bool,
    pathlen: int | None = None,
    ku: x509.KeyUsage,
    eku: list[x509.ObjectIdentifier] | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    issuer_public = issuer.public_key() if issuer else key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(next(_serials))
        .not_valid_before(NOW + window[0])
        .not_valid_after(NOW + window[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None), True)
        .add_extension(ku, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            False,
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    signer: CertificateIssuerPrivateKeyTypes = issuer_key
    return builder.sign(signer, _hash(issuer_key))


def _tamper(cert: x509.Certificate) -> x509.Certificate:
    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(cert.public_bytes(Encoding.DER))
    # Flip a bit inside the signature's value (the last bytes of an ECDSA
    # signature are the end of s; of an RSA signature, its last byte).
    der[-3] ^= 0x01
    return x509.load_der_x509_certificate(bytes(der))


def _crl(
    issuer: x509.Certificate,
    key: Key,
    revoked: list[x509.Certificate],
    *,
    stale: bool = False,
) -> x509.CertificateRevocationList:
    this = NOW - (10 * DAY if stale else DAY)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this)
        .next_update(this + 7 * DAY)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(NOW - 2 * DAY)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return builder.sign(key, _hash(key))


class KeyPool:
    """Keys reused across chains (RSA generation is slow); four per type, one per position."""

    def __init__(self) -> None:
        self._keys: dict[str, list[Key]] = {}

    def get(self, keytype: str, position: int) -> Key:
        keys = self._keys.setdefault(keytype, [])
        while len(keys) <= position:
            if keytype == "p256":
                keys.append(ec.generate_private_key(ec.SECP256R1()))
            elif keytype == "p384":
                keys.append(ec.generate_private_key(ec.SECP384R1()))
            elif keytype == "rsa2048":
                keys.append(rsa.generate_private_key(65537, 2048))
            else:
                keys.append(rsa.generate_private_key(65537, 1024))
        return keys[position]


def build(spec: _Spec, *, kind: str, purpose: str, keytype: str, depth: int, pool: KeyPool) -> Case:
    """The chain ``spec`` describes."""
    root_key = pool.get(keytype, 0)
    ca_ku = _ku(key_cert_sign=True, crl_sign=True)
    root = _cert(
        subject=f"Root {kind}",
        key=root_key,
        issuer=None,
        issuer_key=root_key,
        window=(-3650 * DAY, 3650 * DAY),
        ca=True,
        pathlen=spec.root_pathlen,
        ku=ca_ku,
    )
    chain_certs: list[tuple[x509.Certificate, Key]] = [(root, root_key)]
    for level in range(depth):
        parent, parent_key = chain_certs[-1]
        key = pool.get(keytype, 1 + level)
        chain_certs.append(
            (
                _cert(
                    subject=f"Intermediate {level + 1} {kind}",
                    key=key,
                    issuer=parent,
                    issuer_key=parent_key,
                    window=spec.int_window if level == depth - 1 else (-365 * DAY, 5 * 365 * DAY),
                    ca=True,
                    pathlen=spec.int_pathlen if level == depth - 1 else None,
                    ku=_ku(**spec.int_ku) if level == depth - 1 else ca_ku,
                ),
                key,
            )
        )
    issuer, issuer_key = chain_certs[-1]
    leaf_key = spec.leaf_key or pool.get(keytype, 3)
    usual_eku = (
        ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    if spec.leaf_ku is not None:
        leaf_ku = _ku(**spec.leaf_ku)
    elif purpose == "server" and isinstance(leaf_key, rsa.RSAPrivateKey):
        leaf_ku = _ku(digital_signature=True, key_encipherment=True)
    else:
        leaf_ku = _ku(digital_signature=True)
    leaf = _cert(
        subject=HOST if purpose == "server" else "Client",
        key=leaf_key,
        issuer=issuer,
        issuer_key=issuer_key,
        window=spec.leaf_window,
        ca=False,
        ku=leaf_ku,
        eku=None if spec.no_eku else (spec.leaf_eku or [usual_eku]),
        san=(
            [x509.DNSName(HOST)]
            if purpose == "server"
            else [x509.UniformResourceIdentifier("urn:test:client")]
        )
        if spec.san
        else None,
    )
    # CRLs: one per CA; the last CA's CRL covers the leaf.
    crls = []
    for index, (ca_cert, ca_key) in enumerate(chain_certs):
        is_leaf_issuer = index == len(chain_certs) - 1
        revoked: list[x509.Certificate] = []
        if is_leaf_issuer and spec.revoke_leaf:
            revoked.append(leaf)
        if spec.revoke_int and index == len(chain_certs) - 2:
            revoked.append(chain_certs[-1][0])
        if is_leaf_issuer and spec.drop_leaf_crl:
            continue
        signer = pool.get("p256", 3) if (is_leaf_issuer and spec.forge_leaf_crl) else ca_key
        if is_leaf_issuer and spec.forge_leaf_crl and keytype == "p256":
            signer = pool.get("p384", 0)
        stale = (is_leaf_issuer and spec.stale_leaf_crl) or (index == 0 and spec.stale_root_crl)
        crls.append(_crl(ca_cert, signer, revoked, stale=stale))
    intermediates = [c for c, _ in chain_certs[1:]]
    if spec.tamper_int and intermediates:
        intermediates[-1] = _tamper(intermediates[-1])
    if spec.drop_intermediate and intermediates:
        intermediates = intermediates[:-1]
    if spec.tamper_leaf:
        leaf = _tamper(leaf)
    return Case(kind, purpose, keytype, depth, leaf, intermediates, root, crls)


def _specs(purpose: str, depth: int, pool: KeyPool) -> Iterator[tuple[str, _Spec]]:
    yield "valid", _Spec()
    yield "leaf-expired", _Spec(leaf_window=(-60 * DAY, -DAY))
    yield "leaf-not-yet-valid", _Spec(leaf_window=(DAY, 60 * DAY))
    yield "leaf-revoked", _Spec(revoke_leaf=True)
    yield (
        "wrong-eku",
        _Spec(
            leaf_eku=[
                ExtendedKeyUsageOID.CLIENT_AUTH
                if purpose == "server"
                else ExtendedKeyUsageOID.SERVER_AUTH
            ]
        ),
    )
    # Key usage that neither verifier allows for the purpose.
    yield (
        "wrong-key-usage",
        _Spec(
            leaf_ku={"data_encipherment": True}
            if purpose == "server"
            else {"key_encipherment": True}
        ),
    )
    yield "bad-signature-leaf", _Spec(tamper_leaf=True)
    yield "stale-crl-leaf-issuer", _Spec(stale_leaf_crl=True)
    yield "stale-crl-root", _Spec(stale_root_crl=True)
    yield "missing-crl", _Spec(drop_leaf_crl=True)
    yield "crl-wrong-key", _Spec(forge_leaf_crl=True)
    yield "no-eku", _Spec(no_eku=True)
    if purpose == "server":
        yield (
            "server-key-agreement-only",
            _Spec(leaf_ku={"key_agreement": True}, leaf_key=pool.get("p256", 3)),
        )
        yield "server-cn-only", _Spec(san=False)
    yield "rsa-1024-leaf", _Spec(leaf_key=pool.get("rsa1024", 3))
    if depth >= 1:
        yield "int-expired", _Spec(int_window=(-400 * DAY, -DAY))
        yield "int-not-yet-valid", _Spec(int_window=(DAY, 400 * DAY))
        yield "int-revoked", _Spec(revoke_int=True)
        yield "bad-signature-int", _Spec(tamper_int=True)
        yield "missing-intermediate", _Spec(drop_intermediate=True)
        yield "int-not-a-signer", _Spec(int_ku={"crl_sign": True})
        yield "root-pathlen-0", _Spec(root_pathlen=0)
    if depth >= 2:
        # The root allows one CA below it, but two follow.
        yield "root-pathlen-1-over-two-cas", _Spec(root_pathlen=1)


def corpus() -> list[Case]:
    """Every case: each kind for client and server, three key types, one or two intermediates."""
    pool = KeyPool()
    cases = []
    for purpose, keytype, depth in itertools.product(
        ("client", "server"), ("p256", "p384", "rsa2048"), (1, 2)
    ):
        for kind, spec in _specs(purpose, depth, pool):
            cases.append(
                build(spec, kind=kind, purpose=purpose, keytype=keytype, depth=depth, pool=pool)
            )
    return cases
