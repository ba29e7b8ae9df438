"""Loading certificates and CRLs from bytes that may be anything.

Bytes come from a card, a cache file or the network: PEM or DER, possibly
truncated, mislabelled or hostile. Every failure becomes
:class:`~sdbox.trust.errors.MalformedCertificate`; nothing else escapes.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from sdbox.trust.errors import MalformedCertificate
from sdbox.trust.names import describe

_PEM_MARK = b"-----BEGIN "
# A certificate on a PIV card fits in a few kilobytes; a CRL of 100,000
# entries is about 4 MB. Anything far larger is refused before parsing.
MAX_CERTIFICATE_BYTES = 64 * 1024
MAX_CRL_BYTES = 64 * 1024 * 1024


# What cryptography raises on damaged input. KeyError included: a name
# attribute whose string tag is unknown raises it (found by the property test);
# InvalidVersion (an unknown certificate or CRL version), DuplicateExtension and
# UnsupportedGeneralNameType are not ValueErrors (found by fuzzing).
_PARSE_ERRORS = (
    ValueError, TypeError, IndexError, OverflowError, KeyError, UnsupportedAlgorithm,
    x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
)  # fmt: skip


def _is_pem(data: bytes) -> bool:
    return data.lstrip()[: len(_PEM_MARK)] == _PEM_MARK


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER bytes."""
    if not data:
        raise MalformedCertificate("certificate", "it is empty")
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise MalformedCertificate("certificate", f"{len(data)} bytes is far too large")
    try:
        if _is_pem(data):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
        # Names and extensions are decoded lazily; decode them now so that
        # damage surfaces here, typed (see _PARSE_ERRORS).
        _ = cert.subject, cert.issuer, cert.extensions, cert.public_key()
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate("certificate", _short(exc)) from exc
    return cert


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one certificate of DER bytes."""
    if _is_pem(data):
        if len(data) > MAX_CRL_BYTES:
            raise MalformedCertificate("certificate bundle", "it is far too large")
        try:
            return x509.load_pem_x509_certificates(data)
        except _PARSE_ERRORS as exc:
            raise MalformedCertificate("certificate bundle", _short(exc)) from exc
    return [load_certificate(data)]


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
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate(
            "certificate", f"its subject does not decode: {_short(exc)}"
        ) from exc
    part = "its issuer name"
    try:
        _ = cert.issuer
        part = "an extension"
        _ = cert.extensions
        if key:
            part = "its public key"
            cert.public_key()
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate(who, f"{part} does not decode: {_short(exc)}") from exc


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """One CRL from PEM or DER bytes."""
    if not data:
        raise MalformedCertificate("revocation list", "it is empty")
    if len(data) > MAX_CRL_BYTES:
        raise MalformedCertificate("revocation list", f"{len(data)} bytes is far too large")
    try:
        crl = x509.load_pem_x509_crl(data) if _is_pem(data) else x509.load_der_x509_crl(data)
        # Parsing is lazy in places: touch what validation reads, so that a
        # damaged list fails here with a typed error, not in the middle of a
        # check. (Entries are read when the list is indexed: IndexedCrl.)
        _ = crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate("revocation list", _short(exc)) from exc
    return crl


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
