"""`sdbox broker`: the reference implementation of the centre's side (docs/broker-protocol.md).

Used by tests and the demo; a centre implements the same protocol behind its
own gateway. HTTPS on the standard library's threading server: two JSON
requests, no state but short-lived, single-use exchanges in memory.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sdbox.broker.bioenrol import BioEnrolment
from sdbox.broker.cards import CardManagement
from sdbox.broker.enrolment import MAX_TOKEN, EnrolmentTokens
from sdbox.broker.errors import BrokerError
from sdbox.broker.provision import new_secret, provision_rdp, provision_spice
from sdbox.centre.protocol import (
    NONCE_BYTES,
    POSSESSION_ECDH,
    POSSESSION_SIGNATURE,
    ProtocolError,
    Refused,
    Transcript,
    b64,
    certificate_field,
    proof_mac,
    signature_message,
    text_field,
    unb64,
)
from sdbox.certificates import load_certificates
from sdbox.config import load_file, setting
from sdbox.errors import SdboxError
from sdbox.trust import Purpose, validate
from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore

_log = logging.getLogger("sdbox.broker")
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class BubbleConfig:
    """One project's bubble."""

    endpoint: str = setting(help="HOST:PORT the box connects to")
    kind: Literal["rdp", "spice"] = setting(help="rdp (SAM file) or spice (QMP ticket)")
    user: str = setting("researcher", help="rdp: the account on the bubble")
    sam_file: str = setting("", help="rdp: the shadow server's SAM file")
    qmp_socket: str = setting("", help="spice: QEMU's QMP socket")


@dataclass(frozen=True)
class BrokerConfig:
    """`sdbox broker --config FILE`."""

    tls_certificate: Path = setting(help="the broker's server certificate (PEM, chain)")
    tls_key: Path = setting(help="its private key (PEM)")
    anchors: Path = setting(help="trusted roots (PEM)")
    intermediates: Path = setting(help="issuing CA certificates (PEM)")
    crl_dir: Path = setting(help="CRLs of the CAs (RevocationStore)")
    listen: str = setting(
        "127.0.0.1:8443", help="HOST:PORT to listen on (through the tunnel in production)"
    )
    build_time: str = setting("2026-01-01T00:00:00+00:00", help="time floor for validation")
    exchange_lifetime_s: int = setting(30, help="how long a challenge may be answered")
    credential_lifetime_s: int = setting(120, help="how long an issued credential is valid")
    bubbles: dict[str, BubbleConfig] = setting({}, help="project id -> bubble")
    enrolment_tokens: str = setting(
        "",
        help="first boot: register of one-time enrolment tokens (JSON, hashed); '' = no enrolment",
    )
    box_ca: str = setting(
        "", help="first boot: PKI directory whose box-identity CA certifies enrolled boxes"
    )
    box_certificate_days: int = setting(365, help="validity of an enrolled box's certificate")
    card_register: str = setting(
        "",
        help="renewal: register of the cards this centre manages (JSON: GUID -> management key, "
        "holder certificate digest; mode 0600); '' = no card management",
    )
    directory_pki: str = setting(
        "", help="renewal: PKI directory whose directory signer signs the cards' next directories"
    )
    renewal_window_days: int = setting(
        30, help="renewal: how long before expiry a project certificate may be renewed"
    )
    card_session_lifetime_s: int = setting(
        300, help="renewal: how long a card management session lasts"
    )
    bio_enrolment_register: str = setting(
        "",
        help="remote enrolment: the operators' authorisations (JSON, mode 0600; needs "
        "card_register); '' = no remote enrolment",
    )
    enrolment_operators: str = setting(
        "", help="remote enrolment: directory of operators' <name>.key and <name>.pem"
    )


def load_config(path: Path) -> BrokerConfig:
    """Load and validate the broker's configuration."""
    return load_file(BrokerConfig, path)


@dataclass
class _Exchange:
    transcript_base: dict[str, Any]
    ephemeral: ec.EllipticCurvePrivateKey | None  # None: an RSA project key proves by signing
    nonce: bytes
    expires: float
    project_certificate: x509.Certificate
    box_certificate: x509.Certificate


class Broker:
    """The protocol logic (HTTP-free, so unit tests call it directly)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.anchors = load_certificates(config.anchors.read_bytes(), "anchors bundle")
        self.intermediates = load_certificates(
            config.intermediates.read_bytes(), "intermediates bundle"
        )
        self.store = RevocationStore(
            config.crl_dir, build_time=datetime.fromisoformat(config.build_time)
        )
        self._exchanges: dict[str, _Exchange] = {}
        self.tokens = (
            EnrolmentTokens(Path(config.enrolment_tokens)) if config.enrolment_tokens else None
        )
        self._lock = threading.Lock()
        self.issued = 0
        self.cards = (
            CardManagement(
                register=Path(config.card_register), directory_pki=Path(config.directory_pki),
                anchors=self.anchors, intermediates=self.intermediates, store=self.store,
                window=timedelta(days=config.renewal_window_days),
                lifetime_s=config.card_session_lifetime_s,
            )
            if config.card_register and config.directory_pki
            else None
        )  # fmt: skip
        self.bio: BioEnrolment | None = None
        if self.cards is not None and config.bio_enrolment_register:
            self.bio = BioEnrolment(
                register=Path(config.bio_enrolment_register),
                operators=Path(config.enrolment_operators), anchors=self.anchors,
                intermediates=self.intermediates, store=self.store, card_proven=self.cards.proven,
            )  # fmt: skip
            self.cards.admit_enrolment = self.bio.admit

    def bio_step(self, step: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Remote enrolment's step ``step``, or a refusal when not offered here."""

        def handle(request: dict[str, Any]) -> dict[str, Any]:
            if self.bio is None:
                raise Refused("enrolment", "this centre does not enrol fingers remotely", 404)
            method: Callable[[dict[str, Any]], dict[str, Any]] = getattr(self.bio, step)
            return method(request)

        return handle

    def card(self, step: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The card management step ``step`` (renewal), or a refusal when not offered here."""

        def handle(request: dict[str, Any]) -> dict[str, Any]:
            if self.cards is None:
                raise Refused(
                    "card_management", "this centre does not manage cards at this address", 404
                )
            method: Callable[[dict[str, Any]], dict[str, Any]] = getattr(self.cards, step)
            return method(request)

        return handle

    def challenge(self, request: dict[str, Any]) -> dict[str, Any]:
        """Step 1: check the certificates, answer with a nonce and an ephemeral key."""
        project = text_field(request, "project")
        endpoint = text_field(request, "endpoint")
        bubble = self.config.bubbles.get(project)
        if bubble is None or bubble.endpoint != endpoint:
            raise Refused(
                "unknown_bubble", f"the centre has no bubble {endpoint} for project '{project}'"
            )
        box_der = unb64(request.get("box_certificate"), "box_certificate")
        project_der = unb64(request.get("project_certificate"), "project_certificate")
        box_cert, project_cert = (
            certificate_field(box_der, "box"),
            certificate_field(project_der, "project"),
        )
        now = datetime.now(UTC)
        try:
            validate(
                box_cert,
                self.intermediates,
                self.anchors,
                at=now,
                purpose=Purpose.BOX,
                crls=self.store,
            )
        except SdboxError as exc:
            raise Refused("box_identity", f"this box is not recognised: {exc.message}") from exc
        try:
            validate(
                project_cert,
                self.intermediates,
                self.anchors,
                at=now,
                purpose=Purpose.PROJECT,
                crls=self.store,
                project=project,
            )
        except SdboxError as exc:
            raise Refused("project_certificate", exc.message) from exc
        # The proof follows the validated certificate's key, never the request: EC project keys
        # agree a key with a fresh ephemeral one (ECDH); RSA ones (Purpose.PROJECT allows them
        # as signature keys only) sign the transcript.
        public = project_cert.public_key()
        ephemeral: ec.EllipticCurvePrivateKey | None = None
        point = b""
        if isinstance(public, ec.EllipticCurvePublicKey):
            ephemeral = ec.generate_private_key(public.curve)
            point = ephemeral.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        elif not isinstance(public, rsa.RSAPublicKey):  # validation refuses others: never reached
            raise Refused("project_certificate", "the project key is neither EC nor RSA")
        exchange, nonce = secrets.token_urlsafe(16), secrets.token_bytes(NONCE_BYTES)
        base = {"exchange": exchange, "nonce": nonce, "project": project, "endpoint": endpoint,
                "box_certificate": box_der, "project_certificate": project_der, "ephemeral": point}  # fmt: skip
        with self._lock:
            self._expire()
            self._exchanges[exchange] = _Exchange(
                base,
                ephemeral,
                nonce,
                time.monotonic() + self.config.exchange_lifetime_s,
                project_cert,
                box_cert,
            )
        answer: dict[str, Any] = {
            "exchange": exchange,
            "nonce": b64(nonce),
            "possession": POSSESSION_ECDH if ephemeral is not None else POSSESSION_SIGNATURE,
            "expires_in": self.config.exchange_lifetime_s,
        }
        if ephemeral is not None:
            answer["ephemeral"] = b64(point)
        return answer

    def credential(self, request: dict[str, Any]) -> dict[str, Any]:
        """Step 2: check both proofs, provision and return a one-time credential."""
        exchange_id = text_field(request, "exchange")
        with self._lock:
            self._expire()
            exchange = self._exchanges.pop(exchange_id, None)  # single use, answered or not
        if exchange is None:
            raise Refused("exchange", "the challenge expired or was already used: try again")
        transcript = Transcript(**exchange.transcript_base)
        proof = unb64(request.get("proof"), "proof")
        _check_possession(exchange, transcript, proof)
        box_key = exchange.box_certificate.public_key()
        if not isinstance(box_key, ec.EllipticCurvePublicKey):
            raise Refused("box_identity", "the box key is not an EC key")
        try:
            box_key.verify(
                unb64(request.get("box_signature"), "box_signature"),
                transcript.encode(),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature as exc:
            raise Refused("box_identity", "the box did not prove its identity") from exc
        bubble = self.config.bubbles[transcript.project]
        secret = new_secret()
        lifetime = self.config.credential_lifetime_s
        if bubble.kind == "rdp":
            provision_rdp(Path(bubble.sam_file), bubble.user, secret)
        else:
            provision_spice(Path(bubble.qmp_socket), secret, lifetime)
        self.issued += 1
        _log.info(
            "credential issued for project %s to box %s",
            transcript.project,
            exchange.box_certificate.subject.rfc4514_string(),
        )
        expires = datetime.now(UTC) + timedelta(seconds=lifetime)
        kind = "password" if bubble.kind == "rdp" else "spice-ticket"
        return {
            "kind": kind,
            "user": bubble.user if bubble.kind == "rdp" else "",
            "secret": secret,
            "expires": expires.isoformat(),
        }

    def enrol(self, request: dict[str, Any]) -> dict[str, Any]:
        """First boot: a one-time token and a CSR signed by the box key -> the box certificate."""
        if self.tokens is None or not self.config.box_ca:
            raise Refused("enrolment", "this centre does not enrol boxes at this address", 404)
        token = request.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN:
            raise ProtocolError("field 'token' must be non-empty text")
        try:
            csr = x509.load_der_x509_csr(unb64(request.get("csr"), "csr"))
        except ValueError as exc:
            raise Refused("csr", "the certification request is malformed", 400) from exc
        if not csr.is_signature_valid:
            raise Refused("csr", "the certification request is not signed by its key", 400)
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise Refused("csr", "the box key must be an ECC P-256 key", 400)
        box_id = self.tokens.consume(token)  # checked last: a bad request does not burn it
        now = datetime.now(UTC)
        with self._lock:
            pki = Pki.open(Path(self.config.box_ca))
            # a few minutes back for a box clock slightly behind, never before its CA
            start = max(now - timedelta(minutes=5), pki.box_ca.cert.not_valid_before_utc)
            certificate = pki.issue_box(
                public, box_id=box_id, not_before=start,
                not_after=now + timedelta(days=self.config.box_certificate_days),
            )  # fmt: skip
            issuer = pki.box_ca.cert
        _log.info("box %s enrolled (certificate serial %x)", box_id, certificate.serial_number)
        pem = serialization.Encoding.PEM
        return {
            "certificate": certificate.public_bytes(pem).decode(),
            "chain": [issuer.public_bytes(pem).decode()],
        }

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._exchanges.items() if e.expires < now]:
            del self._exchanges[key]


def _check_possession(exchange: _Exchange, transcript: Transcript, proof: bytes) -> None:
    """Refuse unless ``proof`` shows the card holds the project key (ECDH MAC or RSA signature)."""
    public = exchange.project_certificate.public_key()
    if exchange.ephemeral is not None and isinstance(public, ec.EllipticCurvePublicKey):
        expected = proof_mac(exchange.ephemeral.exchange(ec.ECDH(), public), transcript)
        if secrets.compare_digest(proof, expected):
            return
    elif exchange.ephemeral is None and isinstance(public, rsa.RSAPublicKey):
        try:
            public.verify(
                proof, signature_message(transcript), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            pass
        else:
            return
    raise Refused("possession", "the card did not prove it holds the project key")


class _Handler(BaseHTTPRequestHandler):
    broker: Broker
    server_version = "sdbox-broker"
    # keep-alive: a box's challenge and credential requests share one TLS connection;
    # an idle one is closed after this many seconds (StreamRequestHandler's timeout)
    protocol_version = "HTTP/1.1"
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("http: " + format, *args)

    def do_POST(self) -> None:
        routes = {
            "/v1/challenge": self.broker.challenge,
            "/v1/credential": self.broker.credential,
            "/v1/enrol": self.broker.enrol,
            **{
                f"/v1/card/{step}": self.broker.card(step)
                for step in ("open", "authenticate", "witness", "response", "prove", "directory")
            },
            **{f"/v1/bio/{step}": self.broker.bio_step(step) for step in ("begin", "status", "finish")},
        }
        handler = routes.get(self.path)
        if handler is None:
            self._send(404, {"error": "not_found", "message": "no such endpoint"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise ProtocolError("the request body is missing or too large")
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ProtocolError("the request is not a JSON object")
            self._send(200, handler(request))
        except Refused as exc:
            _log.info("refused (%s): %s", exc.code, exc.message)
            self._send(exc.status, {"error": exc.code, "message": exc.message})
        except (ProtocolError, ValueError) as exc:
            self._send(400, {"error": "protocol", "message": str(exc)})
        except BrokerError as exc:
            _log.warning("broker failure: %s", exc.message)
            self._send(503, {"error": "bubble", "message": exc.message})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status >= 400:
            # a refused request's body may be unread (unknown path, too large): the
            # connection is not reused after it
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)


class BrokerServer:
    """The broker on HTTPS, in a thread (``start``/``stop``) or the foreground (``serve``)."""

    def __init__(self, config: BrokerConfig) -> None:
        self.broker = Broker(config)
        host, _, port = config.listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"broker": self.broker})
        self.httpd = ThreadingHTTPServer((host, int(port)), handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(config.tls_certificate, config.tls_key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL the box uses."""
        host, port = self.httpd.server_address[:2]
        return f"https://{host!s}:{port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="broker", daemon=True)
        self._thread.start()

    def serve(self) -> None:
        """Serve until interrupted."""
        self.httpd.serve_forever()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
