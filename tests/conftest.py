"""Shared pytest configuration."""

from __future__ import annotations

import ast
import functools
import gc
from typing import Any

# CPython 3.11 (bookworm's 3.11.2) keeps the AST constructor's recursion
# counter in per-interpreter state and resets it on entry (gh-106905). When
# the cyclic collector runs a finalizer in the middle of ast.parse, and that
# finalizer logs a traceback (asyncio's "Future exception was never
# retrieved", whose formatting parses source for the ^^^ markers), the nested
# parse leaves the counter off and the outer one raises SystemError. Inside
# pytest's failure report that aborts the whole run with INTERNALERROR, so a
# single failing test hid every result after it. Parsing with the collector
# paused cannot nest that way; only the test process is patched.
_parse = ast.parse


@functools.wraps(_parse)
def _parse_without_collector(*args: Any, **kwargs: Any) -> Any:
    if not gc.isenabled():
        return _parse(*args, **kwargs)
    gc.disable()
    try:
        return _parse(*args, **kwargs)
    finally:
        gc.enable()


ast.parse = _parse_without_collector
