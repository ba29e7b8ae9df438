"""A PKCS#10 certification request signed by a key that cryptography cannot hold.

cryptography's CSR builder signs only with a private key object in memory;
the box key lives in the TPM. The request is small enough to encode here:
``CertificationRequestInfo`` (version 0, subject, the key's
SubjectPublicKeyInfo, no attributes) is DER-encoded, signed with
ECDSA-SHA256 by the given signer, and wrapped (RFC 2986). cryptography then
parses the result and checks its signature, so an encoding mistake cannot go
unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.identity import IdentityError

_SEQUENCE, _INTEGER, _BIT_STRING, _OID, _ATTRIBUTES = 0x30, 0x02, 0x03, 0x06, 0xA0
_ECDSA_WITH_SHA256 = bytes.fromhex("2a8648ce3d040302")  # 1.2.840.10045.4.3.2


def _tlv(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        encoded = bytes([length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        encoded = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + encoded + value


def build_csr(
    public_key: ec.EllipticCurvePublicKey,
    subject: x509.Name,
    sign: Callable[[bytes], bytes],
) -> x509.CertificateSigningRequest:
    """A CSR for ``public_key``, signed by ``sign`` (DER ECDSA-SHA256 over its argument)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = _tlv(
        _SEQUENCE,
        _tlv(_INTEGER, b"\x00") + subject.public_bytes() + spki + _tlv(_ATTRIBUTES, b""),
    )
    algorithm = _tlv(_SEQUENCE, _tlv(_OID, _ECDSA_WITH_SHA256))
    signature = _tlv(_BIT_STRING, b"\x00" + sign(info))
    try:
        csr = x509.load_der_x509_csr(_tlv(_SEQUENCE, info + algorithm + signature))
    except ValueError as exc:
        raise IdentityError(f"the certification request could not be built: {exc}") from exc
    if not csr.is_signature_valid:
        raise IdentityError("the box key's signature on its certification request is wrong")
    return csr
