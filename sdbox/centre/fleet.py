"""The fleet protocol: what a box tells its centre, and how the centre knows it is that box.

Shared by the box's reporter (:mod:`sdbox.centre.checkin`) and the centre's
fleet service (:mod:`sdbox.fleet`). Pure data, JSON and the signing rule; no
I/O.

**How a request is bound to the box's TPM identity.** Every request is an
envelope carrying the box certificate, a per-box sequence number and a body,
signed with the box identity key (ECDSA P-256 in the TPM, the key that also
authenticates the tunnel and the broker exchange). The centre validates the
certificate under the box-identity CA (anchor, revocation, time), verifies
the signature over the domain-separated canonical JSON of everything else,
and takes the box id from the certificate, never from the body. The tunnel's
own identity is not used: the fleet service sits behind the gateway and a
load balancer, where the IKE identity is gone; a signature survives both and
makes each request self-contained, so the service stays stateless between
requests (only its database holds state).

**Replay and exactly-once.** The sequence number must grow with every new
request of a box; the centre keeps the last one it accepted and the digest of
that request, so a retry of the same request (its answer was lost) is answered
again and anything older is refused. Audit events carry their own numbers
(consecutive per box, kept with the journal cursor on the box), and the centre
stores each number once: a resend after a reboot or an outage cannot
duplicate an event, and the answer says how far the centre holds them.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sdbox.centre.protocol import ProtocolError, b64, unb64
from sdbox.errors import SdboxError

VERSION = "sdbox-fleet/1"
DOMAIN = b"sdbox fleet request v1\x00"
MAX_REQUEST_BYTES = 256 * 1024  # a report with its problems, or one batch of audit events
MAX_EVENTS_PER_BATCH = 200
MAX_TEXT = 512  # any one string in a report
MAX_LIST = 64  # problems, certificates, card variants
MAX_FIELDS = 32  # fields of one audit event

KINDS = ("checkin", "audit", "diagnostics")
MAX_SECTION = 64 * 1024  # one section of a diagnostics upload
MAX_SECTIONS = 16


class FleetProtocolError(SdboxError):
    """A fleet request or answer is malformed (names the field and the problem)."""


@dataclass(frozen=True)
class CertificateExpiry:
    """One certificate the box holds, by role (never a holder's name)."""

    role: str  # "box-identity", "gateway", "crl:<issuer>"...
    not_after: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Report:
    """A box's check-in: what an operator needs to know about it, and nothing about who used it."""

    version: str  # the sdbox software version
    image_version: str  # the image the running slot was built as
    slot: str  # "a" or "b"
    generation: str
    uptime_s: int
    tunnel_state: str  # up, down, connecting, refused, none (no site profile)
    tunnel_gateway: str = ""
    tunnel_reason: str = ""
    certificates: tuple[CertificateExpiry, ...] = ()
    card_variants: tuple[str, ...] = ()  # variant names seen since the last check-in
    problems: tuple[str, ...] = ()  # recent problem codes (Problem values), newest last
    trigger: str = "schedule"  # schedule, boot, event

    def to_json(self) -> dict[str, Any]:
        """The report as JSON data (lists, not tuples: what the centre receives)."""
        # by hand rather than asdict() and a JSON round trip: the service builds this for
        # every check-in, and the generic way was a tenth of a check-in's cost
        return {
            "version": self.version, "image_version": self.image_version, "slot": self.slot,
            "generation": self.generation, "uptime_s": self.uptime_s,
            "tunnel_state": self.tunnel_state, "tunnel_gateway": self.tunnel_gateway,
            "tunnel_reason": self.tunnel_reason,
            "certificates": [{"role": c.role, "not_after": c.not_after} for c in self.certificates],
            "card_variants": list(self.card_variants), "problems": list(self.problems),
            "trigger": self.trigger,
        }  # fmt: skip


@dataclass(frozen=True)
class AuditRecord:
    """One audit event of the box's journal (its SDBOX_* fields), numbered for exactly-once."""

    number: int  # consecutive per box, from 1
    realtime_us: int  # the journal's timestamp
    event: str  # SDBOX_EVENT
    fields: dict[str, str] = field(default_factory=dict)  # SDBOX_<FIELD> without the prefix

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return asdict(self)


@dataclass(frozen=True)
class Envelope:
    """One signed request of one box."""

    kind: str
    sequence: int
    sent: str  # the box's clock, ISO 8601 (informative: the sequence orders requests)
    box_certificate: bytes  # DER
    body: dict[str, Any]
    signature: bytes = b""

    def _fields(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "kind": self.kind,
            "sequence": self.sequence,
            "sent": self.sent,
            "box_certificate": b64(self.box_certificate),
            "body": self.body,
        }

    @functools.cached_property
    def _signed(self) -> bytes:
        # kept: the service needs it twice (the signature, the retry digest)
        return DOMAIN + canonical(self._fields())

    def signed_bytes(self) -> bytes:
        """What the box key signs: the domain, then the canonical JSON of everything else."""
        return self._signed

    def digest(self) -> str:
        """Identifies the request for an idempotent retry."""
        return hashlib.sha256(self.signed_bytes()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        """The envelope as sent."""
        return {**self._fields(), "signature": b64(self.signature)}


def canonical(value: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 (what is signed)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _unb64(value: object, name: str) -> bytes:
    try:
        return unb64(value, name)
    except ProtocolError as exc:
        raise FleetProtocolError(exc.message) from exc


def _text(raw: dict[str, Any], name: str, *, empty: bool = True) -> str:
    value = raw.get(name, "" if empty else None)
    if not isinstance(value, str):
        raise FleetProtocolError(f"field '{name}' must be text")
    if len(value) > MAX_TEXT:
        raise FleetProtocolError(f"field '{name}' is longer than {MAX_TEXT} characters")
    if not empty and not value:
        raise FleetProtocolError(f"field '{name}' must not be empty")
    return value


def _int(raw: dict[str, Any], name: str, *, minimum: int = 0) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FleetProtocolError(f"field '{name}' must be an integer of at least {minimum}")
    return value


def _list(raw: dict[str, Any], name: str) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise FleetProtocolError(f"field '{name}' must be a list")
    if len(value) > MAX_LIST:
        raise FleetProtocolError(f"field '{name}' has more than {MAX_LIST} entries")
    return value


def _iso(value: str, name: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        raise FleetProtocolError(f"field '{name}' is not an ISO 8601 time") from exc
    return value


def parse_envelope(raw: object) -> Envelope:
    """A request as received (not yet trusted: the service checks certificate and signature)."""
    if not isinstance(raw, dict):
        raise FleetProtocolError("the request is not a JSON object")
    if raw.get("version") != VERSION:
        raise FleetProtocolError(f"field 'version' must be {VERSION!r}")
    kind = _text(raw, "kind", empty=False)
    if kind not in KINDS:
        raise FleetProtocolError(f"field 'kind' must be one of {', '.join(KINDS)}")
    body = raw.get("body")
    if not isinstance(body, dict):
        raise FleetProtocolError("field 'body' must be an object")
    return Envelope(
        kind=kind,
        sequence=_int(raw, "sequence", minimum=1),
        sent=_iso(_text(raw, "sent", empty=False), "sent"),
        box_certificate=_unb64(raw.get("box_certificate"), "box_certificate"),
        body=body,
        signature=_unb64(raw.get("signature"), "signature"),
    )


def parse_report(body: dict[str, Any]) -> Report:
    """A check-in body, every field checked."""
    certificates = []
    for i, item in enumerate(_list(body, "certificates")):
        if not isinstance(item, dict):
            raise FleetProtocolError(f"field 'certificates[{i}]' must be an object")
        certificates.append(
            CertificateExpiry(
                role=_text(item, "role", empty=False),
                not_after=_iso(_text(item, "not_after", empty=False), f"certificates[{i}].not_after"),
            )
        )

    def texts(name: str) -> tuple[str, ...]:
        values = _list(body, name)
        if not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in values):
            raise FleetProtocolError(f"field '{name}' must be a list of short texts")
        return tuple(values)

    return Report(
        version=_text(body, "version", empty=False),
        image_version=_text(body, "image_version"),
        slot=_text(body, "slot"),
        generation=_text(body, "generation"),
        uptime_s=_int(body, "uptime_s"),
        tunnel_state=_text(body, "tunnel_state", empty=False),
        tunnel_gateway=_text(body, "tunnel_gateway"),
        tunnel_reason=_text(body, "tunnel_reason"),
        certificates=tuple(certificates),
        card_variants=texts("card_variants"),
        problems=texts("problems"),
        trigger=_text(body, "trigger", empty=False),
    )


def parse_audit_batch(body: dict[str, Any]) -> list[AuditRecord]:
    """An audit body: consecutive numbered events, in order."""
    events = body.get("events")
    if not isinstance(events, list) or not events:
        raise FleetProtocolError("field 'events' must be a non-empty list")
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise FleetProtocolError(f"a batch holds at most {MAX_EVENTS_PER_BATCH} events")
    records = []
    for i, item in enumerate(events):
        if not isinstance(item, dict):
            raise FleetProtocolError(f"field 'events[{i}]' must be an object")
        fields = item.get("fields", {})
        if not isinstance(fields, dict) or len(fields) > MAX_FIELDS:
            raise FleetProtocolError(f"field 'events[{i}].fields' must be an object of short texts")
        for key, value in fields.items():
            if not (isinstance(value, str) and len(key) <= 64 and len(value) <= MAX_TEXT):
                raise FleetProtocolError(f"field 'events[{i}].fields.{key}' must be a short text")
        records.append(
            AuditRecord(
                number=_int(item, "number", minimum=1),
                realtime_us=_int(item, "realtime_us"),
                event=_text(item, "event", empty=False),
                fields=dict(fields),
            )
        )
    numbers = [r.number for r in records]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise FleetProtocolError("the events of a batch must be numbered consecutively, in order")
    return records


@dataclass(frozen=True)
class Diagnostics:
    """What the support screen's "send diagnostics" uploads: named text sections, no secrets.

    The box assembles them from sources that never hold a secret (versions, the
    network's and the tunnel's state, sdbox's own journal lines, which carry no
    PIN, template, key or credential by design: tests/integration/test_no_secrets.py).
    """

    reason: str  # what the researcher or the helpdesk said it is for (may be empty)
    sections: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"reason": self.reason, "sections": dict(self.sections)}


def parse_diagnostics(body: dict[str, Any]) -> Diagnostics:
    """A diagnostics body, every section checked."""
    sections = body.get("sections")
    if not isinstance(sections, dict) or not sections:
        raise FleetProtocolError("field 'sections' must be a non-empty object")
    if len(sections) > MAX_SECTIONS:
        raise FleetProtocolError(f"a diagnostics upload has at most {MAX_SECTIONS} sections")
    for name, text in sections.items():
        if not (isinstance(text, str) and 0 < len(name) <= 64 and len(text) <= MAX_SECTION):
            raise FleetProtocolError(
                f"section '{name[:64]}' must be text of at most {MAX_SECTION} characters"
            )
    return Diagnostics(reason=_text(body, "reason"), sections=dict(sections))
