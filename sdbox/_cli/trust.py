"""`sdbox trust`: check the card's certificates, refresh CRLs, measure the trust path."""

from __future__ import annotations

from pathlib import Path

import click

from sdbox._cli.output import emit_json, json_option
from sdbox.agent.config import DEFAULT_PATH
from sdbox.trust.errors import TrustError


class CardCertificatesRefused(TrustError):
    """`sdbox trust check` found at least one certificate the box would refuse (exit 5)."""


@click.group()
def trust() -> None:
    """Certificate validation, revocation and possession checks."""


@trust.command("check")
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT_PATH, show_default=True,
    help="Agent configuration whose [trust] is used (anchors, intermediates, CRLs, clock floor).",
)  # fmt: skip
@click.option("--reader", "-r", help="Reader name (default: the first holding a card).")
@json_option("Machine-readable result per certificate.")
def check(config_path: Path, reader: str | None, as_json: bool) -> None:
    """Validate every certificate on the inserted card as the agent would.

    The holder's (9A), the project directory's signer, each project's
    certificate and its bubble's server certificate, and any other
    certificate in the retired slots: chain to the configured anchors, key
    usage, project binding, revocation against the cached CRLs, clock floor.
    Reads only what the picker reads (no PIN, no finger). Exit status 0 when
    the box would accept every one of them, 5 when not.
    """
    from sdbox._cli.trust_check import check_card  # noqa: PLC0415  (keeps `--help` fast)
    from sdbox.agent.adapters import TrustService  # noqa: PLC0415
    from sdbox.agent.config import load  # noqa: PLC0415
    from sdbox.smartcard import pcsc  # noqa: PLC0415
    from sdbox.smartcard.biosso import BioSsoSession  # noqa: PLC0415

    service = TrustService(load(config_path))
    if service.problem is not None:
        raise service.problem
    conn = pcsc.connect(reader)
    try:
        session = BioSsoSession.for_atr(conn, conn.atr)
        results = check_card(session, service)
        guid = session.guid.hex().upper()
    finally:
        conn.close()
    refused = [r for r in results if not r.valid]
    if as_json:
        emit_json({
            "reader": conn.reader, "guid": guid, "revocation_checked": service.check_revocation,
            "valid": not refused, "certificates": [r.to_json() for r in results],
        })  # fmt: skip
    else:
        for r in results:
            where = [r.what, *([r.project] if r.project else [])]
            where += [f"slot {r.slot:02X}"] if r.slot is not None else []
            click.echo(f"{' '.join(where)}: " + ("ok" if r.valid else f"REFUSED: {r.problem}"))
            if r.subject:
                until = f" (until {r.not_after:%Y-%m-%d})" if r.not_after else ""
                click.echo(f"    {r.subject}{until}")
        if not service.check_revocation:
            click.echo("revocation NOT checked ([trust] check_revocation = false)")
    if refused:
        raise CardCertificatesRefused(
            f"{len(refused)} of {len(results)} checks refused on the card in {conn.reader}"
        )


@trust.command("bench")
@json_option("Print the figures as JSON.")
@click.option("--entries", default=100_000, show_default=True, help="Entries in the test CRL.")
def bench(as_json: bool, entries: int) -> None:
    """Time CRL loading, revocation lookup and chain validation with a large CRL."""
    from sdbox.trust.bench import TARGETS, run  # noqa: PLC0415  (keeps `--help` fast)

    figures = run(entries=entries)
    if as_json:
        emit_json({"figures": figures, "targets": TARGETS})
        return
    click.echo(f"CRL: {int(figures['crl_entries'])} entries, {int(figures['crl_bytes'])} bytes")
    rows = (
        ("CRL load (parse, index, signature)", f"{figures['crl_load_s']:.3f} s", "≤ 1 s"),
        ("revocation lookup", f"{figures['lookup_us']:.1f} µs", "≤ 50 µs"),
        ("chain validation, median", f"{figures['validate_median_ms']:.2f} ms", "≤ 5 ms"),
        ("chain validation, p95", f"{figures['validate_p95_ms']:.2f} ms", ""),
        ("same, CRLs as a list: first call", f"{figures['validate_list_first_ms']:.1f} ms", ""),
        ("same, CRLs as a list: median", f"{figures['validate_list_median_ms']:.2f} ms", "≤ 5 ms"),
        ("same, CRLs as a list: p95", f"{figures['validate_list_p95_ms']:.2f} ms", ""),
    )
    for label, value, target in rows:
        click.echo(f"{label:<38} {value:>12}  {target}")


# CRL refresh lives with renewal (it fetches over HTTP); `refresh-crls` is the
# name the packaged timer (debian/sdbox.sdbox-crl-refresh.service) calls.
from sdbox._cli.renew import refresh as _refresh  # noqa: E402

trust.add_command(_refresh)
trust.add_command(_refresh, name="refresh-crls")
