"""Real fingerprints: FVC2002 DB1_B, DB2_B and DB3_B through the box's pipeline, and their figures.

The sets live outside the repository (``../shared/data/fvc2002/`` beside the
checkout, or ``SDBOX_FVC2002``; their terms forbid copying them in). Each
image goes through what a capture goes through on the box: the image checks
(:mod:`sdbox.biometric.images`), libfprint's mindtct
(:mod:`sdbox.biometric.extract`), the reliability cut and the card's BIT
(:func:`sdbox.biometric.libfprint.to_probe`), at the set's own resolution.

Protocol (the sets' README, FVC style): genuine = every pair of
impressions of a finger (28 per finger), impostor = every pair of
impressions of different fingers of the same set; each unordered pair is
scored once, the earlier impression as the reference. Figures per set, and
pooled under one global threshold. Confidence intervals come from a
bootstrap over fingers (pairs of one finger are not independent, so a
binomial interval on pairs would be too narrow).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdbox.biometric import extract, images, quality
from sdbox.biometric.errors import CaptureError

SETS: dict[str, int] = {"DB1_B": 500, "DB2_B": 569, "DB3_B": 500}
"""The FVC2002 B sets and their resolution in ppi (as published by FVC2002)."""

IMPRESSIONS = 8
BOOTSTRAP = 500
_BOOTSTRAP_SEED = 2002


def data_dir() -> Path:
    """Where the FVC2002 sets are expected (``SDBOX_FVC2002``, else ``../shared/data/fvc2002``)."""
    configured = os.environ.get("SDBOX_FVC2002")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fvc2002"


def missing() -> str | None:
    """Why the real-print sets cannot be used here, or None when they can."""
    root = data_dir()
    absent = [name for name in SETS if not (root / name).is_dir()]
    if absent:
        return (
            f"FVC2002 {', '.join(absent)} not found under {root} "
            "(set SDBOX_FVC2002 to the folder holding DB1_B, DB2_B, DB3_B)"
        )
    return None


@dataclass(frozen=True)
class Impression:
    """One image of a set: finger ``finger`` (101..110), impression ``number`` (1..8)."""

    set_name: str
    finger: int
    number: int
    path: Path

    @property
    def ppi(self) -> int:
        """The set's resolution."""
        return SETS[self.set_name]


def impressions(set_name: str) -> list[Impression]:
    """The set's images in (finger, impression) order."""
    found = []
    for path in sorted((data_dir() / set_name).glob("*_*.png")):
        finger, number = (int(part) for part in path.stem.split("_"))
        found.append(Impression(set_name, finger, number, path))
    return found


def template(impression: Impression, *, gated: bool = False) -> bytes:
    """The compact card template the box would make of this image (raises CaptureError).

    ``gated``: refuse it below the capture quality threshold, as the box does.
    """
    image = images.load(impression.path, impression.ppi)
    return extract.template(image, impression.ppi, gated=gated)


def templates(set_name: str, *, gated: bool = False) -> dict[Impression, bytes | None]:
    """Every impression's template, None where the box would ask for the finger again."""
    out: dict[Impression, bytes | None] = {}
    for impression in impressions(set_name):
        try:
            out[impression] = template(impression, gated=gated)
        except CaptureError:
            out[impression] = None
    return out


def qualities(set_name: str) -> dict[Impression, quality.Quality]:
    """Every impression's capture quality (:mod:`sdbox.biometric.quality`)."""
    return {i: quality.measure(images.load(i.path, i.ppi)) for i in impressions(set_name)}


def gate_effect(
    scores: Scores, measured: dict[Impression, quality.Quality], threshold: float
) -> tuple[int, float, float]:
    """(captures below the quality threshold, share of their genuine pairs failing at
    ``threshold``, the same share for the captures above it)."""
    by_number = sorted(measured, key=lambda i: (i.finger, i.number))
    poor = {i for i in by_number if not measured[i].acceptable}
    fails = {True: [0, 0], False: [0, 0]}
    genuine = iter(scores.genuine)
    for pair in pairs(by_number):
        if not pair.genuine:
            continue
        failed = next(genuine) < threshold
        for side in (pair.reference, pair.probe):
            fails[side in poor][0] += failed
            fails[side in poor][1] += 1
    share = {k: v[0] / v[1] if v[1] else 0.0 for k, v in fails.items()}
    return len(poor), share[True], share[False]


@dataclass(frozen=True)
class Pair:
    """One comparison of the protocol: the reference (earlier) and the probe (later) impression."""

    reference: Impression
    probe: Impression

    @property
    def genuine(self) -> bool:
        """Same finger."""
        return self.reference.finger == self.probe.finger


def pairs(set_impressions: list[Impression]) -> Iterator[Pair]:
    """Every unordered pair of the set, genuine and impostor (see the module docstring)."""
    for a, b in itertools.combinations(set_impressions, 2):
        yield Pair(a, b)


@dataclass(frozen=True)
class Scores:
    """Scores of one set under one matcher; ``None`` templates score as the lowest possible."""

    set_name: str
    genuine: np.ndarray
    genuine_fingers: np.ndarray  # (n,) the finger of each genuine pair
    impostor: np.ndarray
    impostor_fingers: np.ndarray  # (n, 2) the two fingers of each impostor pair
    seconds: np.ndarray  # per comparison that ran


def score_set(
    set_name: str,
    made: dict[Impression, bytes | None],
    compare: Callable[[bytes, bytes], float],
    timer: Callable[[], float],
) -> Scores:
    """Every pair of the set under ``compare`` (probe, reference); a failed capture scores -1."""
    genuine, gfingers, impostor, ifingers, seconds = [], [], [], [], []
    for pair in pairs(sorted(made, key=lambda i: (i.finger, i.number))):
        reference, probe = made[pair.reference], made[pair.probe]
        if reference is None or probe is None:
            value = -1.0  # the pipeline refused one side: a genuine pair fails, an impostor too
        else:
            start = timer()
            value = float(compare(probe, reference))
            seconds.append(timer() - start)
        if pair.genuine:
            genuine.append(value)
            gfingers.append(pair.reference.finger)
        else:
            impostor.append(value)
            ifingers.append((pair.reference.finger, pair.probe.finger))
    return Scores(set_name, np.array(genuine), np.array(gfingers), np.array(impostor),
                  np.array(ifingers).reshape(-1, 2), np.array(seconds))  # fmt: skip


@dataclass(frozen=True)
class Rates:
    """Error rates of one matcher on one population, with 95 % bootstrap intervals."""

    genuine: int
    impostor: int
    eer: float
    eer_ci: tuple[float, float]
    fnmr_at_fmr_1pc: float
    fnmr_at_fmr_1pc_ci: tuple[float, float]
    threshold_fmr_1pc: float
    fnmr_at_fmr_01pc: float
    fnmr_at_fmr_01pc_ci: tuple[float, float]
    threshold_fmr_01pc: float


def _cumulative(values: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Total weight of values strictly below each threshold in ``at``."""
    order = np.argsort(values, kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(weights[order])])
    result: np.ndarray = cumulative[np.searchsorted(values[order], at, side="left")]
    return result


def _point_rates(
    genuine: np.ndarray, gw: np.ndarray, impostor: np.ndarray, iw: np.ndarray
) -> tuple[float, float, float, float, float]:
    """(EER, FNMR at FMR 1 %, its threshold, FNMR at FMR 0.1 %, its threshold), weighted pairs.

    A comparison matches when its score is at or above the threshold. EER is
    the smallest max(FNMR, FMR) over all thresholds (no interpolation); FNMR at
    FMR x is taken at the lowest threshold whose FMR does not exceed x.
    """
    thresholds = np.concatenate([np.unique(np.concatenate([genuine, impostor])), [np.inf]])
    fnmr = _cumulative(genuine, gw, thresholds) / gw.sum()
    fmr = 1.0 - _cumulative(impostor, iw, thresholds) / iw.sum()
    eer = float(np.min(np.maximum(fnmr, fmr)))
    out: list[float] = [eer]
    for target in (0.01, 0.001):
        index = int(np.argmax(fmr <= target + 1e-12))  # fmr falls as the threshold rises
        out += [float(fnmr[index]), float(thresholds[index])]
    return out[0], out[1], out[2], out[3], out[4]


def rates(sets: list[Scores], *, bootstrap: int = BOOTSTRAP) -> Rates:
    """Error rates pooled over ``sets`` (one global threshold), CIs by resampling fingers per set."""
    genuine = np.concatenate([s.genuine for s in sets])
    impostor = np.concatenate([s.impostor for s in sets])
    point = _point_rates(genuine, np.ones(len(genuine)), impostor, np.ones(len(impostor)))
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    samples = []
    for _ in range(bootstrap):
        gw, iw = [], []
        for s in sets:
            fingers = np.unique(s.genuine_fingers)
            drawn = rng.choice(fingers, size=len(fingers), replace=True)
            count = {int(f): int((drawn == f).sum()) for f in fingers}
            gw.append(np.array([count[int(f)] for f in s.genuine_fingers], dtype=np.float64))
            iw.append(np.array([count[int(a)] * count[int(b)] for a, b in s.impostor_fingers],
                               dtype=np.float64))  # fmt: skip
        g_weights, i_weights = np.concatenate(gw), np.concatenate(iw)
        if g_weights.sum() == 0 or i_weights.sum() == 0:
            continue
        samples.append(_point_rates(genuine, g_weights, impostor, i_weights))
    drawn_rates = np.array(samples)

    def interval(column: int) -> tuple[float, float]:
        if not samples:  # no bootstrap asked for
            return (point[column], point[column])
        low, high = np.percentile(drawn_rates[:, column], [2.5, 97.5])
        return (float(low), float(high))

    return Rates(
        genuine=len(genuine), impostor=len(impostor),
        eer=point[0], eer_ci=interval(0),
        fnmr_at_fmr_1pc=point[1], fnmr_at_fmr_1pc_ci=interval(1), threshold_fmr_1pc=point[2],
        fnmr_at_fmr_01pc=point[3], fnmr_at_fmr_01pc_ci=interval(3), threshold_fmr_01pc=point[4],
    )  # fmt: skip


def at_threshold(sets: list[Scores], threshold: float) -> tuple[float, float]:
    """(FNMR, FMR) pooled over ``sets`` at a fixed threshold (match from ``threshold``)."""
    genuine = np.concatenate([s.genuine for s in sets])
    impostor = np.concatenate([s.impostor for s in sets])
    return float((genuine < threshold).mean()), float((impostor >= threshold).mean())
