"""The on-card matcher: compares two compact-card templates (the card emulator's OCC).

Algorithm (docs/biometrics.md has the reasoning): a two-stage matcher in the
family of local-structure matching with global consolidation (Jiang & Yau;
Jain et al.), sized for a card:

1. **Local structures.** Each minutia is described by its k nearest
   neighbours: distance, direction of the neighbour seen from the minutia,
   and the neighbour's own direction, all relative to the minutia's
   direction. These are invariant to rotation and translation, and robust
   to elastic distortion because neighbours are close.
2. **Candidate alignments.** Pairs (probe, reference) whose local structures
   agree best propose rigid alignments (the rotation between their
   directions, the translation between their positions).
3. **Consolidation.** Under each candidate alignment, minutiae pair up
   one-to-one (mutual nearest compatible neighbours) within a distance
   tolerance that grows with the distance from the anchor (skin stretches
   more far away) and an angle tolerance; the best alignment is refined once
   by a least-squares fit over its pairs.
4. **Score.** m² / (n_probe_in_overlap * n_reference_in_overlap), in
   [0, 1], each count at least MIN_OVERLAP and half its template: it rewards many pairs and
   accounts for partial overlap on both sides (only minutiae that fall
   under the other print's area can be found). Each pair counts towards
   m by how close it lands: 1 - (d / reach)², where reach is its distance
   tolerance. A chance pair lands anywhere in the tolerance disc (it counts
   1/2 on average), a true one near its centre (close to 1); plain counting
   let impostors with similar ridge flow collect many chance pairs
   (docs/biometrics.md, "The impostor tail").
5. **Cylinders.** That score is multiplied by the templates' local agreement
   under Minutia Cylinder-Code style descriptors (:mod:`cylinders`): an
   impostor's chance alignment pairs minutiae whose neighbourhoods still
   differ, and cylinders see that without depending on which neighbour is
   nearest (small, distorted captures miss and add minutiae).

Minutia types are ignored (real extractors flip endings and bifurcations).
Pure, deterministic, numpy only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from sdbox.biometric import cylinders
from sdbox.biometric.compact import BYTES_PER_MINUTIA
from sdbox.biometric.errors import TemplateError

THRESHOLD = 0.095
"""Decision threshold: the first 0.005 step above the highest impostor score of FVC2002 DB1_B
(0.0930 of 2,880), the set the threshold is chosen on; DB2_B and DB3_B were looked at when the
cylinders were added (docs/biometrics.md, "Real prints": not cleanly held out).
The synthetic figures are reported on identities from :data:`sdbox.biometric.bench.FIRST_REPORT_SEED`
on, never the tuning seeds."""

# tuned on FVC2002 DB1_B only (real prints: k 4 -> 6, pair tolerance 1.0 mm + 7 % -> 0.8 mm + 4 %,
# pair angle 30 -> 20 degrees); the synthetic generator's looser tolerances let chance pairs in
K_NEIGHBOURS = 6
CANDIDATES = 6
REFINE = 1
DIST_TOL = 7.0  # 0.1 mm units, for neighbour distances (plus 10 % of the distance)
STEPS = 256  # angles are compared in 360/256 degree steps, as integers
ANGLE_TOL = round(22.0 / 360 * STEPS)
PAIR_TOL = 8.0  # 0.1 mm at the anchor
PAIR_TOL_SLOPE = 0.04  # extra tolerance per unit of distance from the anchor
PAIR_ANGLE_TOL = round(20.0 / 360 * STEPS)
OVERLAP_MARGIN = 10.0
MIN_OVERLAP = 15  # minutiae counted on each side at least (tuned on FVC2002 DB1_B: 10, 15, 20 tried)
MIN_OVERLAP_SHARE = 0.5  # and half of each template (0, 0.5, 0.6 tried: 0 let synthetic impostors up)
MIN_MINUTIAE = 3
_MASK = STEPS - 1


def _angles_close(a: np.ndarray, b: np.ndarray, tol: int) -> np.ndarray:
    """Whether the smallest modular gap between integer angles a and b is below ``tol``.

    The gap min(d, STEPS - d), d = (a - b) mod STEPS, is below tol when d is in
    [0, tol) or (STEPS - tol, STEPS): shifted by tol - 1 that is the one interval
    [0, 2 tol - 1), three integer operations.
    """
    result: np.ndarray = ((a - b + (tol - 1)) & _MASK) < 2 * tol - 1
    return result


@lru_cache(maxsize=256)
def _prepare(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (0.1 mm, float), angles (int STEPS) and local structures of a template.

    Cached: the card compares every probe with the same few references.
    """
    count, rest = divmod(len(data), BYTES_PER_MINUTIA)
    if rest or count == 0:
        raise TemplateError(f"a compact template of {len(data)} bytes is malformed")
    raw = np.frombuffer(data, dtype=np.uint8).reshape(count, 3)
    points = raw[:, :2].astype(np.float64)
    # ISO/IEC 19794-2 angles run counter-clockwise on the image, whose y axis points
    # down: work with y up so that angles and positions rotate the same way
    points[:, 1] *= -1
    angles = (raw[:, 2].astype(np.int32) & 0x3F) * (STEPS // 64)
    k = min(K_NEIGHBOURS, count - 1)
    local = _local(points, angles, k) if k > 0 else np.zeros((count, 0, 3))
    for array in (points, angles, local):
        array.setflags(write=False)
    return points, angles, local


def _local(points: np.ndarray, angles: np.ndarray, k: int) -> np.ndarray:
    """Per minutia, its k nearest neighbours: (distance, relative direction, relative angle)."""
    diff = points[None, :, :] - points[:, None, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(points))[:, None]
    d = dist[rows, order]
    direction = np.rint(
        np.arctan2(diff[rows, order, 1], diff[rows, order, 0]) * (STEPS / (2 * np.pi))
    ).astype(np.int32)
    alpha = (direction - angles[:, None]) & _MASK
    beta = (angles[order] - angles[:, None]) & _MASK
    return np.stack([d, alpha, beta], axis=-1)


def _local_similarity(lp: np.ndarray, lr: np.ndarray) -> np.ndarray:
    """(n_p, n_r): the share of neighbours that agree between each probe and reference minutia.

    Neighbour a of a probe minutia agrees with neighbour b of a reference minutia when
    their distances, directions and angles are all within tolerance. Computed as k by k
    planes of (n_p, n_r), one per (a, b): numpy's reductions over axes of length k
    cost more than the comparisons, and this is most of a match's time.
    """
    k = min(lp.shape[1], lr.shape[1])
    dp, dr = lp[:, :k, 0], lr[:, :k, 0]
    # int16: the angles are below STEPS; the probe's are shifted once for _angles_close
    shift = ANGLE_TOL - 1
    ap, ar = lp[:, :k, 1].astype(np.int16) + shift, lr[:, :k, 1].astype(np.int16)
    bp, br = lp[:, :k, 2].astype(np.int16) + shift, lr[:, :k, 2].astype(np.int16)
    width = 2 * ANGLE_TOL - 1
    tol = DIST_TOL + 0.1 * dp
    agree = [[np.empty(0, dtype=bool)] * k for _ in range(k)]
    for a in range(k):
        d_a, t_a, ap_a, bp_a = dp[:, a, None], tol[:, a, None], ap[:, a, None], bp[:, a, None]
        for b in range(k):
            ok = np.abs(d_a - dr[None, :, b]) < t_a
            ok &= ((ap_a - ar[None, :, b]) & _MASK) < width
            ok &= ((bp_a - br[None, :, b]) & _MASK) < width
            agree[a][b] = ok
    shape = (len(lp), len(lr))
    from_probe = np.zeros(shape, dtype=np.int64)  # probe neighbours with some agreeing one
    from_ref = np.zeros(shape, dtype=np.int64)  # and reference neighbours
    for a in range(k):
        hit = agree[a][0].copy()
        for b in range(1, k):
            hit |= agree[a][b]
        from_probe += hit
    for b in range(k):
        hit = agree[0][b].copy()
        for a in range(1, k):
            hit |= agree[a][b]
        from_ref += hit
    result: np.ndarray = np.minimum(from_probe, from_ref) / max(k, 1)
    return result


def _pairs(
    pp: np.ndarray, pa: np.ndarray, rp: np.ndarray, ra: np.ndarray, anchor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual nearest compatible pairs between aligned probe (pp, pa) and reference (rp, ra).

    Returns probe indices, reference indices and each pair's weight, 1 - (d / reach)².
    """
    # squared distances throughout: the order (nearest) and the weight need no root
    dx = pp[:, 0, None] - rp[None, :, 0]
    dy = pp[:, 1, None] - rp[None, :, 1]
    dist2 = dx * dx + dy * dy
    reach = PAIR_TOL + PAIR_TOL_SLOPE * np.hypot(rp[:, 0] - anchor[0], rp[:, 1] - anchor[1])
    reach2 = reach * reach
    ok = (dist2 < reach2[None, :]) & _angles_close(pa[:, None], ra[None, :], PAIR_ANGLE_TOL)
    masked = np.where(ok, dist2, np.inf)
    best_r = masked.argmin(axis=1)
    best_p = masked.argmin(axis=0)
    probe_idx = np.arange(len(pp))
    mutual = (best_p[best_r] == probe_idx) & np.isfinite(masked[probe_idx, best_r])
    pi, ri = probe_idx[mutual], best_r[mutual]
    weight: np.ndarray = 1.0 - masked[pi, ri] / reach2[ri]
    return pi, ri, weight


def _align(
    points: np.ndarray, angles: np.ndarray, rotation: float, origin: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by ``rotation`` (radians) about ``origin``, move ``origin`` to ``target``."""
    c, s = np.cos(rotation), np.sin(rotation)
    moved = (points - origin) @ np.array([[c, s], [-s, c]]) + target
    steps = round(rotation * STEPS / (2 * np.pi))
    return moved, (angles + steps) & _MASK


def score(probe: bytes, reference: bytes) -> float:
    """Similarity of two compact-card templates, in [0, 1]; a match from :data:`THRESHOLD`."""
    pp, pa, lp = _prepare(bytes(probe))
    rp, ra, lr = _prepare(bytes(reference))
    if len(pp) < MIN_MINUTIAE or len(rp) < MIN_MINUTIAE:
        return 0.0
    k = min(lp.shape[1], lr.shape[1])
    sim = _local_similarity(lp[:, :k], lr[:, :k])
    flat = np.argsort(-sim, axis=None, kind="stable")[:CANDIDATES]
    found: list[tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for index in flat:
        i, r = divmod(int(index), sim.shape[1])
        if sim[i, r] == 0:
            break
        rotation = float(ra[r] - pa[i]) * 2 * np.pi / STEPS
        aligned, aligned_angles = _align(pp, pa, rotation, pp[i], rp[r])
        pi, ri, weight = _pairs(aligned, aligned_angles, rp, ra, rp[r])
        found.append((float(weight.sum()), pi, ri, weight, aligned))
    if not found:
        return 0.0
    found.sort(key=lambda t: -t[0])
    best = 0.0
    for first_m, first_pi, first_ri, first_weight, first_aligned in found[:REFINE]:
        pi, weight, aligned = first_pi, first_weight, first_aligned
        if len(first_pi) >= 3:
            # one least-squares refit of the rigid transform over the pairs found
            src, dst = pp[first_pi], rp[first_ri]
            sc, dc = src.mean(axis=0), dst.mean(axis=0)
            h = (src - sc).T @ (dst - dc)
            rotation = float(np.arctan2(h[0, 1] - h[1, 0], h[0, 0] + h[1, 1]))
            aligned, aligned_angles = _align(pp, pa, rotation, sc, dc)
            pi, _ri, weight = _pairs(aligned, aligned_angles, rp, ra, dc)
            if weight.sum() < first_m:
                pi, weight, aligned = first_pi, first_weight, first_aligned
        m = float(weight.sum())
        # only minutiae where the two prints overlap can pair, on both sides (real captures are
        # often partial); but each side counts at least half its minutiae and MIN_OVERLAP, or a
        # sliver of overlap with a few chance pairs would look like a match
        low, high = aligned.min(axis=0) - OVERLAP_MARGIN, aligned.max(axis=0) + OVERLAP_MARGIN
        reference_in = int(np.all((rp >= low) & (rp <= high), axis=1).sum())
        low, high = rp.min(axis=0) - OVERLAP_MARGIN, rp.max(axis=0) + OVERLAP_MARGIN
        probe_in = int(np.all((aligned >= low) & (aligned <= high), axis=1).sum())
        floor = max(len(pi), MIN_OVERLAP)
        probe_n = max(probe_in, floor, MIN_OVERLAP_SHARE * len(pp))
        reference_n = max(reference_in, floor, MIN_OVERLAP_SHARE * len(rp))
        best = max(best, m * m / (probe_n * reference_n))
    # the pairing's score times the cylinders' local agreement (docs/biometrics.md, "DB3_B"):
    # a chance alignment of an impostor can pair minutiae whose neighbourhoods still differ
    return min(best, 1.0) * cylinders.agreement(_cylinders(pp, pa), _cylinders(rp, ra))


def _cylinders(points: np.ndarray, angles: np.ndarray) -> cylinders.Cylinders:
    """A template's cylinders (cached by its points and directions, as _prepare is)."""
    radians = angles.astype(np.float64) * (2 * np.pi / STEPS)
    return cylinders.cylinders(points.tobytes(), radians.tobytes())
