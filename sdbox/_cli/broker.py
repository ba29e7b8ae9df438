"""``sdbox broker``: the reference centre-side broker (tests, demo, a model for centres)."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.group()
def broker() -> None:
    """The reference broker of one-time session credentials."""


@broker.command("run")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
)
def run(config_path: Path) -> None:
    """Serve the broker until interrupted."""
    from sdbox.broker.server import BrokerServer, load_config  # noqa: PLC0415

    logging.getLogger("sdbox.broker").setLevel(logging.INFO)
    server = BrokerServer(load_config(config_path))
    click.echo(f"broker listening on {server.url}", err=True)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
