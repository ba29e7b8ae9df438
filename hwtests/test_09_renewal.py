"""Renewal on a spare slot: runs when this build's sdbox.renewal offers it, else says so."""

from __future__ import annotations

import importlib

import pytest

from hwtests.bench import Bench

pytestmark = pytest.mark.writes

# What this suite drives: sdbox.renewal.renew_on_card(...) (the renewal branch's API).
RENEWAL_ENTRY = "renew_on_card"


@pytest.mark.scenario("renewal on a spare slot")
def test_renewal_on_a_spare_slot(bench: Bench) -> None:
    renewal = importlib.import_module("sdbox.renewal")
    if not hasattr(renewal, RENEWAL_ENTRY):
        pytest.skip("renewal not available in this build (sdbox.renewal has no "
                    f"{RENEWAL_ENTRY})")  # fmt: skip
    pytest.skip("renewal is in this build, but this suite does not drive it yet: "
                "extend hwtests/test_09_renewal.py")  # fmt: skip
