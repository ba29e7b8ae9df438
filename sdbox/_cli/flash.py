"""`sdbox flash`: write an appliance image to a box's disk (sdbox.bootimage.flash)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

import click


@click.command("flash")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("device", type=click.Path(path_type=Path))
@click.option(
    "--generation", "generation_name", required=True, help="The box's generation profile."
)
@click.option("--yes", is_flag=True, help="Do not ask before overwriting DEVICE.")
@click.option(
    "--enrolment-token-file",
    type=click.File("rb"),
    help="The box's one-time enrolment token ('-' reads it from stdin; never on the command line).",
)
@click.option(
    "--site",
    "site_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site profile (gateways and centre networks, docs/tunnel.md); checked before anything is written.",
)
@click.option(
    "--project-catalogue",
    "catalogue_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The site's signed project catalogue (`sdbox broker project-catalogue`): without it "
    "the box refuses one-project cards (docs/card-variants.md); checked before anything is written.",
)
@click.option(
    "--generations-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where the generation profiles are (default: bootimage/generations of this tree).",
)
def flash(
    image: Path,
    device: Path,
    generation_name: str,
    yes: bool,
    enrolment_token_file: BinaryIO | None,
    site_file: Path | None,
    catalogue_file: Path | None,
    generations_dir: Path | None,
) -> None:
    """Write IMAGE to the box disk DEVICE, verify it, and personalise the box."""
    from sdbox.bootimage import flash as flashing  # noqa: PLC0415  (keeps `--help` fast)
    from sdbox.bootimage import generations  # noqa: PLC0415

    if enrolment_token_file is not None and enrolment_token_file.name == "<stdin>" and not yes:
        raise click.UsageError("with the token on stdin there is no terminal to confirm: add --yes")
    generation = generations.load(generation_name, generations_dir)
    token = None
    if enrolment_token_file is not None:
        token = flashing.check_token(enrolment_token_file.read())
    site = flashing.check_site(site_file) if site_file is not None else None
    catalogue = flashing.check_catalogue(catalogue_file) if catalogue_file is not None else None
    info = flashing.check_image(image, generation)
    target = flashing.check_target(
        device, image, min_size=int(generation.storage.min_size_gib * 2**30)
    )
    click.echo(f"About to overwrite {target.describe()} with {image.name}.", err=True)
    if not yes:
        click.confirm("Everything on it will be lost. Continue?", abort=True, err=True)
    if token is None:
        click.echo(
            "warning: no --enrolment-token-file: the box will not be able to enrol", err=True
        )

    # one bar over both passes: the write, then the read-back
    with click.progressbar(length=2 * info.size, label="writing  ", file=sys.stderr) as bar:

        def verifying(done: int) -> None:
            bar.label = "verifying"
            bar.update(done)

        report = flashing.flash(
            info, target, generation, token, bar.update, verifying, site, catalogue
        )
    for line in report.lines():
        click.echo(line)
