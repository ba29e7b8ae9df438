"""What is due for renewal, between insertions: the timer's job.

Renewal needs the card and the holder, so it runs inside the agent. What a
timer can do without them is say, every day, which project certificates of
the cards this box has seen fall inside the renewal window: the agent notes
each verified directory's expiries (``seen.json``: card GUID, project ids,
notAfter, all public), and ``sdbox renewal mark-due`` turns them into
``due.json`` and one ``renewal_due`` audit event per project, so that an
operator sees in the journal what will be renewed at the researcher's next
insertion (or what expired because the card did not come back).

Not every card can be renewed on the box (docs/renewal.md, "Which cards"):
the agent asks each card it verifies the same capability question the
renewal job asks (:func:`sdbox.renewal.capability.renewal_refusal`), once
per card, and notes the answer (``renewability.json``: card GUID -> the
reason the box cannot renew it, or null). ``mark-due`` then does not mark
such a card's certificates due: it lists them with that reason, and audits
them as ``renewal_failed`` (``not_renewable``), as the agent does when its
renewal run refuses them. A card not asked yet (seen, never verified on
this box) is marked due as before.
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
RENEWABILITY = "renewability.json"


class DueFileError(SdboxError):
    """The list of seen cards cannot be read or written."""


@dataclass(frozen=True)
class Due:
    """One project certificate inside the renewal window (or past its end)."""

    card: str  # GUID, hex
    project: str
    not_after: datetime
    days_left: int
    # why the box cannot renew this card (its capabilities, as the renewal job says it);
    # None: it can, or the card's capabilities were not asked yet
    refusal: str | None = None

    def to_json(self) -> dict[str, object]:
        """The entry in due.json and in `mark-due --json`."""
        return {
            "card": self.card, "project": self.project, "not_after": self.not_after.isoformat(),
            "days_left": self.days_left, "renewable": self.refusal is None,
            "reason": self.refusal,
        }  # fmt: skip


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


def _read_renewability(path: Path) -> dict[str, str | None]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DueFileError(
            f"{path} cannot be read ({exc}); delete it, the agent asks each card again"
        ) from exc
    if not isinstance(raw, dict) or not all(v is None or isinstance(v, str) for v in raw.values()):
        raise DueFileError(f"{path} is not a list of cards; delete it, the agent asks them again")
    return raw


def renewability_known(directory: Path, card: str) -> bool:
    """Whether the agent has asked ``card``'s capabilities already (a damaged file: no)."""
    try:
        return card in _read_renewability(directory / RENEWABILITY)
    except DueFileError:
        return False


def record_renewability(directory: Path, card: str, refusal: str | None) -> None:
    """Note whether the box can renew ``card`` (the agent, once per card it verifies).

    ``refusal``: :func:`sdbox.renewal.capability.renewal_refusal`'s answer
    (None: the card's capabilities allow renewal). Public data, like seen.json.
    """
    path = directory / RENEWABILITY
    try:
        known = _read_renewability(path)
    except DueFileError:
        known = {}  # a damaged file is replaced by what this card says
    known[card] = refusal
    _atomic_write(path, json.dumps(known, indent=1, sort_keys=True) + "\n", 0o644)


def mark_due(directory: Path, window_days: int, now: datetime | None = None) -> list[Due]:
    """Write ``due.json`` from ``seen.json`` and audit each certificate that is due.

    A certificate of a card the box cannot renew is listed with the reason
    (``refusal``) and audited as such, never as due for renewal.
    """
    now = now or datetime.now(UTC)
    refusals = _read_renewability(directory / RENEWABILITY)
    due: list[Due] = []
    for card, projects in sorted(_read_seen(directory / SEEN).items()):
        for project, text in sorted(projects.items()):
            try:
                not_after = datetime.fromisoformat(text)
            except (TypeError, ValueError) as exc:
                raise DueFileError(f"{directory / SEEN}: {card}/{project}: {text!r}") from exc
            days = (not_after - now).days
            if days <= window_days:
                due.append(Due(card, project, not_after, days, refusals.get(card)))
    document = [d.to_json() for d in due]
    _atomic_write(directory / DUE, json.dumps(document, indent=1) + "\n", 0o644)
    for d in due:
        status = "expired" if d.days_left < 0 else f"expires in {d.days_left} days"
        if d.refusal is not None:
            audit(
                AuditEvent.RENEWAL_FAILED,
                f"certificate {status}, and this box cannot renew it: {d.refusal}",
                project=d.project, card=d.card, reason="not_renewable",
            )  # fmt: skip
            continue
        audit(
            AuditEvent.RENEWAL_DUE,
            f"certificate {status}: renewed at the holder's next insertion",
            project=d.project,
            card=d.card,
        )
    return due
