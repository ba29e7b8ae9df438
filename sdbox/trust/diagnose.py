"""Turn a refused path into the one typed error that explains it.

``cryptography``'s verifier says *that* a path failed, in a string meant for
developers. The box must say *why* (expired? whose certificate? unknown
issuer?), so after a refusal we walk the path ourselves, in the order a person
would look: can each certificate's issuer be found and does its signature
verify, then is every certificate within its validity period, then which
profile rule the verifier's message names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from sdbox.trust.errors import (
    BadSignature,
    CertificateExpired,
    CertificateNotYetValid,
    ServerNameMismatch,
    TrustError,
    UnknownIssuer,
    WrongPurpose,
)
from sdbox.trust.loaders import check_decodable
from sdbox.trust.names import subject_of

_MAX_DEPTH = 8


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s name and key issued ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def walk(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> list[x509.Certificate]:
    """The path from ``leaf`` to an anchor, by names and signatures only.

    Raises :class:`UnknownIssuer` or :class:`BadSignature` for the first
    certificate whose issuer cannot be found or whose signature fails.
    """
    path = [leaf]
    cert = leaf
    for _ in range(_MAX_DEPTH):
        if cert in anchors:
            return path
        named = [c for c in (*anchors, *intermediates) if c.subject == cert.issuer and c != cert]
        if not named:
            raise UnknownIssuer(subject_of(cert), "its issuer's certificate is not available")
        good = [c for c in named if signed_by(cert, c)]
        if not good:
            # Same name, different key: another PKI that reuses our names is
            # an unknown issuer; the right key but a failing signature is a
            # tampered certificate.
            if any(_key_id_matches(cert, c) for c in named):
                raise BadSignature(f"the certificate of {subject_of(cert)}")
            raise UnknownIssuer(subject_of(cert), "its issuer has the right name but another key")
        # Prefer an anchor, then any intermediate not already on the path.
        anchor = next((c for c in good if c in anchors), None)
        cert = anchor or next((c for c in good if c not in path), good[0])
        if cert in path:
            break
        path.append(cert)
    raise UnknownIssuer(subject_of(leaf), "its chain loops or is too long")


def _key_id_matches(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``cert``'s AKI names ``issuer``'s key (True when either is absent)."""
    check_decodable(cert)  # MalformedCertificate rather than a bare ValueError
    check_decodable(issuer)
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return True
    return aki.key_identifier is None or aki.key_identifier == ski.digest


def check_times(path: Sequence[x509.Certificate], at: datetime) -> None:
    """Raise for the first certificate of ``path`` outside its validity period."""
    for cert in path:
        if at < cert.not_valid_before_utc:
            raise CertificateNotYetValid(subject_of(cert), cert.not_valid_before_utc)
        if at > cert.not_valid_after_utc:
            raise CertificateExpired(subject_of(cert), cert.not_valid_after_utc)


def explain(
    message: str,
    *,
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: datetime,
    hostname: str | None,
) -> TrustError:
    """The typed error for a path the verifier refused with ``message``."""
    try:
        path = walk(leaf, intermediates, anchors)
        for cert in path:
            # The verifier words an extension it cannot decode as a refused
            # candidate ("candidates exhausted"): say which certificate is damaged.
            check_decodable(cert)
        check_times(path, at)
    except TrustError as error:
        return error
    who = subject_of(leaf)
    lowered = message.lower()
    if "subjectaltname" in lowered and hostname is not None and "no matching" in lowered:
        return ServerNameMismatch(hostname)
    if "eku" in lowered or "extendedkeyusage" in lowered or "2.5.29.37" in lowered:
        return WrongPurpose(who, "its extended key usage does not allow this use")
    if "path length" in lowered or "pathlen" in lowered:
        return WrongPurpose(who, "an authority in its chain may not issue at that depth")
    if "keyusage" in lowered or "key usage" in lowered or "2.5.29.15" in lowered:
        return WrongPurpose(who, "the key usage of a certificate in its chain does not allow it")
    if "basicconstraints" in lowered or "2.5.29.19" in lowered or "not a ca" in lowered:
        return WrongPurpose(who, "a certificate in its chain is not an authority")
    if "unsupported name constraint" in lowered:
        # mailbox, URI and other non-DNS/IP constraints: the verifier cannot
        # evaluate them, so no path through such an authority is accepted
        return WrongPurpose(
            who,
            "an authority in its chain restricts names in a way this box cannot check "
            "(mailbox, URI or other name constraints), so the box does not trust it",
        )
    if "name constraint" in lowered:
        return WrongPurpose(who, "a name in it is outside what its authority may certify")
    if "candidates exhausted" in lowered:
        # The names and signatures chain, the dates fit, yet no path satisfied
        # the profile: the verifier's detail is the best we can give.
        return UnknownIssuer(who, _detail(message))
    return WrongPurpose(who, _detail(message))


def _detail(message: str) -> str:
    # Keep the verifier's reason, drop the Python repr of the certificate.
    text = message.split(" (encountered processing", 1)[0]
    return text.removeprefix("validation failed: ")
