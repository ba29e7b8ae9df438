"""`sdbox trust`: check certificates and measure the trust path (sdbox.trust)."""

from __future__ import annotations

import json

import click


@click.group()
def trust() -> None:
    """Certificate validation, revocation and possession checks."""


@trust.command("bench")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--entries", default=100_000, show_default=True, help="Entries in the test CRL.")
def bench(as_json: bool, entries: int) -> None:
    """Time CRL loading, revocation lookup and chain validation with a large CRL."""
    from sdbox.trust.bench import TARGETS, run  # noqa: PLC0415  (keeps `--help` fast)

    figures = run(entries=entries)
    if as_json:
        click.echo(json.dumps({"figures": figures, "targets": TARGETS}, indent=2))
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
