"""`--json` for every command that has it: standard output carries the JSON document alone.

A command declares the flag with :func:`json_option` and hands its document to
:func:`emit_json`. While the command works, standard output goes to standard
error, at the file-descriptor level too: a table a benchmark prints, a log
handler bound to stdout or a child process writing to its inherited fd 1
cannot end up in front of the document. The document is written once the
command is done (also when it then exits with a failure status, as `sdbox
renew` does when a project was not renewed). tests/unit/test_cli_surface.py
checks that every `--json` comes from here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

_DOCUMENT = "sdbox.json_document"
# set on the callbacks this module wraps, so that a test can tell them from a hand-made --json
JSON_MARK = "_sdbox_json_option"

F = TypeVar("F", bound=Callable[..., Any])


def emit_json(document: object) -> None:
    """The command's JSON document (written on standard output when the command is done)."""
    click.get_current_context().meta[_DOCUMENT] = document


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    try:
        saved: int | None = os.dup(1)
    except OSError:  # no fd 1 at all: nothing can leak into it
        saved = None
    if saved is not None:
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        # what was written through a reference to the original stream goes out now, to stderr
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def json_option(help_text: str = "Machine-readable output (JSON) on standard output.") -> Callable[[F], F]:
    """Decorator: adds `--json` (passed to the command as ``as_json``) with the guarantee above."""

    def decorate(command: F) -> F:
        @click.option("--json", "as_json", is_flag=True, help=help_text)
        @functools.wraps(command)
        def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> Any:
            if not as_json:
                return command(*args, as_json=False, **kwargs)
            ctx = click.get_current_context()
            try:
                with _stdout_to_stderr():
                    return command(*args, as_json=True, **kwargs)
            finally:
                if _DOCUMENT in ctx.meta:
                    click.echo(json.dumps(ctx.meta.pop(_DOCUMENT), indent=2))

        setattr(wrapper, JSON_MARK, True)
        return wrapper  # type: ignore[return-value]

    return decorate
