"""The ``sdbox`` command: thin wrappers over the library.

Each command family lives in its own module and registers a click group in
:data:`_COMMAND_MODULES`; errors are mapped to exit codes in one place
(:mod:`sdbox._cli.errors`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from sdbox import __version__
from sdbox._cli.errors import run_guarded

# module name -> attribute holding its click command. Adding a command family
# is one line here; the module is imported when the CLI starts.
_COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("sdbox._cli.card", "card"),
    ("sdbox._cli.emulate", "emulate"),
    ("sdbox._cli.pki", "pki"),
    ("sdbox._cli.trust", "trust"),
    ("sdbox._cli.session", "session"),
    ("sdbox._cli.agent", "agent"),
    ("sdbox._cli.broker", "broker"),
    ("sdbox._cli.identity", "identity"),
    ("sdbox._cli.bio", "bio"),
    ("sdbox._cli.flash", "flash"),
    ("sdbox._cli.hwtest", "hwtest"),
    ("sdbox._cli.renew", "renew"),
    ("sdbox._cli.renewal", "renewal"),
    ("sdbox._cli.site", "site"),
    ("sdbox._cli.tunnel", "tunnel"),
    ("sdbox._cli.fleet", "fleet"),
    ("sdbox._cli.network", "network"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sdbox")
@click.option(
    "-v", "--verbose", count=True, help="More log output (-v info, -vv debug, -vvv APDU trace)."
)
def cli(verbose: int) -> None:
    """sdbox: secure-data-access thin client tools."""
    from sdbox.logging import TRACE  # noqa: PLC0415  (keeps `--help` fast)

    level = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}.get(verbose, TRACE)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )


for _module, _attr in _COMMAND_MODULES:
    cli.add_command(getattr(importlib.import_module(_module), _attr))


def main() -> None:
    """Entry point of the console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_guarded(cli))
