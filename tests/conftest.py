"""Shared pytest configuration."""

from __future__ import annotations

import ast
import functools
import gc
from pathlib import Path
from typing import Any

import pytest

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


# -- test tiers ---------------------------------------------------------------------

_INTEGRATION = Path(__file__).resolve().parent / "integration"
_INTEGRATION_MARKER = (
    "integration: needs the real stack (pcscd, OpenSC, FreeRDP, QEMU, OpenSSL) on this machine"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the `integration` marker, unless the ini file (pyproject.toml) already does."""
    if not any(line.startswith("integration:") for line in config.getini("markers")):
        config.addinivalue_line("markers", _INTEGRATION_MARKER)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration as `integration`, at collection.

    A `pytestmark` in a conftest.py marks nothing (pytest reads it from test
    modules only), so the tier is given by where a test lives. tryfirst: the
    marker must be there before pytest's own `-m` deselection, whatever the
    order plugins were registered in, so that `-m "not integration"` really
    leaves the real stack out (tests/unit/test_tiers.py).
    """
    for item in items:
        if item.path.is_relative_to(_INTEGRATION):
            item.add_marker(pytest.mark.integration)
