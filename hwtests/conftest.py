"""Loads the suite's plugin when pytest is pointed at this directory (``pytest hwtests``).

The hooks and fixtures live in :mod:`hwtests.plugin`; re-exporting them here
makes this directory's conftest the plugin, so ``sdbox hwtest`` and a plain
``pytest hwtests`` behave the same.
"""

from hwtests.plugin import (
    bench,
    card,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_logreport,
    pytest_terminal_summary,
    verified_card,
)

__all__ = [
    "bench",
    "card",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_logreport",
    "pytest_terminal_summary",
    "verified_card",
]
