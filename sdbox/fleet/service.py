"""`sdbox fleet serve`: the centre's fleet service (check-ins, audit trail, dashboard).

HTTP(S) on the centre's side of the tunnel. Box requests are signed envelopes
(:mod:`sdbox.centre.fleet`): the box certificate is validated under the
box-identity CA with the centre's CRLs, the signature verified, and the box id
read from the certificate. Every request is one database transaction; the
process keeps nothing between requests, so several can run behind a load
balancer on one database.

The dashboard (``/``, ``/boxes/<id>``, ``/certificates``) and the JSON API
(``/v1/boxes``) are read-only views for operators; they belong on the
centre's operator network behind its single sign-on (this service does not
authenticate operators itself: docs/fleet.md).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import shutil
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.centre.fleet import (
    MAX_REQUEST_BYTES,
    Envelope,
    FleetProtocolError,
    parse_audit_batch,
    parse_diagnostics,
    parse_envelope,
    parse_report,
)
from sdbox.certificates import UnreadableCertificate, load_certificate, load_certificates
from sdbox.config import load_file, setting
from sdbox.errors import SdboxError
from sdbox.fleet import dashboard, rollouts
from sdbox.fleet.db import FleetStoreError, open_database
from sdbox.fleet.store import BoxFilter, FleetStore, Replayed
from sdbox.trust import Purpose, validate
from sdbox.trust.oids import BOX_URN_PREFIX
from sdbox.trust.store import RevocationStore

_log = logging.getLogger("sdbox.fleet")

# A box's validated chain is reused for this long (never past the certificate's
# end), as long as the CRLs held do not change: chain validation is most of a
# check-in's cost, and a box checks in every few minutes. A new CRL drops every
# kept result, so a revocation takes effect with the list that carries it.
VALIDATION_TTL_S = 60.0
_CHAIN_CACHE_SIZE = 50_000
# The CRL files are looked at (a glob and a stat per file) when their directory changes, else at
# most this often rather than on every request (it was a tenth of a check-in's cost).
CRL_LOOK_S = 1.0
CONNECTION_TIMEOUT_S = 30.0  # a connection's idle limit, the TLS handshake's included


@dataclass(frozen=True)
class _Validated:
    """What a box certificate's validation found, kept until ``deadline`` (monotonic)."""

    box_id: str
    key: ec.EllipticCurvePublicKey
    deadline: float


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be at least 1"


@dataclass(frozen=True)
class FleetConfig:
    """`sdbox fleet serve --config FILE`."""

    anchors: Path = setting(help="trusted roots (PEM): the centre's root")
    intermediates: Path = setting(help="issuing CA certificates (PEM): the box-identity CA")
    crl_dir: Path = setting(help="CRLs of the CAs (RevocationStore): a revoked box is refused")
    database: Path = setting(
        Path("/var/lib/sdbox-fleet/fleet.db"), help="the SQLite database file (created on first use)"
    )
    postgres: str = setting(
        "",
        help="a PostgreSQL libpq connection string (no password: ~/.pgpass or peer); "
        "'' = the SQLite file",
    )
    listen: str = setting("127.0.0.1:8480", help="HOST:PORT (the centre's side of the tunnel)")
    workers: int = setting(
        32,
        help="threads serving requests, each with its own database connection; a bundle download "
        "holds one for its length, so keep this above the downloads expected at once",
        check=_at_least_one,
    )
    tls_certificate: str = setting("", help="the service's certificate (PEM chain); '' = plain HTTP")
    tls_key: str = setting("", help="its private key (PEM)")
    build_time: str = setting("2026-01-01T00:00:00+00:00", help="time floor for validation")
    expiry_warning_days: int = setting(30, help="the dashboard lists certificates expiring within")
    bundles: Path = setting(
        Path("/var/lib/sdbox-fleet/bundles"), help="published update bundles (by SHA-256)"
    )


class Refused(SdboxError):
    """A box request the service will not take (status, code, message for the box)."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra  # more fields of the answer (a replay's last sequence)


def box_id_of(certificate: x509.Certificate) -> str:
    """The box id from the certificate's URN (the only place the service takes it from)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier) if names else []:
        if uri.startswith(BOX_URN_PREFIX) and len(uri) > len(BOX_URN_PREFIX):
            return uri[len(BOX_URN_PREFIX) :]
    raise Refused(403, "box_identity", "the certificate names no box (no urn:sdbox:box: name)")


class Fleet:
    """The service's logic, without HTTP (unit tests call it directly)."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.store = FleetStore(open_database(config.database, config.postgres))
        self.anchors = load_certificates(config.anchors.read_bytes(), "anchors bundle")
        self.intermediates = load_certificates(
            config.intermediates.read_bytes(), "intermediates bundle"
        )
        self.crls = RevocationStore(
            config.crl_dir, build_time=datetime.fromisoformat(config.build_time)
        )
        # box certificate (DER) -> what its validation found, until its deadline
        self._chains: dict[bytes, _Validated] = {}
        self._chains_crls: tuple[tuple[str, int, int], ...] = ()
        self._crls_looked = -CRL_LOOK_S  # monotonic time the CRL files were last looked at
        self._crl_dir_mtime = -1

    def _crl_state(self) -> tuple[tuple[str, int, int], ...]:
        """The CRL files held (name, mtime, size): any change drops the validated chains."""
        found = []
        for path in sorted(self.config.crl_dir.glob("*.crl")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            found.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    def _validated(self, der: bytes) -> _Validated:
        """The box certificate, validated (the result kept for :data:`VALIDATION_TTL_S`)."""
        now = time.monotonic()
        # the directory's own mtime (one stat) moves with every list the RevocationStore
        # accepts (it writes by rename); a list rewritten in place is seen within CRL_LOOK_S
        try:
            directory = self.config.crl_dir.stat().st_mtime_ns
        except OSError:
            directory = -1
        if directory != self._crl_dir_mtime or now - self._crls_looked >= CRL_LOOK_S:
            self._crls_looked, self._crl_dir_mtime = now, directory
            crls = self._crl_state()
            if crls != self._chains_crls:  # a new list arrived: every box is checked against it
                self._chains.clear()
                self._chains_crls = crls
        cached = self._chains.get(der)
        if cached is not None and cached.deadline > now:
            return cached
        try:
            certificate = load_certificate(der, "box certificate")
        except UnreadableCertificate as exc:
            raise Refused(400, "box_identity", exc.message) from exc
        try:
            validate(
                certificate, self.intermediates, self.anchors,
                at=datetime.now(UTC), purpose=Purpose.BOX, crls=self.crls,
            )  # fmt: skip
        except SdboxError as exc:
            raise Refused(403, "box_identity", f"this box is not recognised: {exc.message}") from exc
        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise Refused(403, "box_identity", "the box key is not an EC key")
        left = (certificate.not_valid_after_utc - datetime.now(UTC)).total_seconds()
        if len(self._chains) > _CHAIN_CACHE_SIZE:
            self._chains.clear()  # a crude bound: the cache refills at one validation per box
        found = _Validated(box_id_of(certificate), key, now + min(VALIDATION_TTL_S, left))
        self._chains[der] = found
        return found

    def authenticate(self, envelope: Envelope) -> str:
        """The box id, once the certificate and the signature hold; :class:`Refused` otherwise."""
        box = self._validated(envelope.box_certificate)
        try:
            box.key.verify(envelope.signature, envelope.signed_bytes(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise Refused(403, "signature", "the request is not signed by the box's key") from exc
        return box.box_id

    def handle(self, raw: object) -> dict[str, Any]:
        """One box request: authenticate, admit its sequence, store, answer."""
        try:
            envelope = parse_envelope(raw)
        except FleetProtocolError as exc:
            raise Refused(400, "protocol", exc.message) from exc
        box_id = self.authenticate(envelope)
        try:
            if envelope.kind == "checkin":
                report = parse_report(envelope.body)
            elif envelope.kind == "audit":
                records = parse_audit_batch(envelope.body)
            else:
                diagnostics = parse_diagnostics(envelope.body)
        except FleetProtocolError as exc:
            raise Refused(400, "protocol", exc.message) from exc
        digest = envelope.digest()
        with self.store.transaction(lock=box_id, durable=envelope.kind == "audit") as db:
            try:
                admission = self.store.admit(db, box_id, envelope.sequence, digest)
            except Replayed as exc:
                raise Refused(409, "replayed", exc.message, last_sequence=exc.last_sequence) from exc
            if admission.earlier is not None:
                return admission.earlier  # a retry whose answer was lost: the same answer
            if envelope.kind == "checkin":
                # how far the centre holds the box's audit trail: a box whose state was
                # reset continues the numbering from there
                answer: dict[str, Any] = {
                    "accepted": envelope.sequence,
                    "audit_through": admission.audit_through,
                }
                offer = rollouts.on_checkin(db, box_id, report.image_version, report.problems)
                if offer is not None:
                    answer["update"] = offer
                self.store.record_checkin(
                    db, box_id, envelope.sequence, digest, report, answer, admission
                )
                _log.info("check-in %d of box %s (%s)", envelope.sequence, box_id, report.trigger)
            elif envelope.kind == "diagnostics":
                self.store.record_diagnostics(db, box_id, envelope.sequence, diagnostics)
                answer = {"accepted": envelope.sequence}
                self.store.remember(db, box_id, envelope.sequence, digest, answer)
                _log.info("box %s sent diagnostics (%d sections)", box_id, len(diagnostics.sections))
            else:
                through = self.store.record_audit(db, box_id, records)
                answer = {"accepted": envelope.sequence, "audit_through": through}
                self.store.remember(db, box_id, envelope.sequence, digest, answer, through)
                _log.info("box %s: audit events %d-%d (held through %d)",
                          box_id, records[0].number, records[-1].number, through)  # fmt: skip
        return answer


class _Handler(BaseHTTPRequestHandler):
    fleet: Fleet
    server_version = "sdbox-fleet"
    # a worker serves one connection at a time: one that sends nothing (or stalls mid-request)
    # gives its worker back after this long rather than never
    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("http: " + format, *args)

    def do_POST(self) -> None:
        if self.path not in ("/v1/checkin", "/v1/audit", "/v1/diagnostics"):
            self._json(404, {"error": "not_found", "message": "no such endpoint"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_REQUEST_BYTES:
                raise Refused(413, "protocol", f"the request must be 1 to {MAX_REQUEST_BYTES} bytes")
            try:
                raw = json.loads(self.rfile.read(length))
            except ValueError as exc:
                raise Refused(400, "protocol", "the request is not JSON") from exc
            if isinstance(raw, dict) and raw.get("kind") != self.path.rsplit("/", 1)[1]:
                raise Refused(400, "protocol", f"this endpoint takes '{self.path[4:]}' requests")
            self._json(200, self.fleet.handle(raw))
        except Refused as exc:
            _log.warning("refused a box request from %s (%s): %s",
                         self.client_address[0], exc.code, exc.message)  # fmt: skip
            self._json(exc.status, {"error": exc.code, "message": exc.message, **exc.extra})
        except FleetStoreError as exc:
            _log.error("%s", exc.message)
            self._json(503, {"error": "unavailable", "message": "the fleet database is unavailable"})

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path.startswith("/v1/bundles/"):
            self._bundle(url.path[len("/v1/bundles/") :])
            return
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        store = self.fleet.store
        try:
            filters = BoxFilter(
                version=query.get("version", ""),
                generation=query.get("generation", ""),
                problem=query.get("problem", ""),
                silent_for_s=max(0, int(query.get("silent_for_s", "0") or 0)),
            )
        except ValueError:
            self._json(400, {"error": "protocol", "message": "silent_for_s must be a number"})
            return
        try:
            if url.path == "/v1/boxes":
                self._json(200, {"boxes": [b.__dict__ for b in store.boxes(filters)]})
            elif url.path == "/":
                self._html(200, dashboard.boxes_page(store.boxes(filters), filters))
            elif re.fullmatch(r"/boxes/[^/]+/diagnostics/\d+", url.path):
                _, _, box, _, number = url.path.split("/")
                upload = store.diagnostics(urllib.parse.unquote(box), int(number))
                if upload is None:
                    self._html(404, dashboard.not_found_page())
                else:
                    self._html(200, dashboard.diagnostics_page(urllib.parse.unquote(box), *upload))
            elif url.path.startswith("/boxes/"):
                box_id = urllib.parse.unquote(url.path[len("/boxes/") :])
                found = store.box(box_id)
                if found is None:
                    self._html(404, dashboard.not_found_page())
                else:
                    self._html(200, dashboard.box_page(*found, store.diagnostics_list(box_id)))
            elif url.path == "/rollout":
                with store.db.read() as tx:
                    self._html(200, dashboard.rollout_page(rollouts.progress(tx)))
            elif url.path == "/certificates":
                days = self.fleet.config.expiry_warning_days
                self._html(200, dashboard.certificates_page(store.expiring(days), days))
            else:
                self._html(404, dashboard.not_found_page())
        except FleetStoreError as exc:
            _log.error("%s", exc.message)
            self._html(503, dashboard.unavailable_page())

    def _bundle(self, digest: str) -> None:
        """A published bundle, by its SHA-256 (the box checks the hash and RAUC the signature)."""
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            self._json(404, {"error": "not_found", "message": "no such bundle"})
            return
        path = self.fleet.config.bundles / f"{digest}.raucb"
        try:
            source = path.open("rb")
        except FileNotFoundError:
            self._json(404, {"error": "not_found", "message": "no such bundle"})
            return
        with source:
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            shutil.copyfileobj(source, self.wfile, 1 << 20)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def _html(self, status: int, page: str) -> None:
        self._send(status, page.encode(), "text/html; charset=utf-8")

    def _send(self, status: int, data: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(data)


def load_config(path: Path) -> FleetConfig:
    """Load and validate the service's configuration."""
    return load_file(FleetConfig, path)


class _Server(HTTPServer):
    """Connections served by a fixed pool of worker threads.

    Not a thread per connection (``ThreadingHTTPServer``): every box opens a
    connection for each request, so a new thread per request also meant a new
    database connection per request (they are per thread) -- a SQLite open,
    or a PostgreSQL backend forked and authenticated, for each check-in: most
    of a check-in's cost, measured. The pool keeps its threads and so their
    connections.
    """

    # thousands of boxes connect at once after a centre outage: the default listen
    # backlog (5) drops their SYNs and each waits a second to retransmit
    request_queue_size = 512

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int) -> None:
        super().__init__(address, handler)
        # TLS: each connection's handshake runs in its worker (not in the accepting thread, where
        # a slow or silent client would hold up every other box's connection)
        self.tls: ssl.SSLContext | None = None
        self._accepted: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"fleet-worker-{n}", daemon=True)
            for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        self._accepted.put((request, client_address))

    def _work(self) -> None:
        while (accepted := self._accepted.get()) is not None:
            request, client_address = accepted
            if self.tls is not None:
                try:
                    request.settimeout(CONNECTION_TIMEOUT_S)
                    request = self.tls.wrap_socket(request, server_side=True)
                except OSError as exc:  # ssl.SSLError too: a scanner, a client that went quiet
                    _log.info("no TLS with %s: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    continue
            try:
                self.finish_request(request, client_address)
            except Exception:  # one connection's failure (a reset, a bug) never ends the worker
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _worker in self._workers:
            self._accepted.put(None)
        for worker in self._workers:
            worker.join(5)


class FleetServer:
    """The service in a thread (``start``/``stop``) or the foreground (``serve``)."""

    def __init__(self, config: FleetConfig) -> None:
        self.fleet = Fleet(config)
        host, _, port = config.listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"fleet": self.fleet})
        self.httpd = _Server((host, int(port)), handler, config.workers)
        self.tls = bool(config.tls_certificate)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(config.tls_certificate, config.tls_key or None)
            self.httpd.tls = context
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL boxes and operators use."""
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="fleet", daemon=True)
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
