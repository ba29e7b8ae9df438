"""Synthetic fingers: seeded identities and distorted impressions, for tests, the demo and benchmarks.

An identity (a seed) is a master set of minutiae on a finger-shaped area,
with directions following the ridge-orientation field of its pattern
class (neighbouring minutiae are not independent in real prints, and
fingers of one class share their flow): left loop, right loop, whorl or
arch, drawn with about the frequencies seen in real populations
(:data:`PATTERN_CLASSES`). The field is Sherlock and Monro's zero-pole
model (1993): half the sum of the angles seen from each core, minus half
the sum seen from each delta; an arch has none and bends its ridges over
a hump. The singular points move a little per identity, and a little
smooth noise is added. An impression applies what
real captures do, in this order, with the parameters of a
:class:`DistortionProfile` (docs/biometrics.md lists them):

1. rigid placement: rotation about the finger's centre, translation;
2. elastic (non-linear) skin distortion: a smooth displacement field, the
   sum of a few Gaussian bumps;
3. partial overlap: only what falls inside the sensor window is seen;
4. missed minutiae (dropout) and spurious ones (noise, scars);
5. type flips (ending <-> bifurcation), position and angle noise;
6. quantisation to the card format (0.1 mm, 360/64 degrees), fitted to the
   card's BIT (at most 60 minutiae, the farthest from the centre dropped).

Everything is deterministic in (identity seed, impression number, profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdbox.biometric.compact import MAX_COORDINATE, Minutia, MinutiaType, encode

FINGER_CENTRE = (12.5, 13.5)  # mm, in the card's coordinate space
FINGER_AXES = (8.5, 11.5)  # mm, semi-axes of the finger area
MASTER_MINUTIAE = (45, 70)
MIN_SPACING_MM = 0.9


@dataclass(frozen=True)
class DistortionProfile:
    """Distortion parameters of an impression (lengths in mm, angles in degrees)."""

    name: str
    rotation: float  # uniform in +-rotation
    translation: float  # uniform in +-translation on each axis
    warp: float  # peak displacement of each elastic bump
    warp_bumps: int
    warp_sigma: float
    window: tuple[float, float]  # sensor width, height
    dropout: float  # probability that a true minutia is missed
    spurious: float  # mean number of false minutiae (Poisson)
    type_flip: float
    position_noise: float  # sigma
    angle_noise: float  # sigma


DEFAULT = DistortionProfile("default", rotation=20.0, translation=1.5, warp=0.5, warp_bumps=3, warp_sigma=5.0,
                            window=(15.0, 19.0), dropout=0.12, spurious=3.0, type_flip=0.10,
                            position_noise=0.12, angle_noise=5.0)  # fmt: skip
HARD = DistortionProfile("hard", rotation=30.0, translation=2.5, warp=0.9, warp_bumps=4, warp_sigma=4.5,
                         window=(13.0, 16.0), dropout=0.20, spurious=6.0, type_flip=0.20,
                         position_noise=0.20, angle_noise=9.0)  # fmt: skip
ENROLMENT = DistortionProfile("enrolment", rotation=3.0, translation=0.3, warp=0.15, warp_bumps=2, warp_sigma=6.0,
                              window=(22.0, 25.0), dropout=0.03, spurious=0.5, type_flip=0.03,
                              position_noise=0.06, angle_noise=3.0)  # fmt: skip
PROFILES = {p.name: p for p in (DEFAULT, HARD, ENROLMENT)}

PATTERN_CLASSES = {"left_loop": 0.34, "right_loop": 0.31, "whorl": 0.28, "arch": 0.07}
"""Pattern classes and their share of fingers (loops about 65 %, whorls 30 %, arches 5 % in
real populations; tented arches counted with arches)."""


@dataclass(frozen=True)
class Finger:
    """A synthetic finger: positions (mm), directions (radians) and types of its minutiae."""

    xy: np.ndarray  # shape (n, 2)
    direction: np.ndarray  # shape (n,)
    kind: np.ndarray  # shape (n,), MinutiaType values
    pattern: str  # one of PATTERN_CLASSES


def finger(seed: int) -> Finger:
    """The master minutiae of identity ``seed``."""
    rng = np.random.default_rng([0x5DB0, seed])
    count = int(rng.integers(*MASTER_MINUTIAE))
    cx, cy = FINGER_CENTRE
    ax, ay = FINGER_AXES
    names = list(PATTERN_CLASSES)
    pattern = names[int(rng.choice(len(names), p=list(PATTERN_CLASSES.values())))]
    cores, deltas = _singular_points(pattern, rng)
    waves = rng.normal(0, 0.25, size=(3, 4))
    points: list[tuple[float, float]] = []
    while len(points) < count:
        x, y = rng.uniform(cx - ax, cx + ax), rng.uniform(cy - ay, cy + ay)
        if ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 > 1:
            continue
        if any((x - px) ** 2 + (y - py) ** 2 < MIN_SPACING_MM**2 for px, py in points):
            continue
        points.append((x, y))
    xy = np.array(points)
    field = orientation(xy, pattern, cores, deltas, hump=float(rng.uniform(2.0, 4.0)))
    for a, b, c, d in waves:
        field += a * np.sin(b * xy[:, 0] + c * xy[:, 1] + d)
    direction = (field + np.pi * rng.integers(0, 2, size=count)) % (2 * np.pi)
    kind = rng.choice(
        [MinutiaType.RIDGE_ENDING, MinutiaType.BIFURCATION], size=count, p=[0.55, 0.45]
    )
    return Finger(xy, direction, kind.astype(int), pattern)


def _singular_points(pattern: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cores and deltas (mm, image frame: y down) of a pattern class, jittered per identity."""
    cx, cy = FINGER_CENTRE
    jitter = rng.normal(0, 0.8, size=(4, 2))
    if pattern == "arch":
        return np.zeros((0, 2)), np.zeros((0, 2))
    if pattern == "whorl":
        cores = np.array([(cx - 0.8, cy - 1.5), (cx + 0.8, cy - 0.5)]) + jitter[:2]
        deltas = np.array([(cx - 6.0, cy + 5.0), (cx + 6.0, cy + 5.0)]) + jitter[2:]
        return cores, deltas
    side = -1.0 if pattern == "left_loop" else 1.0  # the delta lies opposite the loop's opening
    cores = np.array([(cx - side * 1.0, cy - 1.5)]) + jitter[:1]
    deltas = np.array([(cx + side * 5.5, cy + 5.5)]) + jitter[1:2]
    return cores, deltas


def orientation(
    xy: np.ndarray, pattern: str, cores: np.ndarray, deltas: np.ndarray, hump: float = 3.0
) -> np.ndarray:
    """The ridge orientation (radians, modulo pi) at points ``xy`` of a finger of ``pattern``."""
    if pattern == "arch":
        cx, cy = FINGER_CENTRE
        # ridges follow y = -h exp(-(x - cx)^2 / (2 s^2)), raised towards the fingertip
        spread = 4.0
        slope = hump * (xy[:, 0] - cx) / spread**2 * np.exp(-((xy[:, 0] - cx) ** 2) / (2 * spread**2))
        result: np.ndarray = np.arctan(slope * np.clip((cy + 6 - xy[:, 1]) / 10, 0, 1))
        return result
    field = np.zeros(len(xy))
    for core in cores:
        field += 0.5 * np.arctan2(xy[:, 1] - core[1], xy[:, 0] - core[0])
    for delta in deltas:
        field -= 0.5 * np.arctan2(xy[:, 1] - delta[1], xy[:, 0] - delta[0])
    return field


def impression_minutiae(
    seed: int, number: int, profile: DistortionProfile = DEFAULT, max_minutiae: int = 60
) -> list[Minutia]:
    """Impression ``number`` of identity ``seed``, in card units (see the module docstring)."""
    master = finger(seed)
    rng = np.random.default_rng([0x1A9, seed, number, sum(map(ord, profile.name))])
    cx, cy = FINGER_CENTRE
    # 1. rigid placement
    theta = math.radians(rng.uniform(-profile.rotation, profile.rotation))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    xy = (
        (master.xy - (cx, cy)) @ rot.T
        + (cx, cy)
        + rng.uniform(-profile.translation, profile.translation, 2)
    )
    direction = master.direction + theta
    # 2. elastic distortion
    for _ in range(profile.warp_bumps):
        centre = rng.uniform((cx - 8, cy - 10), (cx + 8, cy + 10))
        push = rng.normal(0, 1, 2)
        push *= profile.warp * rng.uniform(0.3, 1.0) / max(float(np.linalg.norm(push)), 1e-9)
        weight = np.exp(-np.sum((xy - centre) ** 2, axis=1) / (2 * profile.warp_sigma**2))
        xy = xy + weight[:, None] * push
    kind = master.kind.copy()
    # 4a. dropout; 5. type flips
    keep = rng.random(len(xy)) >= profile.dropout
    flips = rng.random(len(xy)) < profile.type_flip
    kind = np.where(flips, 3 - kind, kind)
    xy, direction, kind = xy[keep], direction[keep], kind[keep]
    # 3. partial overlap: the sensor window, placed over the finger
    w, h = profile.window
    origin = np.array((cx - w / 2, cy - h / 2)) + rng.uniform(-1.5, 1.5, 2)
    # 4b. spurious minutiae inside the window
    extra = int(rng.poisson(profile.spurious))
    if extra:
        xy = np.vstack([xy, origin + rng.uniform((0, 0), (w, h), (extra, 2))])
        direction = np.concatenate([direction, rng.uniform(0, 2 * np.pi, extra)])
        kind = np.concatenate([kind, rng.integers(1, 3, extra)])
    inside = np.all((xy >= origin) & (xy <= origin + np.array((w, h))), axis=1)
    xy, direction, kind = xy[inside] - origin, direction[inside], kind[inside]
    # 5. noise, 6. quantisation
    xy = xy + rng.normal(0, profile.position_noise, xy.shape)
    direction = direction + np.radians(rng.normal(0, profile.angle_noise, len(direction)))
    units = np.clip(np.rint(xy * 10), 0, MAX_COORDINATE).astype(int)
    # directions are drawn in the image frame (y down); ISO/IEC 19794-2 angles run
    # counter-clockwise as seen, hence the sign
    steps = np.rint(-direction / (2 * np.pi) * 64).astype(int) % 64
    minutiae = [
        Minutia(int(x), int(y), MinutiaType(int(k)), int(a))
        for (x, y), k, a in zip(units, kind, steps, strict=True)
    ]
    if len(minutiae) > max_minutiae:
        mx = sum(m.x for m in minutiae) / len(minutiae)
        my = sum(m.y for m in minutiae) / len(minutiae)
        minutiae.sort(key=lambda m: (m.x - mx) ** 2 + (m.y - my) ** 2)
        minutiae = minutiae[:max_minutiae]
    return minutiae


def impression(seed: int, number: int, profile: DistortionProfile = DEFAULT) -> bytes:
    """Impression ``number`` of identity ``seed`` as a compact card template."""
    return encode(impression_minutiae(seed, number, profile))


def enrolment_template(seed: int) -> bytes:
    """The reference an enrolment station writes for identity ``seed`` (a careful capture)."""
    return encode(impression_minutiae(seed, 0, ENROLMENT))
