"""The matcher benchmark on a generated population (`sdbox bio bench`, `make bench`).

FVC protocol: every finger has 8 impressions; genuine comparisons are all
pairs of impressions of a finger (28 per finger); impostor comparisons are
the first impressions of every pair of fingers. With 500 fingers that is
14,000 genuine and 124,750 impostor comparisons, enough to measure FMR 1e-4.

The fingers are the synthetic identities from :data:`FIRST_REPORT_SEED` on:
the matcher's parameters and :data:`~sdbox.biometric.matcher.THRESHOLD` were
tuned on :data:`TUNING_SEEDS`, and figures measured on the identities a
matcher was tuned on flatter it.
Reports EER, FNMR at FMR 1e-3 and 1e-4 with 95 % Wilson intervals, and the
median and p99 time of one comparison. Synthetic data is easier than real
prints (no extraction errors, an ideal distortion model).

When the NBIS library is built (``make nbis``, see :mod:`sdbox.biometric.bozorth3`),
NIST's Bozorth3 scores exactly the same pairs and gets the same figures, its
thresholds picked from its own score distribution the same way.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from sdbox.biometric import bozorth3, matcher, synth

IMPRESSIONS = 8
TUNING_SEEDS = range(1, 101)
"""The synthetic identities the matcher was tuned on (docs/biometrics.md): never reported."""
FIRST_REPORT_SEED = 101
"""The first identity of the reported population (500 fingers: seeds 101-600)."""


@dataclass(frozen=True)
class BenchResult:
    """One matcher's figures on one profile."""

    matcher: str
    profile: str
    fingers: int
    seeds: str  # the identity seeds compared, "first-last"
    genuine: int
    impostor: int
    eer: float
    threshold_fmr_1e3: float
    fnmr_at_fmr_1e3: float
    fnmr_at_fmr_1e3_ci: tuple[float, float]
    threshold_fmr_1e4: float
    fnmr_at_fmr_1e4: float
    fnmr_at_fmr_1e4_ci: tuple[float, float]
    fnmr_at_shipped_threshold: float | None  # None for Bozorth3 (it ships no threshold here)
    fmr_at_shipped_threshold: float | None
    median_match_ms: float
    p99_match_ms: float


def wilson(failures: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if total == 0:
        return (0.0, 1.0)
    p = failures / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


SDBOX = "sdbox"
BOZORTH3 = "bozorth3"


def _scores(task: tuple[str, list[tuple[bytes, bytes]]]) -> tuple[list[float], list[float]]:
    name, pairs = task
    scores, times = [], []
    for probe, reference in pairs:
        if name == BOZORTH3:
            # the conversion to NBIS input is not Bozorth3's time (mindtct's output would be its input)
            bozorth3.template(probe), bozorth3.template(reference)
            start = time.perf_counter()
            scores.append(float(bozorth3.score(probe, reference)))
        else:
            start = time.perf_counter()
            scores.append(matcher.score(probe, reference))
        times.append(time.perf_counter() - start)
    return scores, times


def _run_pairs(
    name: str, pairs: list[tuple[bytes, bytes]], workers: int
) -> tuple[np.ndarray, list[float]]:
    chunks = [pairs[i : i + 2000] for i in range(0, len(pairs), 2000)]
    scores: list[float] = []
    times: list[float] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for s, t in pool.map(_scores, [(name, c) for c in chunks]):
            scores += s
            times += t
    return np.array(scores), times


def _fnmr_at(genuine: np.ndarray, impostor: np.ndarray, fmr: float) -> tuple[float, float, int]:
    """(threshold, FNMR) at the lowest threshold whose FMR does not exceed ``fmr``."""
    ordered = np.sort(impostor)[::-1]
    allowed = math.floor(fmr * len(impostor))
    threshold = float(ordered[allowed]) + 1e-9 if allowed < len(ordered) else 0.0
    failures = int((genuine < threshold).sum())
    return threshold, failures / len(genuine), failures


def _eer(genuine: np.ndarray, impostor: np.ndarray) -> float:
    best = 1.0
    for t in np.unique(np.concatenate([genuine, impostor])):
        fnmr, fmr = (genuine < t).mean(), (impostor >= t).mean()
        best = min(best, max(fnmr, fmr))
    return float(best)


def _figures(
    name: str,
    profile: str,
    seeds: range,
    genuine: np.ndarray,
    impostor: np.ndarray,
    times: list[float],
    shipped: float | None,
) -> BenchResult:
    times = sorted(times)
    t3, f3, n3 = _fnmr_at(genuine, impostor, 1e-3)
    t4, f4, n4 = _fnmr_at(genuine, impostor, 1e-4)
    return BenchResult(
        matcher=name, profile=profile, fingers=len(seeds), seeds=f"{seeds.start}-{seeds.stop - 1}",
        genuine=len(genuine), impostor=len(impostor),
        eer=_eer(genuine, impostor),
        threshold_fmr_1e3=round(t3, 4), fnmr_at_fmr_1e3=f3, fnmr_at_fmr_1e3_ci=wilson(n3, len(genuine)),
        threshold_fmr_1e4=round(t4, 4), fnmr_at_fmr_1e4=f4, fnmr_at_fmr_1e4_ci=wilson(n4, len(genuine)),
        fnmr_at_shipped_threshold=None if shipped is None else float((genuine < shipped).mean()),
        fmr_at_shipped_threshold=None if shipped is None else float((impostor >= shipped).mean()),
        median_match_ms=statistics.median(times) * 1000, p99_match_ms=times[int(len(times) * 0.99)] * 1000,
    )  # fmt: skip


def report_seeds(fingers: int, first: int = FIRST_REPORT_SEED) -> range:
    """The identities of a population of ``fingers``; refuses any the matcher was tuned on."""
    seeds = range(first, first + fingers)
    if set(seeds) & set(TUNING_SEEDS):
        raise ValueError(
            f"seeds {seeds.start}-{seeds.stop - 1} include the tuning identities "
            f"{TUNING_SEEDS.start}-{TUNING_SEEDS.stop - 1}"
        )
    return seeds


def population(
    fingers: int, profile: synth.DistortionProfile, first: int = FIRST_REPORT_SEED
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """(genuine pairs, impostor pairs) of the generated population (see the module docstring)."""
    impressions = {
        f: [synth.impression(f, i, profile) for i in range(1, IMPRESSIONS + 1)]
        for f in report_seeds(fingers, first)
    }
    genuine_pairs = [
        pair for f in impressions for pair in itertools.combinations(impressions[f], 2)
    ]
    impostor_pairs = [
        (impressions[a][0], impressions[b][0]) for a, b in itertools.combinations(impressions, 2)
    ]
    return genuine_pairs, impostor_pairs


def run(
    fingers: int = 500,
    profile: synth.DistortionProfile = synth.DEFAULT,
    workers: int | None = None,
    with_bozorth3: bool = True,
) -> list[BenchResult]:
    """Our matcher's figures, then Bozorth3's on the same pairs when its library is built."""
    workers = workers or os.cpu_count() or 1
    seeds = report_seeds(fingers)
    genuine_pairs, impostor_pairs = population(fingers, profile, seeds.start)
    names = [SDBOX] + ([BOZORTH3] if with_bozorth3 and bozorth3.available() else [])
    results = []
    for name in names:
        genuine, gtimes = _run_pairs(name, genuine_pairs, workers)
        impostor, itimes = _run_pairs(name, impostor_pairs, workers)
        shipped = matcher.THRESHOLD if name == SDBOX else None
        results.append(
            _figures(name, profile.name, seeds, genuine, impostor, gtimes + itimes, shipped)
        )
    return results


def bozorth3_missing() -> str | None:
    """Why Bozorth3 is not in the report, or None when it is."""
    if bozorth3.available():
        return None
    return f"Bozorth3 not run: no NBIS library at {bozorth3.library_path()} (build it with `make nbis`)"


def as_dict(result: BenchResult) -> dict[str, object]:
    """JSON-ready figures."""
    return asdict(result)
