"""`sdbox card` commands."""

from __future__ import annotations

import click


@click.group()
def card() -> None:
    """card commands."""
