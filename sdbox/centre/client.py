"""The box's side of the session-credential protocol (docs/broker-protocol.md).

The HTTPS exchange (:func:`post_json`, :func:`tls_context`) and the possession
proof (:func:`ephemeral_key`) are shared by every box-side client of the
centre: credentials here, enrolment (:mod:`sdbox.centre.enrolment`) and card
management (:mod:`sdbox.centre.cards`).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import urllib.parse
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


class CentreConnection:
    """One kept-alive HTTP(S) connection to the centre, for the requests of one exchange.

    The credential exchange is two requests; on one connection the second pays
    no TCP and TLS handshake again (two round trips saved, 0.3 s for a box at
    150 ms from its centre). A connection the server closed while idle is
    opened again once, before anything was sent on it.
    """

    def __init__(self, base_url: str, context: ssl.SSLContext | None, timeout_s: float) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ProtocolError(f"not an http(s) URL: {base_url!r}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._prefix = parts.path.rstrip("/")
        self._context, self._timeout_s = context, timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def __enter__(self) -> CentreConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the next request opens one)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _open(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout_s, context=self._context
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout_s
                )
        return self._connection

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` as JSON to ``path``; the answer object, or a typed centre error."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        for attempt in (1, 2):
            reused = self._connection is not None
            connection = self._open()
            try:
                connection.request("POST", self._prefix + path, data, headers)
                response = connection.getresponse()
                raw = response.read(64 * 1024)
                status, reason = response.status, response.reason
                if response.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed the idle connection: once more on a new one
                raise CentreUnreachable(
                    f"the centre cannot be reached ({exc}); check the network and try again"
                ) from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                reason_text = getattr(exc, "reason", exc)
                raise CentreUnreachable(
                    f"the centre cannot be reached ({reason_text}); check the network and try again"
                ) from exc
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            if status >= 400:
                raise CentreRefused(str(status), str(reason)) from exc
            raise ProtocolError("the centre's answer is not JSON") from exc
        if status >= 400:
            detail = answer if isinstance(answer, dict) else {}
            raise CentreRefused(
                str(detail.get("error", status)), str(detail.get("message", reason)), detail
            )
        if not isinstance(answer, dict):
            raise ProtocolError("the centre's answer is not a JSON object")
        return answer


def post_json(
    url: str, body: dict[str, Any], context: ssl.SSLContext | None, timeout_s: float
) -> dict[str, Any]:
    """POST ``body`` as JSON to ``url`` on a connection of its own (see :class:`CentreConnection`)."""
    parts = urllib.parse.urlsplit(url)
    with CentreConnection(f"{parts.scheme}://{parts.netloc}", context, timeout_s) as connection:
        return connection.post(parts.path or "/", body)


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
    with CentreConnection(url, context, timeout_s) as centre:  # both requests on one connection
        return await _exchange(
            centre, opening, project_id=project_id, endpoint=endpoint, box_der=box_der,
            project_der=project_der, project_certificate=project_certificate,
            card_ecdh=card_ecdh, card_sign=card_sign if signs else None, identity=identity,
        )  # fmt: skip


async def _exchange(
    centre: CentreConnection,
    opening: dict[str, Any],
    *,
    project_id: str,
    endpoint: str,
    box_der: bytes,
    project_der: bytes,
    project_certificate: x509.Certificate,
    card_ecdh: CardEcdh,
    card_sign: CardSign | None,
    identity: BoxKey,
) -> IssuedCredential:
    """The challenge, the card's proof, the credential: the exchange's two requests."""
    challenge = await asyncio.to_thread(centre.post, "/v1/challenge", opening)
    exchange = challenge.get("exchange")
    if not isinstance(exchange, str):
        raise ProtocolError("the challenge has no exchange id")
    nonce = unb64(challenge.get("nonce"), "nonce")
    if card_sign is not None:
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
    answer = await asyncio.to_thread(centre.post, "/v1/credential", body)
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
