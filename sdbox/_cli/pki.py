"""`sdbox pki`: a development PKI kept in a directory (sdbox.trust.pki)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def pki() -> None:
    """Create and run a test/development PKI (root, project, server and box CAs)."""


@pki.command("init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--crl-base-url",
    default="http://crl.sdbox.invalid/",
    show_default=True,
    help="Base URL written into certificates' CRL distribution points.",
)
def init(directory: Path, crl_base_url: str) -> None:
    """Create a new PKI in DIRECTORY (CA keys are written mode 0600)."""
    from sdbox.trust.pki import CA_NAMES, Pki  # noqa: PLC0415  (keeps `--help` fast)

    created = Pki.init(directory, crl_base_url=crl_base_url)
    for name in CA_NAMES:
        click.echo(f"{name}: {created.authority(name).cert.subject.rfc4514_string()}")
    click.echo(f"directory-signer: {created.directory_signer.cert.subject.rfc4514_string()}")
    click.echo(f"PKI created in {directory}")
