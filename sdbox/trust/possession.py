"""Proof that the inserted card holds the key of a certificate it presented.

A certificate is public: anyone can copy it onto another card. Before a
validated certificate is believed, the card must use its private key on
something fresh that the box chose:

* project keys (PIV key-management slots, keyAgreement only) do ECDH with a
  fresh ephemeral key of the box; the box computes the same secret from the
  certificate's public key and compares;
* the holder key (slot 9A) signs a fresh challenge; the box verifies the
  signature with the certificate's public key.

The card operations are passed in (:class:`EcdhOperation`,
:class:`SignOperation`): this library does not talk to cards; the smartcard
client provides them. Their own errors (card removed, not verified) pass
through unchanged.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sdbox.trust.errors import PossessionFailed, WrongPurpose
from sdbox.trust.names import subject_of

CHALLENGE_CONTEXT = b"sdbox possession proof v1\x00"
"""Prefix of every signed challenge, so that the signature cannot be replayed
as anything else the holder key signs (a CMP request, a login)."""


EcdhOperation = Callable[[int, ec.EllipticCurvePublicKey], bytes]
"""ECDH on the card: ``(slot, peer_public_key) -> shared secret`` (the x coordinate)."""

SignOperation = Callable[[int, bytes], bytes]
"""A signature by the slot's key: ``(slot, message) -> signature``; the client hashes and pads
(ECDSA with SHA-256, or SHA-384 for P-384; RSA PKCS#1 v1.5 with SHA-256)."""


def prove_key_agreement(cert: x509.Certificate, slot: int, ecdh: EcdhOperation) -> None:
    """Raise :class:`PossessionFailed` unless the card's ``slot`` holds ``cert``'s EC key."""
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise WrongPurpose(subject_of(cert), "its key is not an EC key-agreement key")
    # A fresh ephemeral key per proof: the card cannot have computed the
    # answer before, and the box never reuses the secret.
    ephemeral = ec.generate_private_key(public.curve)
    expected = ephemeral.exchange(ec.ECDH(), public)
    answer = ecdh(slot, ephemeral.public_key())
    if not hmac.compare_digest(expected, answer):
        raise PossessionFailed(subject_of(cert))


def new_challenge() -> bytes:
    """A fresh challenge message (context prefix + 32 random bytes)."""
    return CHALLENGE_CONTEXT + secrets.token_bytes(32)


def prove_signature(
    cert: x509.Certificate, slot: int, sign: SignOperation, *, challenge: bytes | None = None
) -> bytes:
    """Raise :class:`PossessionFailed` unless ``slot`` signs for ``cert``'s key.

    Returns the challenge that was signed (a caller that logs the proof can
    keep it; it is not secret).
    """
    message = challenge if challenge is not None else new_challenge()
    if not message.startswith(CHALLENGE_CONTEXT):
        raise ValueError("challenges carry the sdbox possession context prefix")
    verify_signature(cert, sign(slot, message), message)
    return message


def verify_signature(cert: x509.Certificate, signature: bytes, message: bytes) -> None:
    """Raise :class:`PossessionFailed` unless ``signature`` is ``cert``'s key's over ``message``.

    The algorithms a PIV card signs with here: ECDSA with SHA-256 (SHA-384 for
    P-384), RSA PKCS#1 v1.5 with SHA-256.
    """
    public = cert.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            digest: hashes.HashAlgorithm = (
                hashes.SHA384() if public.curve.key_size >= 384 else hashes.SHA256()
            )
            public.verify(signature, message, ec.ECDSA(digest))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise WrongPurpose(subject_of(cert), "its key type cannot sign a challenge here")
    except InvalidSignature:
        raise PossessionFailed(subject_of(cert)) from None
