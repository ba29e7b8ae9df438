"""The operators' dashboard: server-rendered HTML, no script, every value escaped.

Plain pages an operator can filter with a form and link to (a box's page is
``/boxes/<id>``); nothing runs in the browser, so the content security
policy forbids scripts outright. Times are shown as stored (UTC, ISO 8601).
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sdbox.centre.fleet import Diagnostics
from sdbox.fleet.rollouts import Progress
from sdbox.fleet.store import BoxFilter, BoxRow

_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#1d1d1f}
table{border-collapse:collapse;margin-top:1em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.92em}
th{background:#eef1f5}
.bad{color:#a40000;font-weight:bold}
.ok{color:#1d6b1d}
form label{margin-right:1em}
nav a{margin-right:1.2em}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)} · sdbox fleet</title><style>{_STYLE}</style></head><body>"
        '<nav><a href="/">Boxes</a><a href="/rollout">Rollout</a>'
        '<a href="/certificates">Certificates</a></nav>'
        f"<h1>{_e(title)}</h1>{body}</body></html>"
    )


def _tunnel(state: str) -> str:
    css = "ok" if state == "up" else "bad" if state in ("down", "refused") else ""
    return f'<span class="{css}">{_e(state or "unknown")}</span>'


_FILTERS = (
    ("version", "Version"), ("generation", "Generation"),
    ("problem", "Problem"), ("silent_for_s", "Silent for (s)"),
)  # fmt: skip


def boxes_page(boxes: list[BoxRow], filters: BoxFilter) -> str:
    """The list of boxes with the filter form."""
    form = (
        '<form method=get action="/">'
        + "".join(
            f'<label>{_e(label)} <input name="{name}" value="{_e(getattr(filters, name) or "")}"></label>'
            for name, label in _FILTERS
        )
        + "<button type=submit>Filter</button></form>"
    )
    rows = "".join(
        "<tr>"
        f'<td><a href="/boxes/{urllib.parse.quote(b.box_id, safe="")}">{_e(b.box_id)}</a></td>'
        f"<td>{_e(b.version)}</td><td>{_e(b.image_version)} ({_e(b.slot or '?')})</td>"
        f"<td>{_e(b.generation)}</td><td>{_tunnel(b.tunnel_state)}</td>"
        f"<td>{_e(b.last_seen)}</td>"
        f'<td class="{"bad" if b.problems else ""}">{_e(", ".join(b.problems) or "none")}</td>'
        "</tr>"
        for b in boxes
    )
    table = (
        "<table><tr><th>Box</th><th>Version</th><th>Image (slot)</th><th>Generation</th>"
        f"<th>Tunnel</th><th>Last seen (UTC)</th><th>Recent problems</th></tr>{rows}</table>"
        if boxes
        else "<p>No box matches.</p>"
    )
    return _page(f"Boxes ({len(boxes)})", form + table)


def box_page(
    box: BoxRow,
    history: list[dict[str, Any]],
    events: list[dict[str, Any]],
    uploads: Sequence[tuple[int, str, str]] = (),
) -> str:
    """One box: its state, its diagnostics uploads, its check-in history, its recent audit events."""
    facts = (
        ("First seen", box.first_seen), ("Last seen", box.last_seen), ("Version", box.version),
        ("Image", f"{box.image_version} (slot {box.slot or '?'})"),
        ("Generation", box.generation), ("Audit events held", box.audit_through),
    )  # fmt: skip
    summary = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    summary += f"<tr><th>Tunnel</th><td>{_tunnel(box.tunnel_state)}</td></tr></table>"
    checkins = "".join(
        f"<tr><td>{_e(h['received'])}</td><td>{_e(h.get('trigger', ''))}</td>"
        f"<td>{_e(h.get('version', ''))}</td><td>{_tunnel(str(h.get('tunnel_state', '')))}"
        f" {_e(h.get('tunnel_reason', ''))}</td><td>{_e(', '.join(h.get('problems', [])) or 'none')}</td>"
        f"<td>{_e(', '.join(h.get('card_variants', [])))}</td></tr>"
        for h in history
    )
    audit = "".join(
        f"<tr><td>{_e(ev['number'])}</td><td>{_e(_when(ev['realtime_us']))}</td><td>{_e(ev['event'])}</td>"
        f"<td>{_e(' '.join(f'{k}={v}' for k, v in sorted(ev['fields'].items())))}</td></tr>"
        for ev in events
    )
    quoted = urllib.parse.quote(box.box_id, safe="")
    diagnostics = "".join(
        f'<li><a href="/boxes/{quoted}/diagnostics/{number}">{_e(received)}</a> {_e(reason)}</li>'
        for number, received, reason in uploads
    )
    return _page(
        f"Box {box.box_id}",
        summary
        + (f"<h2>Diagnostics sent</h2><ul>{diagnostics}</ul>" if uploads else "")
        + "<h2>Check-ins</h2><table><tr><th>Received</th><th>Why</th><th>Version</th><th>Tunnel</th>"
        f"<th>Problems</th><th>Card variants seen</th></tr>{checkins}</table>"
        + "<h2>Audit trail (latest)</h2><table><tr><th>#</th><th>When (UTC)</th><th>Event</th>"
        f"<th>Fields</th></tr>{audit}</table>",
    )


def certificates_page(expiring: list[tuple[str, str, str]], days: int) -> str:
    """Certificates that expire within the warning window, soonest first."""
    rows = "".join(
        f'<tr><td><a href="/boxes/{urllib.parse.quote(box, safe="")}">{_e(box)}</a></td>'
        f"<td>{_e(role)}</td><td>{_e(not_after)}</td></tr>"
        for box, role, not_after in expiring
    )
    body = (
        f"<table><tr><th>Box</th><th>Certificate</th><th>Not after (UTC)</th></tr>{rows}</table>"
        if expiring
        else "<p>None.</p>"
    )
    return _page(f"Certificates expiring within {days} days", body)


def rollout_page(progress: Progress | None) -> str:
    """The current rollout: its bundle, stage, and how many boxes were offered, installed, failed."""
    if progress is None:
        return _page("Rollout", "<p>No rollout is running.</p>")
    r = progress.rollout
    stage = "first ring" if r.stage == 0 else f"ring + {r.steps[r.stage - 1]} %"
    facts = (
        ("Version", r.version), ("Bundle SHA-256", r.digest), ("State", r.state),
        ("Stage", f"{stage} (steps {', '.join(f'{s} %' for s in r.steps)})"),
        ("First ring", ", ".join(r.ring) or "none"),
        ("Pauses above failure rate", f"{r.max_failure_rate:.0%}"),
        ("Offered, not yet reported", progress.offered), ("Installed", progress.installed),
        ("Failed (fell back)", progress.failed),
    )  # fmt: skip
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts)
    css = "bad" if r.state == "paused" else ""
    return _page(f"Rollout {r.id}", f'<p class="{css}">{_e(r.state)}</p><table>{rows}</table>')


def diagnostics_page(box_id: str, received: str, upload: Diagnostics) -> str:
    """One diagnostics upload, section by section."""
    sections = "".join(
        f"<h2>{_e(name)}</h2><pre>{_e(text)}</pre>" for name, text in upload.sections.items()
    )
    reason = f"<p>{_e(upload.reason)}</p>" if upload.reason else ""
    return _page(f"Diagnostics from {box_id}, {received}", reason + sections)


def not_found_page() -> str:
    """An unknown page or box."""
    return _page("Not found", "<p>No such page or box.</p>")


def unavailable_page() -> str:
    """The database is down: say so rather than show stale or empty lists."""
    return _page("Unavailable", "<p>The fleet database is unavailable; try again shortly.</p>")


def _when(realtime_us: int) -> str:
    return datetime.fromtimestamp(realtime_us / 1e6, UTC).isoformat(timespec="seconds")
