"""``sdbox card``: readers, card info, holder verification."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from sdbox._cli.output import emit_json, json_option
from sdbox.certificates import UnreadableCertificate, load_certificates
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession, CardSummary, TriesLeft
from sdbox.smartcard.profile import KeyRef

DEFAULT_ANCHORS = Path("/etc/sdbox/trust/roots.pem")


class AnchorsError(SdboxError):
    """The trust anchors file is missing or unreadable."""


def load_anchors(path: Path) -> list[x509.Certificate]:
    """The root certificates in a PEM bundle."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AnchorsError(
            f"trust anchors {path}: cannot be read ({exc.strerror}); pass --anchors FILE"
        ) from exc
    try:
        certs = load_certificates(data)
    except UnreadableCertificate as exc:
        raise AnchorsError(f"trust anchors {path}: not a PEM certificate bundle ({exc})") from exc
    return certs


def directory_validator(
    anchors: list[x509.Certificate],
) -> Any:
    """The trust layer's check of the directory signer, bound to ``anchors`` and now."""
    from sdbox.trust import validate_directory_signer  # noqa: PLC0415

    def validate(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        validate_directory_signer(signer, intermediates, anchors, at=datetime.now(UTC))

    return validate


def _open(reader: str | None, *, exclusive: bool = False) -> tuple[Any, BioSsoSession]:
    from sdbox.smartcard import pcsc  # noqa: PLC0415  (pyscard only when a card is used)

    conn = pcsc.connect(reader, exclusive=exclusive)
    return conn, BioSsoSession.for_atr(conn, conn.atr)


anchors_option = click.option(
    "--anchors",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_ANCHORS,
    show_default=True,
    help="PEM file with the trusted root certificates.",
)
reader_option = click.option(
    "--reader", "-r", help="Reader name (default: the first holding a card)."
)


@click.group()
def card() -> None:
    """Inspect and use the card in a reader."""


@card.command()
@json_option()
def readers(as_json: bool) -> None:
    """List card readers and whether each holds a card."""
    from sdbox.smartcard.pcsc import PcscContext  # noqa: PLC0415

    context = PcscContext()
    try:
        states = context.reader_states()
    finally:
        context.release()
    if as_json:
        rows = [
            {"reader": s.name, "card": s.present, "atr": s.atr.hex().upper() or None}
            for s in states
        ]
        emit_json(rows)
        return
    if not states:
        click.echo("no card readers")
    for s in states:
        click.echo(
            f"{s.name}: " + (f"card present, ATR {s.atr.hex().upper()}" if s.present else "empty")
        )


def _tries_json(tries: TriesLeft) -> dict[str, int | None]:
    return {
        "pin": tries.pin,
        "finger_primary": tries.finger_primary,
        "finger_secondary": tries.finger_secondary,
    }


def info_document(
    reader: str, atr: bytes, summary: CardSummary, tries: TriesLeft, stats: tuple[int, float]
) -> dict[str, Any]:
    """The stable JSON document of `sdbox card info --json` (see README)."""
    projects = []
    if summary.directory is not None:
        for p in summary.directory.projects:
            projects.append(
                {
                    "id": p.id,
                    "name": p.name,
                    "slot": f"{p.slot:02X}",
                    "protocol": p.protocol.name.lower(),
                    "endpoint": p.endpoint,
                    "second_factor": p.second_factor.name.lower(),
                    "certificate": {"subject": p.subject, "not_after": p.not_after.isoformat()},
                }
            )
    doc: dict[str, Any] = {
        "reader": reader,
        "atr": atr.hex().upper(),
        "guid": summary.guid.hex().upper(),
        "occ": summary.occ,
        "directory_verified": summary.directory_verified,
        "tries_left": _tries_json(tries),
        "projects": projects,
        "stats": {"apdus": stats[0], "seconds": round(stats[1], 4)},
    }
    if summary.directory_error is not None:
        doc["directory_error"] = summary.directory_error.message
    return doc


@card.command()
@reader_option
@json_option("One JSON object; its `variant` field names the variant (docs/card-variants.md).")
def identify(reader: str | None, as_json: bool) -> None:
    """Which card variant this is, what sdbox can do with it, and a support-safe dump."""
    from sdbox._cli.card_identify import identify_document, print_identification  # noqa: PLC0415
    from sdbox.smartcard.variants import gather  # noqa: PLC0415

    conn, session = _open(reader)
    try:
        doc = identify_document(conn.reader, gather(session, conn.atr))
    finally:
        conn.close()
    if as_json:
        emit_json(doc)
    else:
        print_identification(doc)


@card.command()
@reader_option
@anchors_option
@json_option("Machine-readable output (stable, see README).")
def info(reader: str | None, anchors: Path, as_json: bool) -> None:
    """Card identity, on-card biometrics, tries left, and the projects it holds."""
    validator = directory_validator(load_anchors(anchors))
    conn, session = _open(reader)
    try:
        start = time.perf_counter()
        session.stack.stats.reset()
        summary = session.read_summary(validator)
        stats = (session.stack.stats.apdus, time.perf_counter() - start)
        tries = session.tries_left()
        doc = info_document(conn.reader, conn.atr, summary, tries, stats)
    finally:
        conn.close()
    if as_json:
        emit_json(doc)
        return
    _print_info(doc)


def _fmt_tries(value: int | None) -> str:
    if value is None:
        return "not enrolled"
    if value < 0:
        return "verified"
    return "BLOCKED" if value == 0 else str(value)


def _print_info(doc: dict[str, Any]) -> None:
    tries = doc["tries_left"]
    click.echo(f"reader:     {doc['reader']}")
    click.echo(f"ATR:        {doc['atr']}")
    click.echo(f"card GUID:  {doc['guid']}")
    click.echo(f"on-card fingerprint comparison: {'yes' if doc['occ'] else 'no'}")
    click.echo(
        f"tries left: PIN {_fmt_tries(tries['pin'])}, primary finger {_fmt_tries(tries['finger_primary'])}, "
        f"secondary finger {_fmt_tries(tries['finger_secondary'])}"
    )
    if doc["directory_verified"]:
        click.echo("directory:  signature verified")
    else:
        click.echo(f"directory:  NOT VERIFIED: {doc.get('directory_error', 'unknown reason')}")
    for p in doc["projects"]:
        click.echo(
            f"  {p['id']:<16} {p['name']:<28} slot {p['slot']}  {p['protocol']:<5} {p['endpoint']:<21} "
            f"expires {p['certificate']['not_after'][:10]}  {p['certificate']['subject']}"
        )
    click.echo(f"listing: {doc['stats']['apdus']} APDUs in {doc['stats']['seconds'] * 1000:.0f} ms")


def _read_secret(prompt: str) -> str:
    """A PIN from the terminal (hidden) or, when piped, from stdin: never from argv."""
    if sys.stdin.isatty():
        return str(click.prompt(prompt, hide_input=True))
    return sys.stdin.readline().strip()


@card.command()
@reader_option
@click.option(
    "--pin", "use_pin", is_flag=True, help="Verify the PIN (read from the terminal or stdin)."
)
@click.option(
    "--finger-template",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Verify a finger with a probe template (ISO/IEC 19794-2 compact card format).",
)
@click.option(
    "--finger",
    "which",
    type=click.Choice(["primary", "secondary"]),
    default="primary",
    show_default=True,
)
@click.option(
    "--sensor",
    type=click.Choice(["emulated", "libfprint"]),
    help="Capture the finger with a sensor (libfprint: an image sensor).",
)
@click.option(
    "--sensor-driver",
    default="",
    help="libfprint: the driver to use (default: the first device that captures images).",
)
@click.option(
    "--identity-seed",
    type=int,
    default=1001,
    show_default=True,
    help="The emulated sensor's synthetic finger.",
)
def verify(
    reader: str | None,
    use_pin: bool,
    finger_template: Path | None,
    which: str,
    sensor: str | None,
    sensor_driver: str,
    identity_seed: int,
) -> None:
    """Verify the card holder (PIN or on-card fingerprint comparison)."""
    if sum((use_pin, finger_template is not None, sensor is not None)) != 1:
        raise click.UsageError("give exactly one of --pin, --finger-template or --sensor")
    secret = _read_secret("PIN") if use_pin else ""
    probe = b""
    if finger_template is not None:
        from sdbox.biometric.sensor import to_probe  # noqa: PLC0415

        probe = to_probe(finger_template.read_bytes())
    elif sensor == "emulated":
        import asyncio  # noqa: PLC0415

        from sdbox.biometric.sensor import EmulatedSensor  # noqa: PLC0415

        probe = asyncio.run(EmulatedSensor(identity_seed).capture())
    elif sensor == "libfprint":
        from sdbox._cli.bio import capture_with_libfprint  # noqa: PLC0415

        probe = capture_with_libfprint(sensor_driver)
    conn, session = _open(reader)
    try:
        session.piv.select()
        if use_pin:
            session.piv.verify_pin(secret)
        else:
            ref = KeyRef.FINGER_PRIMARY if which == "primary" else KeyRef.FINGER_SECONDARY
            session.piv.verify_finger(ref, probe)
    finally:
        conn.close()
    click.echo("verified")
