"""`sdbox emulate` commands."""

from __future__ import annotations

import click


@click.group()
def emulate() -> None:
    """emulate commands."""
