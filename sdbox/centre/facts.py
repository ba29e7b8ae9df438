"""What a box reports at check-in, gathered from where the running system keeps it.

Software version (the package), image version and slot (the image's files and
the boot entry systemd-boot recorded), generation (written at flashing),
uptime, certificate expiries (the box identity; the CRLs it holds), and from
the audit trail since the last check-in: the card variants seen and the
problems met. Never a holder's name, a GUID or a certificate subject: the
report is about the box.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from cryptography import x509

from sdbox import __version__
from sdbox.centre.fleet import (
    MAX_LIST,
    MAX_SECTION,
    MAX_TEXT,
    CertificateExpiry,
    Diagnostics,
    Report,
)

# systemd-boot's record of the entry it booted (the Boot Loader Interface)
LOADER_ENTRY = Path(
    "/sys/firmware/efi/efivars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
)
_PROBLEM_FIELDS = ("problem", "reason")  # audit fields whose value is a problem code


@dataclass(frozen=True)
class TunnelFacts:
    """The tunnel as charon sees it (``none`` where the box has no site profile)."""

    state: str = "none"
    gateway: str = ""
    reason: str = ""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, PermissionError, UnicodeDecodeError, IsADirectoryError):
        return ""


def booted_slot(loader_entry: Path = LOADER_ENTRY) -> str:
    """``a`` or ``b`` from the UKI name systemd-boot booted, or '' when not on a box."""
    try:
        raw = loader_entry.read_bytes()[4:]  # efivarfs: 4 attribute bytes, then UTF-16LE
    except (FileNotFoundError, PermissionError):
        return ""
    name = raw.decode("utf-16-le", errors="replace").rstrip("\x00").lower()
    match = re.fullmatch(r"sdbox-([ab])\.efi", name)
    return match.group(1) if match else ""


def uptime_s(proc_uptime: Path = Path("/proc/uptime")) -> int:
    """Seconds since boot."""
    text = _read(proc_uptime)
    return int(float(text.split()[0])) if text else 0


def certificate_expiries(
    box_certificate: x509.Certificate | None, crls: Iterable[x509.CertificateRevocationList]
) -> tuple[CertificateExpiry, ...]:
    """The box identity's expiry and each held CRL's next update (by role, never by name)."""
    found = []
    if box_certificate is not None:
        found.append(
            CertificateExpiry("box-identity", box_certificate.not_valid_after_utc.isoformat())
        )
    for number, crl in enumerate(crls, start=1):
        if crl.next_update_utc is not None:
            found.append(CertificateExpiry(f"crl-{number}", crl.next_update_utc.astimezone(UTC).isoformat()))
    return tuple(found[:MAX_LIST])


def from_audit(events: Sequence[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(card variants seen, problems met) in the audit events, in order, without repeats."""
    variants: list[str] = []
    problems: list[str] = []
    for event in events:
        fields = getattr(event, "fields", {})
        variant = fields.get("variant")
        if variant and variant not in variants:
            variants.append(variant)
        for name in _PROBLEM_FIELDS:
            code = fields.get(name)
            if code and code not in problems:
                problems.append(code)
    return tuple(variants[-MAX_LIST:]), tuple(problems[-MAX_LIST:])


def gather(
    *,
    generation_file: Path,
    image_version_file: Path,
    tunnel: Callable[[], TunnelFacts],
    box_certificate: x509.Certificate | None,
    crls: Iterable[x509.CertificateRevocationList],
    recent_events: Sequence[Any],
    trigger: str,
) -> Report:
    """One check-in report from the running system."""
    variants, problems = from_audit(recent_events)
    state = tunnel()
    return Report(
        version=__version__,
        image_version=_read(image_version_file),
        slot=booted_slot(),
        generation=_read(generation_file),
        uptime_s=uptime_s(),
        tunnel_state=state.state,
        tunnel_gateway=state.gateway,
        tunnel_reason=state.reason,
        certificates=certificate_expiries(box_certificate, crls),
        card_variants=variants,
        problems=problems,
        trigger=trigger,
    )


SDBOX_UNITS = (
    "sdbox-agent.service", "sdbox-greeter.service", "sdbox-enrol.service",
    "sdbox-crl-refresh.service", "sdbox-renewal-due.service", "sdbox-fleet.service",
)  # fmt: skip


def diagnostics(report: Report, network: str, journal_lines: Sequence[str], reason: str) -> Diagnostics:
    """What the support screen sends: the report, the network as the box sees it, sdbox's log."""
    versions = "\n".join(
        f"{name}: {value}"
        for name, value in (
            ("sdbox", report.version), ("image", report.image_version),
            ("slot", report.slot or "?"), ("generation", report.generation),
            ("uptime", f"{report.uptime_s} s"),
        )
    )  # fmt: skip
    tunnel = f"state: {report.tunnel_state}\ngateway: {report.tunnel_gateway}\nreason: {report.tunnel_reason}"
    expiries = "\n".join(f"{c.role}: {c.not_after}" for c in report.certificates)
    recent = "\n".join(report.problems) or "none"
    sections = {
        "versions": versions, "tunnel": tunnel, "network": network or "unknown",
        "certificates": expiries or "none", "recent problems": recent,
        "journal (sdbox units)": "\n".join(journal_lines)[-MAX_SECTION:] or "empty",
    }  # fmt: skip
    return Diagnostics(reason=reason[:MAX_TEXT], sections={k: v[-MAX_SECTION:] for k, v in sections.items()})
