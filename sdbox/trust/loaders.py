"""Loading certificates and CRLs for trust decisions: the project's one loader, typed as trust.

The parsing is :mod:`sdbox.certificates` (the one loader, below every
package); here a failure becomes :class:`~sdbox.trust.errors.MalformedCertificate`,
a trust error (exit code 5, a refusal the agent reports), and nothing else
escapes.
"""

from __future__ import annotations

from cryptography import x509

from sdbox import certificates
from sdbox.certificates import (
    MAX_CERTIFICATE_BYTES,
    MAX_CRL_BYTES,
    PARSE_ERRORS,
    UnreadableCertificate,
)
from sdbox.trust.errors import MalformedCertificate
from sdbox.trust.names import describe

__all__ = [
    "MAX_CERTIFICATE_BYTES",
    "MAX_CRL_BYTES",
    "check_decodable",
    "load_certificate",
    "load_certificates",
    "load_crl",
]


def _as_trust(exc: UnreadableCertificate) -> MalformedCertificate:
    return MalformedCertificate(exc.what, exc.detail)


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER bytes."""
    try:
        return certificates.load_certificate(data)
    except UnreadableCertificate as exc:
        raise _as_trust(exc) from exc


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one certificate of DER bytes."""
    try:
        return certificates.load_certificates(data)
    except UnreadableCertificate as exc:
        raise _as_trust(exc) from exc


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """One CRL from PEM or DER bytes."""
    try:
        return certificates.load_crl(data)
    except UnreadableCertificate as exc:
        raise _as_trust(exc) from exc


def check_decodable(cert: x509.Certificate, *, key: bool = False) -> None:
    """Raise :class:`MalformedCertificate` unless ``cert``'s names and extensions decode.

    A certificate object need not come from :func:`load_certificate`: PEM
    bundles (anchors, intermediates) and callers' own objects are decoded
    lazily, and an extension the parser refuses (an AKI with a serial but no
    issuer, a truncated SKI, a keyUsage with decipherOnly alone...) would
    otherwise surface as a bare ValueError wherever it is first read. With
    ``key``, the public key must be usable too.
    """
    try:
        who = f"certificate of {describe(cert.subject)}"
    except PARSE_ERRORS as exc:
        raise MalformedCertificate(
            "certificate", f"its subject does not decode: {certificates.short(exc)}"
        ) from exc
    part = "its issuer name"
    try:
        _ = cert.issuer
        part = "an extension"
        _ = cert.extensions
        if key:
            part = "its public key"
            cert.public_key()
    except PARSE_ERRORS as exc:
        raise MalformedCertificate(who, f"{part} does not decode: {certificates.short(exc)}") from exc
