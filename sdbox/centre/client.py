"""The box's side of the session-credential protocol (docs/broker-protocol.md).

The HTTPS exchange (:func:`post_json`, :func:`tls_context`) and the possession
proof (:func:`ephemeral_key`) are shared by every box-side client of the
centre: credentials here, enrolment (:mod:`sdbox.centre.enrolment`) and card
management (:mod:`sdbox.centre.cards`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sdbox.centre.errors import CentreRefused, CentreUnreachable
from sdbox.centre.protocol import (
    POSSESSION_SIGNATURE,
    ProtocolError,
    Transcript,
    b64,
    proof_mac,
    signature_message,
    unb64,
)

CardEcdh = Callable[[ec.EllipticCurvePublicKey], Awaitable[bytes]]
CardSign = Callable[[bytes], Awaitable[bytes]]
"""The project key's signature on the card over a message (RSA: PKCS#1 v1.5, SHA-256)."""


class BoxKey(Protocol):
    """What the centre needs of the box's identity (``sdbox.identity.BoxIdentity`` is one)."""

    @property
    def certificate(self) -> x509.Certificate:
        """The box certificate."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The box key's signature over ``message`` (ECDSA, DER)."""
        ...


@dataclass(frozen=True)
class IssuedCredential:
    """A one-time credential for one bubble (the secret never shows in a repr)."""

    kind: Literal["password", "spice-ticket"]
    user: str
    secret: str = field(repr=False)
    expires_at: datetime


def tls_context(anchors: list[x509.Certificate]) -> ssl.SSLContext:
    """TLS to the broker: its certificate must chain to ``anchors`` and name its host."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata="".join(
        a.public_bytes(serialization.Encoding.PEM).decode() for a in anchors
    ))  # fmt: skip
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def post_json(
    url: str, body: dict[str, Any], context: ssl.SSLContext | None, timeout_s: float
) -> dict[str, Any]:
    """POST ``body`` as JSON; the answer object, or a typed centre error."""
    # https only (checked in request_credential): S310's file:/custom schemes cannot occur
    request = urllib.request.Request(  # noqa: S310
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout_s) as response:  # noqa: S310
            answer = json.loads(response.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(64 * 1024))
        except ValueError:
            detail = {}
        raise CentreRefused(
            str(detail.get("error", exc.code)), str(detail.get("message", exc.reason)),
            detail if isinstance(detail, dict) else {},
        ) from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CentreUnreachable(
            f"the centre cannot be reached ({reason}); check the network and try again"
        ) from exc
    except ValueError as exc:
        raise ProtocolError("the centre's answer is not JSON") from exc
    if not isinstance(answer, dict):
        raise ProtocolError("the centre's answer is not a JSON object")
    return answer


def ephemeral_key(certificate: x509.Certificate, point: bytes) -> ec.EllipticCurvePublicKey:
    """The centre's ephemeral key for a possession proof, on the curve of ``certificate``'s key."""
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ProtocolError("the project key is not an EC key")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(public.curve, point)
    except ValueError as exc:
        raise ProtocolError("the centre's ephemeral key is not on the project key's curve") from exc


async def request_credential(
    url: str,
    *,
    project_id: str,
    endpoint: str,
    project_certificate: x509.Certificate,
    card_ecdh: CardEcdh,
    identity: BoxKey,
    server_anchors: list[x509.Certificate],
    timeout_s: float = 10.0,
    card_sign: CardSign | None = None,
) -> IssuedCredential:
    """Ask the broker for a one-time credential for ``project_id``'s bubble at ``endpoint``.

    The possession proof follows the project key's type, never the broker's
    answer: ECDH for an EC key, ``card_sign`` over the transcript for RSA.
    """
    signs = isinstance(project_certificate.public_key(), rsa.RSAPublicKey)
    if signs and card_sign is None:
        raise ProtocolError("an RSA project key proves possession by signing: no signer given")
    if not url.startswith("https://"):
        raise ProtocolError("the broker URL must be https://")
    context = tls_context(server_anchors)
    der = serialization.Encoding.DER
    box_der = identity.certificate.public_bytes(der)
    project_der = project_certificate.public_bytes(der)
    opening = {
        "project": project_id,
        "endpoint": endpoint,
        "box_certificate": b64(box_der),
        "project_certificate": b64(project_der),
    }
    challenge = await asyncio.to_thread(
        post_json, f"{url}/v1/challenge", opening, context, timeout_s
    )
    exchange = challenge.get("exchange")
    if not isinstance(exchange, str):
        raise ProtocolError("the challenge has no exchange id")
    nonce = unb64(challenge.get("nonce"), "nonce")
    if signs:
        assert card_sign is not None
        if challenge.get("possession") != POSSESSION_SIGNATURE:
            raise ProtocolError("the centre did not ask for the signature an RSA key gives")
        transcript = Transcript(exchange, nonce, project_id, endpoint, box_der, project_der, b"")
        # on the card: the project key signs the whole transcript, context-prefixed
        proof = await card_sign(signature_message(transcript))
    else:
        point = unb64(challenge.get("ephemeral"), "ephemeral")
        ephemeral = ephemeral_key(project_certificate, point)
        transcript = Transcript(exchange, nonce, project_id, endpoint, box_der, project_der, point)
        shared = await card_ecdh(ephemeral)  # on the card: the proof that it holds the project key
        proof = proof_mac(shared, transcript)
    body = {
        "exchange": exchange,
        "proof": b64(proof),
        "box_signature": b64(await asyncio.to_thread(identity.sign, transcript.encode())),
    }
    answer = await asyncio.to_thread(post_json, f"{url}/v1/credential", body, context, timeout_s)
    try:
        kind = answer["kind"]
        if kind not in ("password", "spice-ticket"):
            raise ProtocolError(f"unknown credential kind {kind!r}")
        return IssuedCredential(
            kind=kind, user=str(answer.get("user", "")), secret=str(answer["secret"]),
            expires_at=datetime.fromisoformat(str(answer["expires"])),
        )  # fmt: skip
    except (KeyError, ValueError) as exc:
        raise ProtocolError("the centre's credential answer is incomplete") from exc
