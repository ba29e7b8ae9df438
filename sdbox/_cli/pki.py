"""`sdbox pki` commands."""

from __future__ import annotations

import click


@click.group()
def pki() -> None:
    """pki commands."""
