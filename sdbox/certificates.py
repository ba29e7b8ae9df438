"""Certificates and CRLs from bytes that may be anything: the project's one loader.

Bytes come from a card, a file, the centre or the network: PEM or DER,
possibly truncated, mislabelled or hostile. cryptography raises a dozen kinds
of exception on damaged input (not all ValueErrors: InvalidVersion,
DuplicateExtension, UnsupportedGeneralNameType, a KeyError for an unknown
string tag, found by property tests and fuzzing), and decodes names and
extensions lazily, so damage would otherwise surface wherever a field is
first read. Every failure here is :class:`UnreadableCertificate`, raised at
load time; each layer turns it into its own error (the card's
``CardProtocolError``, trust's ``MalformedCertificate``, a configuration
error naming the file). Below every package (sdbox.errors only), so the
card library and the box's runtime use the same loader.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from sdbox.errors import SdboxError

_PEM_MARK = b"-----BEGIN "
# A certificate on a PIV card fits in a few kilobytes; a CRL of 100,000
# entries is about 4 MB. Anything far larger is refused before parsing.
MAX_CERTIFICATE_BYTES = 64 * 1024
MAX_CRL_BYTES = 64 * 1024 * 1024

# What cryptography raises on damaged input (see the module docstring).
PARSE_ERRORS = (
    ValueError, TypeError, IndexError, OverflowError, KeyError, UnsupportedAlgorithm,
    x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType,
)  # fmt: skip


class UnreadableCertificate(SdboxError):
    """A certificate, bundle or CRL that does not decode; ``what`` it was and ``detail``."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"The {what} is damaged or not in the expected format ({detail}).")
        self.what = what
        self.detail = detail


def short(exc: BaseException) -> str:
    """cryptography's reason, short enough for a message."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def is_pem(data: bytes) -> bool:
    """Whether ``data`` is PEM text (else it is taken as DER)."""
    return data.lstrip()[: len(_PEM_MARK)] == _PEM_MARK


def load_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """One certificate from PEM or DER bytes, its names, extensions and key decoded."""
    if not data:
        raise UnreadableCertificate(what, "it is empty")
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise UnreadableCertificate(what, f"{len(data)} bytes is far too large")
    try:
        cert = x509.load_pem_x509_certificate(data) if is_pem(data) else (
            x509.load_der_x509_certificate(data)
        )  # fmt: skip
        _ = cert.subject, cert.issuer, cert.extensions, cert.public_key()
    except PARSE_ERRORS as exc:
        raise UnreadableCertificate(what, short(exc)) from exc
    return cert


def load_certificates(data: bytes, what: str = "certificate bundle") -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (at least one), or the one certificate of DER bytes."""
    if not is_pem(data):
        return [load_certificate(data, what)]
    if len(data) > MAX_CRL_BYTES:
        raise UnreadableCertificate(what, "it is far too large")
    try:
        # Names and extensions stay lazy here: trust decodes each certificate of
        # a bundle where it can name it (sdbox.trust.loaders.check_decodable).
        return x509.load_pem_x509_certificates(data)
    except PARSE_ERRORS as exc:
        raise UnreadableCertificate(what, short(exc)) from exc


def load_crl(data: bytes, what: str = "revocation list") -> x509.CertificateRevocationList:
    """One CRL from PEM or DER bytes."""
    if not data:
        raise UnreadableCertificate(what, "it is empty")
    if len(data) > MAX_CRL_BYTES:
        raise UnreadableCertificate(what, f"{len(data)} bytes is far too large")
    try:
        crl = x509.load_pem_x509_crl(data) if is_pem(data) else x509.load_der_x509_crl(data)
        # Parsing is lazy in places: touch what validation reads, so that a
        # damaged list fails here. (Entries are read when the list is indexed.)
        _ = crl.issuer, crl.last_update_utc, crl.next_update_utc, crl.extensions
    except PARSE_ERRORS as exc:
        raise UnreadableCertificate(what, short(exc)) from exc
    return crl
