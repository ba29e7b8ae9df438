"""Cylinder descriptors of minutiae and their local agreement: the matcher's second opinion.

After Minutia Cylinder-Code (Cappelli, Ferrara & Maltoni, IEEE TPAMI 2010),
written here for the card's compact templates. Each minutia gets a
cylinder: a disc of radius :data:`RADIUS` around it, turned to its
direction, cut into :data:`CELLS` x :data:`CELLS` cells of space and
:data:`SECTIONS` sections of direction. A cell holds how much of the
neighbourhood's ridge detail sits there: every other minutia adds a
Gaussian of its distance to the cell's centre times a Gaussian of how far
its direction, relative to the centre minutia's, lies from the section's;
a sigmoid then saturates the sum. Cells outside the template's convex hull
(where the capture saw nothing, not "no minutia") are invalid and are left
out of a comparison on either side.

Two cylinders agree by ``1 - |a - b| / (|a| + |b|)`` over the cells valid
in both, when their minutiae point within 90° of each other and both
cylinders lie mostly inside their print. The template agreement is the
mean of the best few cylinder agreements (MCC's local similarity sort;
the few grow from 4 to 12 with the smaller template's size).

Why it helps the k-nearest-neighbour structures of :mod:`matcher`: a
cylinder describes a neighbourhood by its density, not by which minutiae
are nearest, so a missed or spurious minutia changes it a little instead
of shifting every neighbour index, which is what happens on small,
distorted captures (FVC2002 DB3_B; docs/biometrics.md). Pure, numpy only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RADIUS = 36.0  # 0.1 mm: MCC's 70 pixels at 500 ppi
CELLS = 8  # per side of the disc (MCC's 16 halved: the card's templates are small)
SECTIONS = 6  # of direction
SIGMA_SPACE = 4.7  # 0.1 mm: MCC's 28/3 pixels
SIGMA_DIRECTION = 2 * np.pi / 9
SATURATION_MU, SATURATION_TAU = 0.01, 400.0
HULL_MARGIN = 5.0  # 0.1 mm
MIN_VALID = 0.6  # share of the disc's cells inside the print for a cylinder to count
MIN_COMMON = 0.09  # share of a cylinder's values valid on both sides for two to be compared
MAX_TURN = np.pi / 2  # two minutiae further apart in direction are not compared
MIN_BEST, MAX_BEST, BEST_MU, BEST_TAU = 4, 12, 20.0, 0.4
_BLOCK_FLOPS = 200_000  # keep each product below OpenBLAS's threading size (see _products)

Cylinders = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _hull(points: np.ndarray) -> np.ndarray:
    """The convex hull of ``points``, counter-clockwise (Andrew's monotone chain)."""
    ordered = sorted({(float(x), float(y)) for x, y in points})
    if len(ordered) < 3:
        return np.array(ordered).reshape(-1, 2)

    def turn(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    upper: list[tuple[float, float]] = []
    for p in ordered:
        while len(lower) >= 2 and turn(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(ordered):
        while len(upper) >= 2 and turn(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def _inside(hull: np.ndarray, query: np.ndarray, margin: float) -> np.ndarray:
    """Whether each point of ``query`` (n, 2) lies in ``hull`` grown by ``margin``."""
    if len(hull) < 3:
        return np.zeros(len(query), dtype=bool)
    start = hull
    edge = np.roll(hull, -1, axis=0) - start
    length = np.hypot(edge[:, 0], edge[:, 1])
    # signed distance to each edge's line, positive on the inside of a counter-clockwise hull
    signed = (
        edge[None, :, 0] * (query[:, None, 1] - start[None, :, 1])
        - edge[None, :, 1] * (query[:, None, 0] - start[None, :, 0])
    ) / length
    result: np.ndarray = (signed >= -margin).all(axis=1)
    return result


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles into [-pi, pi)."""
    result: np.ndarray = (angle + np.pi) % (2 * np.pi) - np.pi
    return result


@lru_cache(maxsize=256)
def cylinders(points_key: bytes, angles_key: bytes) -> Cylinders:
    """(values, cell validity, squares per cell, usable, directions) of every minutia's cylinder.

    Validity is per cell of space (the same for all its sections), so the
    products that involve it are over cells, not over values (see agreement).

    ``points_key``/``angles_key``: the float64 points (0.1 mm, y up) and the
    directions (radians) as bytes, so that a template's cylinders are built
    once (the card compares each probe with the same few references).
    """
    points = np.frombuffer(points_key, dtype=np.float64).reshape(-1, 2)
    theta = np.frombuffer(angles_key, dtype=np.float64)
    n = len(points)
    size = 2 * RADIUS / CELLS
    offsets = (np.arange(CELLS) - (CELLS - 1) / 2) * size
    gx, gy = (grid.ravel() for grid in np.meshgrid(offsets, offsets, indexing="ij"))
    # only the disc's cells: the corners of the square grid never count
    in_disc = np.hypot(gx, gy) <= RADIUS
    gx, gy = gx[in_disc], gy[in_disc]
    c, s = np.cos(theta), np.sin(theta)
    cx = points[:, 0, None] + c[:, None] * gx[None] - s[:, None] * gy[None]
    cy = points[:, 1, None] + s[:, None] * gx[None] + c[:, None] * gy[None]
    inside = _inside(_hull(points), np.stack([cx.ravel(), cy.ravel()], axis=1), HULL_MARGIN)
    valid = inside.reshape(n, -1)
    dx = cx[:, :, None] - points[None, None, :, 0]
    dy = cy[:, :, None] - points[None, None, :, 1]
    space = np.exp(-(dx * dx + dy * dy) / (2 * SIGMA_SPACE**2))  # (minutia, cell, neighbour)
    space[np.arange(n), :, np.arange(n)] = 0.0  # a minutia is not its own neighbour
    relative = _wrap(theta[None, :] - theta[:, None])  # (minutia, neighbour)
    centres = -np.pi + (np.arange(SECTIONS) + 0.5) * (2 * np.pi / SECTIONS)
    gap = _wrap(centres[None, None, :] - relative[:, :, None])
    # the Gaussian's density at the gap, times the section's width: its share in the section
    direction = np.exp(-gap * gap / (2 * SIGMA_DIRECTION**2)) * (
        (2 * np.pi / SECTIONS) / (np.sqrt(2 * np.pi) * SIGMA_DIRECTION)
    )
    summed = np.matmul(space, direction)  # per minutia, (cell, neighbour) @ (neighbour, section)
    saturated = 1.0 / (1.0 + np.exp(-SATURATION_TAU * (summed - SATURATION_MU)))
    values = np.where(valid[:, :, None], saturated, 0.0).reshape(n, -1)
    values = values.astype(np.float32)  # the one large product runs in single precision
    validity = valid.astype(np.float64)
    squares = (values.astype(np.float64) ** 2).reshape(n, -1, SECTIONS).sum(axis=2)
    usable = valid.sum(axis=1) >= MIN_VALID * len(gx)
    for array in (values, validity, squares, usable, theta):
        array.setflags(write=False)
    return values, validity, squares, usable, theta


def _products(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right.T`` in row blocks small enough for OpenBLAS to run on one thread.

    These products are tiny (60 x 60 x 312); OpenBLAS would still split each over
    every core, and on a busy box (or the shared benchmark machine) waking the
    threads costs ten times the arithmetic.
    """
    rows = max(1, _BLOCK_FLOPS // max(1, right.shape[0] * right.shape[1]))
    if rows >= len(left):
        result: np.ndarray = left @ right.T
        return result
    return np.concatenate([left[i : i + rows] @ right.T for i in range(0, len(left), rows)])


def agreement(probe: Cylinders, reference: Cylinders) -> float:
    """The templates' local agreement in [0, 1]: the mean of their best cylinder agreements."""
    a, valid_a, squares_a, usable_a, theta_a = probe
    b, valid_b, squares_b, usable_b, theta_b = reference
    if len(a) == 0 or len(b) == 0:
        return 0.0
    # norms over the cells valid on both sides (a is zero outside its own valid cells, b
    # too): validity is per cell of space, so these products are over 52 cells, not 312 values
    norm_a2 = squares_a @ valid_b.T
    norm_b2 = valid_a @ squares_b.T
    common = (valid_a @ valid_b.T) * SECTIONS
    cross = _products(a, b).astype(np.float64)
    norm_a, norm_b = np.sqrt(norm_a2), np.sqrt(norm_b2)
    distance = np.sqrt(np.maximum(norm_a2 + norm_b2 - 2 * cross, 0.0))
    total = norm_a + norm_b
    similar = np.where(total > 0, 1.0 - distance / np.where(total > 0, total, 1.0), 0.0)
    turn = np.abs(_wrap(theta_a[:, None] - theta_b[None, :]))
    comparable = (turn <= MAX_TURN) & usable_a[:, None] & usable_b[None, :]
    comparable &= common >= MIN_COMMON * a.shape[1]
    similar = np.where(comparable, similar, 0.0)
    smaller = min(similar.shape)
    share = 1.0 / (1.0 + np.exp(-BEST_TAU * (smaller - BEST_MU)))
    best = MIN_BEST + round(float(share) * (MAX_BEST - MIN_BEST))
    # most entries are zero (not comparable): select among the others, which is also
    # much faster than a partition over many equal values
    count = min(best, similar.size)
    positive = similar[similar > 0]
    top = np.sort(positive)[-count:] if len(positive) > count else positive
    return float(np.clip(top.sum() / count, 0.0, 1.0))
