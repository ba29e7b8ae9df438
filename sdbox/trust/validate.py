"""Certificate path validation for the sdbox profile (docs/trust.md).

Path building, signatures, validity periods, basic constraints, path length
and the webpki extension rules are ``cryptography``'s verifier. On top of it
this module adds what the verifier does not do: revocation of every
certificate in the path, the profile's key usage per purpose, the role of the
issuing CA (told by its certificate policy), the project binding and the time
floor, and the name constraints the verifier leaves out (directory names,
mailboxes, URIs: sdbox.trust.constraints). Every refusal is a typed :class:`~sdbox.trust.errors.TrustError`.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from sdbox.trust import oids
from sdbox.trust.constraints import check_name_constraints
from sdbox.trust.diagnose import explain
from sdbox.trust.errors import (
    ClockWrong,
    MalformedCertificate,
    ProjectMismatch,
    WrongPurpose,
)
from sdbox.trust.loaders import check_decodable
from sdbox.trust.names import subject_of
from sdbox.trust.revocation import CrlSource, as_source, check_certificate

_MAX_CHAIN_DEPTH = 6


class Purpose(enum.Enum):
    """What the leaf certificate is being trusted for."""

    PROJECT = "project"
    """A project credential on the card (names its project): an EC key-agreement key (ECDH),
    or an RSA-2048 signature key (an older card variant)."""
    HOLDER = "holder"
    """The holder's PIV authentication certificate (signature key)."""
    SERVER = "server"
    """A bubble server's TLS certificate."""
    BOX = "box"
    """A box identity certificate."""
    DIRECTORY_SIGNING = "directory-signing"
    """The key that signs the card's project directory."""
    ENROLMENT_OPERATOR = "enrolment-operator"
    """A card-office operator who authorises a remote biometric enrolment."""
    CLIENT = "client"
    """Any TLS client certificate (clientAuth), no sdbox role rules: foreign PKIs, tests."""
    TLS_SERVER = "tls-server"
    """Any TLS server certificate (serverAuth, name), no sdbox role rules."""
    PATH = "path"
    """The path and revocation only, no purpose (EKU, key usage) rules: for
    conformance suites such as NIST PKITS. The box never validates for it."""


@dataclass(frozen=True)
class _Rules:
    eku: x509.ObjectIdentifier
    key_usage: tuple[str, ...]  # at least one of these KeyUsage attributes must be set
    role: x509.ObjectIdentifier | None  # policy the issuing CA and the leaf must carry


_RULES = {
    Purpose.PROJECT: _Rules(
        ExtendedKeyUsageOID.CLIENT_AUTH, ("key_agreement",), oids.POLICY_PROJECT
    ),
    Purpose.HOLDER: _Rules(
        ExtendedKeyUsageOID.CLIENT_AUTH, ("digital_signature",), oids.POLICY_PROJECT
    ),
    Purpose.SERVER: _Rules(
        ExtendedKeyUsageOID.SERVER_AUTH,
        ("digital_signature", "key_encipherment"),
        oids.POLICY_SERVER,
    ),
    Purpose.BOX: _Rules(ExtendedKeyUsageOID.CLIENT_AUTH, ("digital_signature",), oids.POLICY_BOX),
    Purpose.DIRECTORY_SIGNING: _Rules(
        oids.EKU_DIRECTORY_SIGNING, ("digital_signature",), oids.POLICY_PROJECT
    ),
    Purpose.ENROLMENT_OPERATOR: _Rules(
        oids.EKU_ENROLMENT_OPERATOR, ("digital_signature",), oids.POLICY_PROJECT
    ),
    Purpose.CLIENT: _Rules(
        ExtendedKeyUsageOID.CLIENT_AUTH, ("digital_signature", "key_agreement"), None
    ),
    Purpose.TLS_SERVER: _Rules(
        ExtendedKeyUsageOID.SERVER_AUTH, ("digital_signature", "key_encipherment"), None
    ),
    Purpose.PATH: _Rules(ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE, (), None),
}
_SERVER_PURPOSES = (Purpose.SERVER, Purpose.TLS_SERVER)


@dataclass(frozen=True)
class ValidatedChain:
    """A path that passed every check: leaf first, trust anchor last."""

    chain: tuple[x509.Certificate, ...]
    purpose: Purpose
    at: datetime
    projects: tuple[str, ...]
    revocation_checked: bool

    @property
    def leaf(self) -> x509.Certificate:
        """The certificate that was validated."""
        return self.chain[0]


def _eku_validator(wanted: x509.ObjectIdentifier):  # type: ignore[no-untyped-def]
    def check(_policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
        if wanted not in eku:
            raise ValueError(f"EKU {wanted.dotted_string} not in the certificate")

    return check


def _builder(purpose: Purpose, anchors: Sequence[x509.Certificate], at: datetime) -> PolicyBuilder:
    builder = PolicyBuilder().store(Store(list(anchors))).time(at).max_chain_depth(_MAX_CHAIN_DEPTH)
    if purpose in _SERVER_PURPOSES:
        return builder  # the webpki server profile as it is: serverAuth and the name
    # Client certificates: the webpki rules, except that (1) a subjectAltName
    # is optional (PIV holder and directory-signer certificates have none) and
    # (2) the EKU required is the purpose's, which for the directory signer is
    # our own OID rather than clientAuth.
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    if purpose is Purpose.PATH:
        ee = ee.may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, None)
    else:
        ee = ee.require_present(
            x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _eku_validator(_RULES[purpose].eku)
        )
    return builder.extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)


def _as_purpose(purpose: Purpose | str) -> Purpose:
    """``purpose`` as the enum: a member, or one of its values ("project", "server"...)."""
    if isinstance(purpose, Purpose):
        return purpose
    known = ", ".join(repr(p.value) for p in Purpose)
    if isinstance(purpose, str):
        try:
            return Purpose(purpose)
        except ValueError:
            raise ValueError(f"unknown purpose {purpose!r}: one of {known}") from None
    raise TypeError(
        f"purpose must be a Purpose or one of its values ({known}), not {type(purpose).__name__}"
    )


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("validation times must be timezone-aware")
    return at.astimezone(UTC)


def validate(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    at: datetime,
    purpose: Purpose | str,
    crls: CrlSource | Iterable[x509.CertificateRevocationList] | None,
    project: str | None = None,
    hostname: str | None = None,
    crl_grace: timedelta = timedelta(0),
) -> ValidatedChain:
    """Validate ``leaf`` for ``purpose`` at time ``at``; raise a TrustError if not.

    ``crls`` is where revocation lists come from (a list of CRLs, a
    :class:`~sdbox.trust.revocation.CrlSet` or the on-disk store); every
    certificate in the path but the anchor is checked against its issuer's
    CRL. ``None`` skips revocation and is only for callers that check it
    another way (the result says ``revocation_checked=False``). A plain list
    is indexed once per CRL object and reused while the same objects come
    back (:func:`~sdbox.trust.revocation.indexed`).

    ``purpose`` is a :class:`Purpose` or one of its values (``"project"``);
    anything else is a ValueError or TypeError, as a programming error.
    Certificates whose names or extensions do not decode are refused with
    :class:`~sdbox.trust.errors.MalformedCertificate`, whichever place in the
    path they hold.
    """
    purpose = _as_purpose(purpose)
    at = _utc(at)
    source = None if crls is None else as_source(crls)
    floor = source.time_floor if source is not None else None
    if floor is not None and at < floor:
        raise ClockWrong(at, floor)
    if not anchors:
        raise ValueError("at least one trust anchor is needed")
    rules = _RULES[purpose]
    # Damage in the leaf is told as such, before the verifier words it as a
    # purpose or an unknown issuer.
    check_decodable(leaf, key=True)
    builder = _builder(purpose, anchors, at)
    try:
        if purpose in _SERVER_PURPOSES:
            if not hostname:
                raise ValueError("server certificates are validated against a hostname")
            chain = builder.build_server_verifier(_subject(hostname)).verify(
                leaf, list(intermediates)
            )
            names: list[x509.GeneralName] = []
        else:
            verified = builder.build_client_verifier().verify(leaf, list(intermediates))
            chain = verified.chain
            names = list(verified.subjects or [])
    except VerificationError as exc:
        raise explain(
            str(exc),
            leaf=leaf,
            intermediates=intermediates,
            anchors=anchors,
            at=at,
            hostname=hostname,
        ) from exc
    except ValueError as exc:  # extensions the parser refuses while verifying
        if "hostname" in str(exc) or "anchor" in str(exc):
            raise
        raise MalformedCertificate("certificate", str(exc)) from exc

    # The verifier reads only the extensions its rules need; everything below
    # reads the rest (name constraints, policies, distribution points), so an
    # anchor or intermediate whose AKI, SKI... does not decode is refused here.
    for cert in chain[1:]:
        check_decodable(cert)
    check_name_constraints(chain)
    _check_leaf_key(leaf)
    if purpose is not Purpose.PATH:
        _check_eku(leaf, rules)
        _check_key_usage(leaf, _project_rules(leaf, rules) if purpose is Purpose.PROJECT else rules)
    if rules.role is not None:
        _check_role(chain, rules.role)
    projects = tuple(
        n.value.removeprefix(oids.PROJECT_URN_PREFIX)
        for n in names
        if isinstance(n, x509.UniformResourceIdentifier)
        and n.value.startswith(oids.PROJECT_URN_PREFIX)
    )
    if purpose is Purpose.PROJECT:
        if project is not None and project not in projects:
            raise ProjectMismatch(project, list(projects))
        if not projects:
            raise WrongPurpose(subject_of(leaf), "it does not name a project")
    if source is not None:
        # The anchor is trusted as configured; every certificate it vouches
        # for, directly or not, must be on nobody's CRL.
        for cert, issuer in itertools.pairwise(chain):
            check_certificate(cert, issuer, source, at=at, grace=crl_grace)
    return ValidatedChain(tuple(chain), purpose, at, projects, source is not None)


def validate_directory_signer(
    signer: x509.Certificate,
    intermediates: list[x509.Certificate],
    anchors: list[x509.Certificate],
    *,
    at: datetime,
    crls: CrlSource | Iterable[x509.CertificateRevocationList] | None = None,
    crl_grace: timedelta = timedelta(0),
) -> None:
    """Refuse ``signer`` unless the project CA certified it to sign project directories.

    With ``crls=None`` revocation is not checked.
    """
    validate(
        signer,
        intermediates,
        anchors,
        at=at,
        purpose=Purpose.DIRECTORY_SIGNING,
        crls=crls,
        crl_grace=crl_grace,
    )


def _subject(hostname: str) -> x509.DNSName | x509.IPAddress:
    import ipaddress  # noqa: PLC0415  (only server validation needs it)

    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


_MIN_RSA_BITS = 2048
_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _check_leaf_key(leaf: x509.Certificate) -> None:
    # cryptography's verifier holds issuers' keys to 2048-bit RSA and the
    # NIST curves, but not the leaf's own key; the profile wants the same floor.
    key = leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise WrongPurpose(
                subject_of(leaf),
                f"its RSA key has {key.key_size} bits, fewer than the {_MIN_RSA_BITS} required",
            )
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise WrongPurpose(subject_of(leaf), f"its key uses the curve {key.curve.name}")
    else:
        raise WrongPurpose(subject_of(leaf), "its key type is not RSA or EC")


def _check_eku(leaf: x509.Certificate, rules: _Rules) -> None:
    # The server verifier accepts a leaf without EKU (webpki reads it as "any");
    # the profile names the purpose explicitly in every leaf.
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise WrongPurpose(
            subject_of(leaf), "it does not say what it may be used for (no EKU)"
        ) from None
    if rules.eku not in usages:
        raise WrongPurpose(subject_of(leaf), "its extended key usage does not allow this use")


def _project_rules(leaf: x509.Certificate, rules: _Rules) -> _Rules:
    """A project key's usage by its type: EC keys agree keys (ECDH), RSA keys sign.

    An RSA key cannot do key agreement, so an RSA project credential (an
    older card variant, docs/card-variants.md) is a signature key and its
    possession is proven by a signature; an EC one must still be a
    key-agreement key (PIV's retired slots), never a signature key.
    """
    if isinstance(leaf.public_key(), rsa.RSAPublicKey):
        return _Rules(rules.eku, ("digital_signature",), rules.role)
    return rules


def _check_key_usage(leaf: x509.Certificate, rules: _Rules) -> None:
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise WrongPurpose(subject_of(leaf), "it has no key usage") from None
    if usage.key_cert_sign or usage.crl_sign:
        raise WrongPurpose(subject_of(leaf), "it is an authority's key, not an end entity's")
    if not any(getattr(usage, bit) for bit in rules.key_usage):
        wanted = " or ".join(bit.replace("_", " ") for bit in rules.key_usage)
        raise WrongPurpose(subject_of(leaf), f"its key usage lacks {wanted}")


def _policies(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    except x509.ExtensionNotFound:
        return set()
    return {p.policy_identifier for p in ext.value}


def _check_role(chain: Sequence[x509.Certificate], role: x509.ObjectIdentifier) -> None:
    """The leaf and its issuing CA must both carry the role's policy."""
    leaf = chain[0]
    if role not in _policies(leaf):
        raise WrongPurpose(subject_of(leaf), "it was not issued for this role")
    if len(chain) < 3 or role not in _policies(chain[1]):
        raise WrongPurpose(
            subject_of(leaf), "it was issued by an authority that does not issue this kind"
        )
