"""The centre protocol's definitions, shared by the box and the reference centre.

The box's clients (:mod:`sdbox.centre`) and the reference centre
(:mod:`sdbox.broker`) both import this module: transcripts, proofs, field
helpers and the protocol's errors (docs/broker-protocol.md).

Session credentials take two requests over HTTPS. The box opens with its
certificate and the project certificate; the broker answers with a fresh
nonce and an ephemeral EC key on the project key's curve. The box runs ECDH
with the project key ON THE CARD against that ephemeral key, derives a MAC
key from the shared secret (HKDF-SHA256, salt = nonce) and returns a MAC
over the transcript, plus its own signature over the same transcript with
the box key (TPM). The transcript binds the exchange id, nonce, project,
endpoint, both certificates and the ephemeral key, so nothing can be
replayed elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sdbox.errors import SdboxError
from sdbox.trust.errors import MalformedCertificate
from sdbox.trust.loaders import load_certificate

VERSION = "sdbox-broker/1"
PROOF_INFO = b"sdbox broker possession proof v1"
NONCE_BYTES = 32


class ProtocolError(SdboxError):
    """A message does not follow the protocol (either side)."""


class Refused(SdboxError):
    """Centre side: a refusal with its code (docs/broker-protocol.md) and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode()


def unb64(value: object, field: str) -> bytes:
    """Bytes of a base64 field; ProtocolError names the field."""
    if not isinstance(value, str):
        raise ProtocolError(f"field '{field}' must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ProtocolError(f"field '{field}' is not valid base64") from exc


def text_field(request: dict[str, Any], name: str) -> str:
    """A request's short text field; ProtocolError names the field."""
    value = request.get(name)
    if not isinstance(value, str) or not value or len(value) > 300:
        raise ProtocolError(f"field '{name}' must be non-empty text")
    return value


def certificate_field(der: bytes, what: str) -> x509.Certificate:
    """A certificate sent by the box; a malformed one is refused as ``<what>_certificate``."""
    try:
        # the loader decodes names and extensions now: a damaged one is refused
        # here, not met as a bare KeyError in the middle of validation (fuzzing)
        return load_certificate(der)
    except MalformedCertificate as exc:
        raise Refused(f"{what}_certificate", f"the {what} certificate is malformed", 400) from exc


@dataclass(frozen=True)
class Transcript:
    """What both proofs cover."""

    exchange: str
    nonce: bytes
    project: str
    endpoint: str
    box_certificate: bytes  # DER
    project_certificate: bytes  # DER
    ephemeral: bytes  # X9.62 uncompressed point

    def encode(self) -> bytes:
        """Canonical bytes: sorted-key JSON with hashes of the certificates."""
        return json.dumps(
            {
                "version": VERSION,
                "exchange": self.exchange,
                "nonce": b64(self.nonce),
                "project": self.project,
                "endpoint": self.endpoint,
                "box_certificate_sha256": hashlib.sha256(self.box_certificate).hexdigest(),
                "project_certificate_sha256": hashlib.sha256(self.project_certificate).hexdigest(),
                "ephemeral": b64(self.ephemeral),
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()


SIGNATURE_CONTEXT = b"sdbox broker possession signature v1\x00"
"""Prefix of what an RSA project key signs as its possession proof, so that the signature
cannot be replayed as a CMP request, a login, a card management opening or a holder proof."""
POSSESSION_ECDH = "ecdh"
POSSESSION_SIGNATURE = "rsa-pkcs1v15-sha256"


def signature_message(transcript: Transcript) -> bytes:
    """What an RSA project key signs (PKCS#1 v1.5, SHA-256) to prove the card holds it."""
    return SIGNATURE_CONTEXT + transcript.encode()


def proof_mac(shared_secret: bytes, transcript: Transcript) -> bytes:
    """The possession proof: HMAC-SHA256 over the transcript, keyed from the ECDH secret."""
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=transcript.nonce, info=PROOF_INFO).derive(
        shared_secret
    )
    return hmac.new(key, transcript.encode(), hashlib.sha256).digest()


CARD_VERSION = "sdbox-card/1"
CARD_CONTEXT = b"sdbox card management v1\x00"
"""Prefix of what the holder key signs to open card management, so that the
signature cannot be replayed as a CMP request, a login or a possession proof."""


@dataclass(frozen=True)
class CardTranscript:
    """What the holder key (on the card) and the box key sign to open card management."""

    exchange: str
    nonce: bytes
    card_guid: bytes
    box_certificate: bytes  # DER
    holder_certificate: bytes  # DER
    directory: bytes  # the signed directory object, as read from the card

    def encode(self) -> bytes:
        """Canonical bytes: the context prefix, then sorted-key JSON with hashes."""
        return (
            CARD_CONTEXT
            + json.dumps(
                {
                    "version": CARD_VERSION,
                    "exchange": self.exchange,
                    "nonce": b64(self.nonce),
                    "card_guid": self.card_guid.hex(),
                    "box_certificate_sha256": hashlib.sha256(self.box_certificate).hexdigest(),
                    "holder_certificate_sha256": hashlib.sha256(
                        self.holder_certificate
                    ).hexdigest(),
                    "directory_sha256": hashlib.sha256(self.directory).hexdigest(),
                },
                sort_keys=True,
                separators=(",", ":"),
            ).encode()
        )


def key_endpoint(card_guid: bytes, slot: int) -> str:
    """The ``endpoint`` of a new card key's possession transcript (never a bubble's)."""
    return f"card:{card_guid.hex()}:slot:{slot:02X}"
