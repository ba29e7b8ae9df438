"""The box's audit trail as the systemd journal holds it: the SDBOX_* events, after a cursor.

The journal is the queue: events are shipped from the cursor the centre last
acknowledged, so nothing is copied to a second store on the box, and an outage
of the centre costs nothing but journal space (journald's own limits on the
data partition bound it). Only audit events are read (``SDBOX_EVENT`` set to
one of :class:`~sdbox.audit.AuditEvent`), and only their SDBOX_* fields leave
the box: never MESSAGE or other journal fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from systemd import journal

from sdbox.audit import AuditEvent

_PREFIX = "SDBOX_"


@dataclass(frozen=True)
class JournalEvent:
    """One audit event read from the journal."""

    cursor: str
    realtime_us: int
    event: str
    fields: dict[str, str]


class JournalAuditSource:
    """Reads audit events from the system journal, or from journal files in ``path`` (tests, exports)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    def read_after(self, cursor: str | None, limit: int) -> list[JournalEvent]:
        """Up to ``limit`` audit events after ``cursor`` (from the start when None), in order."""
        reader = journal.Reader(path=str(self.path)) if self.path else journal.Reader()
        try:
            for event in AuditEvent:  # several matches on one field are ORed
                reader.add_match(SDBOX_EVENT=event.value)
            if cursor:
                reader.seek_cursor(cursor)
                entry = reader.get_next()
                # the cursor's own entry was shipped already; a cursor that no longer
                # exists (the journal was vacuumed) lands on the next entry: keep it
                if entry and reader.test_cursor(cursor):
                    entry = reader.get_next()
            else:
                reader.seek_head()
                entry = reader.get_next()
            found: list[JournalEvent] = []
            while entry and len(found) < limit:
                found.append(_event(entry))
                entry = reader.get_next()
            return found
        finally:
            reader.close()


def _event(entry: dict[str, object]) -> JournalEvent:
    stamp = entry["__REALTIME_TIMESTAMP"]
    realtime_us = int(stamp.timestamp() * 1_000_000) if hasattr(stamp, "timestamp") else 0
    fields = {
        key[len(_PREFIX) :].lower(): str(value)
        for key, value in entry.items()
        if key.startswith(_PREFIX) and key != "SDBOX_EVENT"
    }
    return JournalEvent(
        cursor=str(entry["__CURSOR"]),
        realtime_us=realtime_us,
        event=str(entry["SDBOX_EVENT"]),
        fields=fields,
    )


def recent_lines(units: tuple[str, ...], limit: int, path: Path | None = None) -> list[str]:
    """The last ``limit`` messages of ``units`` (sdbox's own: no secret by design), oldest first."""
    reader = journal.Reader(path=str(path)) if path else journal.Reader()
    try:
        for unit in units:
            reader.add_match(_SYSTEMD_UNIT=unit)
        reader.seek_tail()
        lines: list[str] = []
        entry = reader.get_previous()
        while entry and len(lines) < limit:
            stamp = entry.get("__REALTIME_TIMESTAMP")
            when = stamp.isoformat(timespec="seconds") if hasattr(stamp, "isoformat") else ""
            lines.append(f"{when} {entry.get('_SYSTEMD_UNIT', '')}: {entry.get('MESSAGE', '')}")
            entry = reader.get_previous()
        return lines[::-1]
    finally:
        reader.close()
