"""What is due for renewal, between insertions: the timer's job.

Renewal needs the card and the holder, so it runs inside the agent. What a
timer can do without them is say, every day, which project certificates of
the cards this box has seen fall inside the renewal window: the agent notes
each verified directory's expiries (``seen.json``: card GUID, project ids,
notAfter, all public), and ``sdbox renewal mark-due`` turns them into
``due.json`` and one ``renewal_due`` audit event per project, so that an
operator sees in the journal what will be renewed at the researcher's next
insertion (or what expired because the card did not come back).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sdbox.audit import AuditEvent, audit
from sdbox.errors import SdboxError

SEEN = "seen.json"
DUE = "due.json"


class DueFileError(SdboxError):
    """The list of seen cards cannot be read or written."""


@dataclass(frozen=True)
class Due:
    """One project certificate inside the renewal window (or past its end)."""

    card: str  # GUID, hex
    project: str
    not_after: datetime
    days_left: int


def _atomic_write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_seen(path: Path) -> dict[str, dict[str, str]]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DueFileError(
            f"{path} cannot be read ({exc}); the agent writes it again at the next insertion"
        ) from exc
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise DueFileError(f"{path} is not a list of cards; delete it, the agent rewrites it")
    return raw


def record_seen(directory: Path, card: str, expiries: dict[str, datetime]) -> None:
    """Note a verified card's project expiries (the agent, at each listing).

    Readable by the timer's user: it holds public data only (GUID, ids, dates).
    """
    path = directory / SEEN
    try:
        seen = _read_seen(path)
    except DueFileError:
        seen = {}  # a damaged file is replaced by what this card says
    seen[card] = {project: when.isoformat() for project, when in expiries.items()}
    _atomic_write(path, json.dumps(seen, indent=1, sort_keys=True) + "\n", 0o644)


def mark_due(directory: Path, window_days: int, now: datetime | None = None) -> list[Due]:
    """Write ``due.json`` from ``seen.json`` and audit each certificate that is due."""
    now = now or datetime.now(UTC)
    due: list[Due] = []
    for card, projects in sorted(_read_seen(directory / SEEN).items()):
        for project, text in sorted(projects.items()):
            try:
                not_after = datetime.fromisoformat(text)
            except (TypeError, ValueError) as exc:
                raise DueFileError(f"{directory / SEEN}: {card}/{project}: {text!r}") from exc
            days = (not_after - now).days
            if days <= window_days:
                due.append(Due(card, project, not_after, days))
    document = [
        {"card": d.card, "project": d.project, "not_after": d.not_after.isoformat(),
         "days_left": d.days_left}
        for d in due
    ]  # fmt: skip
    _atomic_write(directory / DUE, json.dumps(document, indent=1) + "\n", 0o644)
    for d in due:
        status = "expired" if d.days_left < 0 else f"expires in {d.days_left} days"
        audit(
            AuditEvent.RENEWAL_DUE,
            f"certificate {status}: renewed at the holder's next insertion",
            project=d.project,
            card=d.card,
        )
    return due
