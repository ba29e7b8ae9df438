"""The benchmark's Bozorth3 baseline: card templates reach NBIS in NBIS's own conventions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sdbox.biometric import bench, bozorth3, compact, synth
from sdbox.biometric.libfprint import NbisMinutia


@pytest.mark.parametrize("direction", range(32))
def test_card_angles_go_back_to_the_nbis_direction_mindtct_gave(direction: int) -> None:
    # the capture path's NBIS -> ISO -> card conversion, then ours back to NBIS
    iso = NbisMinutia(0, 0, direction, 1.0, 1).iso_degrees
    card_angle = round(iso * compact.ANGLE_STEPS / 360) % compact.ANGLE_STEPS
    assert bozorth3.nbis_direction(card_angle) == direction


def test_positions_become_500_ppi_pixels() -> None:
    data = compact.encode([compact.Minutia(100, 50, compact.MinutiaType.RIDGE_ENDING, 0)])
    converted = bozorth3.template(data)
    assert converted.n == 1
    assert (converted.minutiae[0].x, converted.minutiae[0].y) == (197, 98)  # 10 mm, 5 mm at 500 ppi
    assert converted.minutiae[0].type == bozorth3.NBIS_RIDGE_ENDING


def test_without_the_library_the_benchmark_says_why_and_runs_ours_alone() -> None:
    env = dict(os.environ, SDBOX_NBIS_LIB="/nonexistent/libafis_lfs.so")
    out = subprocess.run(
        [sys.executable, "-m", "sdbox", "bio", "bench", "--fingers", "10", "--json"],
        env=env, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["sdbox"]["genuine"] == 280
    assert report["sdbox"]["seeds"] == "101-110"  # never the identities the matcher was tuned on
    assert "make nbis" in report["bozorth3"]["missing"]


def _nbis_or_skip() -> None:
    """Skip without the library, except under `make test` (which builds it and sets the variable)."""
    if bozorth3.available():
        return
    reason = f"NBIS library not built at {bozorth3.library_path()} (make nbis)"
    if os.environ.get("SDBOX_REQUIRE_NBIS"):
        pytest.fail(reason)
    pytest.skip(reason)


def test_bozorth3_separates_a_genuine_pair_from_an_impostor() -> None:
    _nbis_or_skip()
    reference = synth.enrolment_template(21)
    assert bozorth3.score(synth.impression(21, 1), reference) > 40  # NIST's rule of thumb
    assert bozorth3.score(synth.impression(22, 1), reference) < 20


def test_the_benchmark_refuses_a_population_with_tuning_identities() -> None:
    assert bench.report_seeds(500) == range(101, 601)
    with pytest.raises(ValueError, match="tuning identities 1-100"):
        bench.report_seeds(10, first=95)
