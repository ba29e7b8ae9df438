"""``sdbox card identify``: what card this is, for R&D engineers and support.

The document holds only what any reader can read without verification (see
docs/card-variants.md, "sdbox card identify"): never a PIN, a template or
private data, so that it can be attached to a ticket.
"""

from __future__ import annotations

import hashlib
from typing import Any

import click

from sdbox.smartcard.profile import ObjectTag, certificate_object
from sdbox.smartcard.variants import (
    ContradictoryCard,
    Evidence,
    Identification,
    abilities,
    classify,
)

_OBJECT_NAMES: dict[int, str] = {
    ObjectTag.CHUID: "CHUID",
    ObjectTag.CCC: "card capability container",
    ObjectTag.DISCOVERY: "discovery",
    ObjectTag.BIT_GROUP: "biometric information templates",
    ObjectTag.KEY_HISTORY: "key history",
    ObjectTag.DIRECTORY: "project directory",
}
# Objects dumped whole: small, public, and what a support engineer needs to see.
# The directory is public too but long: its length and hash say which one it is.
_DUMPED_WHOLE = frozenset(_OBJECT_NAMES) - {ObjectTag.DIRECTORY}


def identify_document(reader: str, evidence: Evidence) -> dict[str, Any]:
    """The stable JSON document of ``sdbox card identify --json``."""
    contradiction: str | None = None
    found: Identification | None = None
    try:
        found = classify(evidence)
    except ContradictoryCard as exc:
        contradiction = exc.message
    variant = found.variant if found else None
    can, cannot = abilities(variant) if variant else ((), ())
    reason = found.reason if found else f"its self-description is contradictory: {contradiction}"
    certificates = [c.to_json() for c in ((evidence.holder,) if evidence.holder else ())] + [
        c.to_json() for c in evidence.project_certificates
    ]
    objects = [
        {"tag": f"{tag:X}", "name": _OBJECT_NAMES.get(tag, "object"), "length": len(value)}
        for tag, value in sorted(evidence.objects.items())
    ]
    objects += [
        {"tag": f"{_cert_tag(c['slot'])}", "name": f"certificate {c['slot']}", "length": None}
        for c in certificates
    ]
    dump = {
        "atr": evidence.atr.hex().upper(),
        "objects": {
            f"{tag:X}": value.hex().upper()
            for tag, value in sorted(evidence.objects.items())
            if tag in _DUMPED_WHOLE
        },
        "digests": {
            f"{tag:X}": {"length": len(value), "sha256": hashlib.sha256(value).hexdigest()}
            for tag, value in sorted(evidence.objects.items())
            if tag not in _DUMPED_WHOLE
        },
        "problems": list(evidence.problems),
    }
    return {
        "reader": reader,
        "variant": variant.name if variant else None,
        "title": variant.title if variant else None,
        "supported": variant is not None,
        "reason": None if variant else reason,
        "contradiction": contradiction,
        "capabilities": variant.capabilities.to_json() if variant else None,
        "observed": found.observed.to_json() if found and found.observed else None,
        "identifiers": {
            "atr": evidence.atr.hex().upper(),
            "transmission": evidence.atr_info.transmission.value if evidence.atr_info else None,
            "piv": evidence.piv,
            "application_label": evidence.application_label or None,
            "guid": evidence.guid.hex().upper() if evidence.guid else None,
        },
        "objects": objects,
        "certificates": certificates,
        "can": list(can),
        "cannot": list(cannot),
        "dump": dump,
    }


def _cert_tag(slot: object) -> str:
    return f"{certificate_object(int(str(slot), 16)):X}"


def print_identification(doc: dict[str, Any]) -> None:
    """The human form: the verdict first, then what was seen."""
    ids = doc["identifiers"]
    if doc["supported"]:
        click.echo(f"variant:    {doc['variant']} ({doc['title']})")
    else:
        click.echo("variant:    not supported on sdbox")
        click.echo(f"why:        {doc['reason']}")
    click.echo(f"reader:     {doc['reader']}")
    click.echo(f"ATR:        {ids['atr']} ({ids['transmission'] or 'unparseable'})")
    click.echo(f"GUID:       {ids['guid'] or '-'}")
    if ids["application_label"]:
        click.echo(f"label:      {ids['application_label']}")
    caps = doc["capabilities"] or doc["observed"]
    if caps:
        click.echo("capabilities" + ("" if doc["capabilities"] else " (as seen)") + ":")
        for key, value in caps.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            click.echo(f"  {key}: {shown}")
    if doc["objects"]:
        click.echo("objects:")
        for obj in doc["objects"]:
            size = f" ({obj['length']} bytes)" if obj["length"] is not None else ""
            click.echo(f"  {obj['tag']}  {obj['name']}{size}")
    for cert in doc["certificates"]:
        click.echo(
            f"certificate {cert['slot']}: {cert['subject']} ({cert['algorithm']}, "
            f"until {cert['not_after'][:10]}" + (", compressed)" if cert["compressed"] else ")")
        )
    for line in doc["can"]:
        click.echo(f"can:        {line}")
    for line in doc["cannot"]:
        click.echo(f"cannot:     {line}")
    click.echo("(`sdbox card identify --json` gives a dump safe to attach to a ticket)")
