"""The box's side of the fleet: check-ins and the audit trail, signed, queued, retried.

State lives in one small file on the data partition (``state.json``: the last
request sequence, the audit cursor and number the centre acknowledged) and a
bounded queue of check-ins not yet delivered (``outbox/``). Both are written
atomically, so a power cut leaves the old state or the new one.

- A check-in is queued first, then sent; when the centre is away the queue
  keeps the newest :data:`OUTBOX_LIMIT` reports (a report is a snapshot: the
  oldest go first, and the next delivered report says how many were dropped).
- The audit trail is read from the journal after the acknowledged cursor and
  shipped in numbered batches; the cursor moves only when the centre has
  answered, so a reboot or an outage resends rather than loses, and the
  centre's numbering makes a resend harmless.
- A request's sequence number is saved before it is sent; a retry of the
  same request reuses it. A centre that already holds a later sequence (the
  box's data partition was reset) says so, and the box continues after it.
- After a failure, the next attempt waits an exponential back-off with jitter
  (:func:`backoff_s`), capped at the normal interval.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.centre.client import post_json
from sdbox.centre.errors import CentreRefused, CentreUnreachable
from sdbox.centre.fleet import (
    MAX_EVENTS_PER_BATCH,
    AuditRecord,
    Diagnostics,
    Envelope,
    Report,
)
from sdbox.centre.protocol import ProtocolError
from sdbox.config import setting

OUTBOX_LIMIT = 96  # eight hours of five-minute check-ins
TIMEOUT_S = 10.0
_log = logging.getLogger("sdbox.fleet")


class Signer(Protocol):
    """The box identity (sdbox.identity's BoxIdentity): its certificate and a signature."""

    box_id: str
    certificate: x509.Certificate

    def sign(self, message: bytes) -> bytes:
        """ECDSA P-256 over ``message`` with the TPM-held key."""
        ...


class AuditSource(Protocol):
    """The journal's audit events after a cursor (:class:`sdbox.centre.journal.JournalAuditSource`)."""

    def read_after(self, cursor: str | None, limit: int) -> Sequence[Any]:
        """Events with ``cursor``, ``realtime_us``, ``event`` and ``fields``, in order."""
        ...


@dataclass(frozen=True)
class ReporterState:
    """What the box remembers between runs."""

    sequence: int = 0  # the last request sequence used
    audit_cursor: str | None = None  # the journal cursor of the last event the centre holds
    audit_number: int = 0  # that event's number
    synced: bool = False  # the audit numbering has been aligned with the centre's
    dropped: int = 0  # check-ins dropped from a full outbox since the last delivery


@dataclass(frozen=True)
class Delivery:
    """What one run achieved."""

    checkins_sent: int = 0
    checkins_pending: int = 0
    events_sent: int = 0
    audit_through: int | None = None
    error: str = ""
    update: dict[str, Any] | None = None  # the last check-in answer's update offer, as sent


def _positive(value: int) -> str | None:
    return None if value > 0 else "must be a positive number of seconds"


def _window(value: str) -> str | None:
    parts = value.split("-")
    try:
        if len(parts) == 2:
            for part in parts:
                datetime.strptime(part.strip(), "%H:%M")  # a time of day: no zone
            return None
    except ValueError:
        pass
    return "must be HH:MM-HH:MM (local time, may wrap past midnight)"


def backoff_s(failures: int, interval_s: float, rng: Callable[[], float] = random.random) -> float:
    """The wait before the next attempt after ``failures`` failures in a row (full jitter)."""
    if failures <= 0:
        return interval_s
    ceiling = min(interval_s, 15.0 * 2 ** min(failures - 1, 16))
    return float(ceiling / 2 + rng() * ceiling / 2)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Reporter:
    """Delivers the box's check-ins and audit trail to ``url`` (the fleet service, through the tunnel)."""

    def __init__(
        self,
        url: str,
        state_dir: Path,
        identity: Signer,
        audit: AuditSource,
        *,
        context: ssl.SSLContext | None = None,
        post: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"the fleet service URL must be http(s): {url!r}")
        self.url = url.rstrip("/")
        self.state_dir = state_dir
        self.outbox = state_dir / "outbox"
        self.outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.identity = identity
        self.audit = audit
        self.context = context
        self._post = post or self._http_post
        self._der = identity.certificate.public_bytes(serialization.Encoding.DER)

    # -- state -------------------------------------------------------------------

    @property
    def _state_file(self) -> Path:
        return self.state_dir / "state.json"

    def state(self) -> ReporterState:
        """The saved state (a missing or damaged file starts afresh: the centre re-aligns it)."""
        try:
            raw = json.loads(self._state_file.read_text())
            return ReporterState(**raw)
        except FileNotFoundError:
            return ReporterState()
        except (ValueError, TypeError):
            _log.warning("the fleet state file %s is damaged: starting afresh", self._state_file)
            return ReporterState()

    def _save(self, state: ReporterState) -> None:
        _atomic_write(self._state_file, json.dumps(state.__dict__).encode())

    # -- the outbox ----------------------------------------------------------------

    def queue(self, report: Report) -> None:
        """Keep ``report`` until delivered (the oldest go when the outbox is full)."""
        name = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}.json"
        _atomic_write(self.outbox / name, json.dumps(report.to_json()).encode())
        pending = sorted(self.outbox.glob("*.json"))
        excess = pending[: max(0, len(pending) - OUTBOX_LIMIT)]
        for old in excess:
            old.unlink()
        if excess:
            state = self.state()
            self._save(replace(state, dropped=state.dropped + len(excess)))

    def pending(self) -> list[Path]:
        """Queued check-ins, oldest first."""
        return sorted(self.outbox.glob("*.json"))

    # -- delivery ------------------------------------------------------------------

    def deliver(self) -> Delivery:
        """Send what is queued, then the audit trail; stop at the first failure (kept for later)."""
        sent = events = 0
        through: int | None = None
        offer: dict[str, Any] | None = None
        try:
            for path in self.pending():
                body = json.loads(path.read_text())
                state = self.state()
                if state.dropped:
                    body["problems"] = [*body.get("problems", []), f"fleet_checkins_dropped:{state.dropped}"][-64:]
                answer = self._request("checkin", body)
                path.unlink()
                sent += 1
                state = self.state()
                if state.dropped:
                    self._save(replace(state, dropped=0))
                self._align(answer)
                offer = answer.get("update") if isinstance(answer.get("update"), dict) else None
            while True:
                count, through = self._ship_audit()
                events += count
                if count < MAX_EVENTS_PER_BATCH:
                    break
        except (CentreUnreachable, CentreRefused, ProtocolError) as exc:
            return Delivery(sent, len(self.pending()), events, through, exc.message, offer)
        return Delivery(sent, len(self.pending()), events, through, "", offer)

    def send_diagnostics(self, upload: Diagnostics) -> int:
        """Upload diagnostics now (not queued: the helpdesk is waiting); the request's sequence."""
        answer = self._request("diagnostics", upload.to_json())
        accepted = answer.get("accepted")
        if not isinstance(accepted, int):
            raise ProtocolError("the fleet service did not confirm the diagnostics")
        return accepted

    def _align(self, answer: dict[str, Any]) -> None:
        """On a fresh state, continue the audit numbering where the centre holds it."""
        state = self.state()
        held = answer.get("audit_through")
        if not state.synced and isinstance(held, int) and held >= 0:
            self._save(replace(state, audit_number=max(held, state.audit_number), synced=True))

    def _ship_audit(self) -> tuple[int, int | None]:
        state = self.state()
        if not state.synced:
            return 0, None  # the first check-in tells the box where the centre's numbering stands
        found = self.audit.read_after(state.audit_cursor, MAX_EVENTS_PER_BATCH)
        if not found:
            return 0, None
        records = [
            AuditRecord(state.audit_number + i, e.realtime_us, e.event, dict(e.fields))
            for i, e in enumerate(found, start=1)
        ]
        answer = self._request("audit", {"events": [r.to_json() for r in records]})
        through = answer.get("audit_through")
        if not isinstance(through, int) or through < records[-1].number:
            raise ProtocolError("the fleet service did not confirm the audit events it was sent")
        self._save(
            replace(self.state(), audit_cursor=found[-1].cursor, audit_number=records[-1].number)
        )
        return len(records), through

    def _request(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        for _attempt in range(2):
            state = self.state()
            sequence = state.sequence + 1
            self._save(replace(state, sequence=sequence))  # never reused for other content
            envelope = Envelope(
                kind=kind,
                sequence=sequence,
                sent=datetime.now(UTC).isoformat(timespec="seconds"),
                box_certificate=self._der,
                body=body,
            )
            signed = replace(envelope, signature=self.identity.sign(envelope.signed_bytes()))
            try:
                return self._post(f"{self.url}/v1/{kind}", signed.to_json())
            except CentreRefused as exc:
                last = exc.detail.get("last_sequence") if exc.code == "replayed" else None
                if not isinstance(last, int):
                    raise
                # the centre holds a later sequence (this box's state was reset): go on after it
                _log.warning("the fleet service holds request %d already: continuing after it", last)
                self._save(replace(self.state(), sequence=max(last, sequence)))
        raise ProtocolError("the fleet service refused the request's sequence twice")

    def _http_post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_json(url, body, self.context, TIMEOUT_S)


@dataclass(frozen=True)
class ReporterConfig:
    """`sdbox fleet report|run --config FILE` (the box side; /etc/sdbox/fleet.toml)."""

    url: str = setting(help="the fleet service, through the tunnel (http or https)")
    state_dir: Path = setting(
        Path("/var/lib/sdbox/fleet"), help="state and the check-in queue, on the data partition"
    )
    agent_config: Path = setting(
        Path("/etc/sdbox/agent.toml"), help="the agent's configuration: its [identity] is used"
    )
    ca_bundle: str = setting("", help="https: the roots that certify the service ('' = plain http)")
    interval_s: int = setting(300, help="run: seconds between scheduled check-ins", check=_positive)
    journal_dir: str = setting("", help="read audit events from these journal files ('' = system)")
    vici_socket: Path = setting(
        Path("/run/charon.vici"), help="charon's VICI socket (the tunnel state); absent = no tunnel"
    )
    generation_file: Path = setting(
        Path("/etc/sdbox/generation"), help="the box's generation name (written at flashing)"
    )
    image_version_file: Path = setting(
        Path("/etc/sdbox/image-version"), help="the running image's version"
    )
    updates: bool = setting(True, help="run: install the updates the fleet service offers")
    reboot_window: str = setting(
        "01:00-05:00",
        help="run: local hours when the box may reboot into an installed update (never with a card in)",
        check=_window,
    )
