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
from collections.abc import Iterator, MutableMapping
from typing import Any

import click

from sdbox import __version__
from sdbox._cli.errors import run_guarded

# module name -> attribute holding its click command (the command's own name).
# Adding a command family is one line here; the module is imported when the
# command is first looked up (`_Commands`), not when the CLI starts.
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


class _Commands(MutableMapping[str, click.Command]):
    """The top-level commands, each module imported when its command is first asked for.

    The agent's unit starts `sdbox agent run`: importing every command family
    (the card emulator, the PKI tools, ...) before it would delay the box's
    READY by seconds under emulation, for commands it never runs.
    """

    def __init__(self, table: tuple[tuple[str, str], ...]) -> None:
        self._modules = {name: module for module, name in table}
        self._loaded: dict[str, click.Command] = {}

    def __getitem__(self, name: str) -> click.Command:
        if name not in self._loaded:
            command = getattr(importlib.import_module(self._modules[name]), name)
            if not isinstance(command, click.Command) or command.name != name:
                raise LookupError(f"{self._modules[name]}.{name} is not the command {name!r}")
            self._loaded[name] = command
        return self._loaded[name]

    def __setitem__(self, name: str, command: click.Command) -> None:
        self._loaded[name] = command  # click's add_command: loaded already, no module to import
        self._modules.setdefault(name, "")

    def __delitem__(self, name: str) -> None:
        self._loaded.pop(name, None)
        del self._modules[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._modules))

    def __len__(self) -> int:
        return len(self._modules)


class _Cli(click.Group):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(_COMMAND_MODULES)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
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



def main() -> None:
    """Entry point of the console script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(run_guarded(cli))
