"""Generated fingerprint images: a synthetic identity's minutiae drawn as ridges.

The capture path (libfprint -> NBIS mindtct) needs images, not minutiae. An
image is a phase pattern (Larkin & Fletcher, "On the recovery of phase from
single fringe patterns", 2007): ridges are where ``cos(phi)`` is high, with

    phi(q) = 2 pi g(q) / period + sum_i s_i atan2(q - m_i)

``g`` is a smooth arch-like field (straight ridges bent by a Gaussian hump,
tilted per identity) and each spiral term ``s_i = +-1`` adds or removes one
ridge at the identity's minutia ``m_i``: exactly the minutiae of
:func:`sdbox.biometric.synth.finger`, nothing else (a plain cosine has no
ridge endings or bifurcations of its own). Their directions follow the
drawn ridges, not the master's random ones, so an image-based reference is
enrolled from an image too.

An impression places the finger with the same distortion profile as the
minutiae generator (rotation, translation, elastic warp, sensor window; the
mapping is inverted per pixel), then adds uneven pressure and sensor noise.
Everything is deterministic in (identity seed, impression number, profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdbox.biometric import synth

PPI = 500
PPMM = PPI / 25.4
RIDGE_PERIOD_MM = 0.46  # about 11 ridges per 5 mm, typical of an adult finger
BACKGROUND = 255  # no skin: white, as on an optical sensor
NOISE_SIGMA = 8.0  # grey levels


@dataclass(frozen=True)
class GreyImage:
    """An 8-bit greyscale image, row-major, dark ridges on a light background."""

    width: int
    height: int
    pixels: bytes
    ppmm: float = PPMM

    def __post_init__(self) -> None:
        if len(self.pixels) != self.width * self.height:
            raise ValueError(f"{len(self.pixels)} pixels for a {self.width}x{self.height} image")


def _window_pixels(size_mm: float) -> int:
    # libfprint's own test images are 4-pixel aligned (cairo A8 rows); keep that
    return int(size_mm * PPMM) // 4 * 4


def impression(seed: int, number: int, profile: synth.DistortionProfile = synth.DEFAULT) -> GreyImage:
    """Impression ``number`` of identity ``seed`` as the sensor would image it."""
    master = synth.finger(seed)
    shape = np.random.default_rng([0x71D6E, seed])
    tilt = shape.uniform(-0.35, 0.35)
    hump = shape.uniform(3.0, 6.0)
    hump_width = shape.uniform(5.0, 8.0)
    signs = shape.choice([-1.0, 1.0], size=len(master.xy))

    # the same placement draws as synth.impression_minutiae, in the same order
    rng = np.random.default_rng([0x1A9, seed, number, sum(map(ord, profile.name))])
    cx, cy = synth.FINGER_CENTRE
    theta = math.radians(rng.uniform(-profile.rotation, profile.rotation))
    shift = rng.uniform(-profile.translation, profile.translation, 2)
    bumps = []
    for _ in range(profile.warp_bumps):
        centre = rng.uniform((cx - 8, cy - 10), (cx + 8, cy + 10))
        push = rng.normal(0, 1, 2)
        push *= profile.warp * rng.uniform(0.3, 1.0) / max(float(np.linalg.norm(push)), 1e-9)
        bumps.append((centre, push))
    w_mm, h_mm = profile.window
    origin = np.array((cx - w_mm / 2, cy - h_mm / 2)) + rng.uniform(-1.5, 1.5, 2)

    width, height = _window_pixels(w_mm), _window_pixels(h_mm)
    rows, cols = np.mgrid[0:height, 0:width].astype(float)
    # pixel -> placed finger (mm) -> undo the warp (first order) -> undo the placement
    px = cols / PPMM + origin[0]
    py = rows / PPMM + origin[1]
    for centre, push in bumps:
        weight = np.exp(-((px - centre[0]) ** 2 + (py - centre[1]) ** 2) / (2 * profile.warp_sigma**2))
        px = px - weight * push[0]
        py = py - weight * push[1]
    px, py = px - cx - shift[0], py - cy - shift[1]
    qx = math.cos(theta) * px + math.sin(theta) * py + cx
    qy = -math.sin(theta) * px + math.cos(theta) * py + cy

    along = (qx - cx) * math.cos(tilt) + (qy - cy) * math.sin(tilt)
    across = -(qx - cx) * math.sin(tilt) + (qy - cy) * math.cos(tilt)
    phase = 2 * np.pi * (across - hump * np.exp(-((along / hump_width) ** 2))) / RIDGE_PERIOD_MM
    for (mx, my), sign in zip(master.xy, signs, strict=True):
        phase += sign * np.arctan2(qy - my, qx - mx)

    ax, ay = synth.FINGER_AXES
    skin = ((qx - cx) / ax) ** 2 + ((qy - cy) / ay) ** 2 <= 1.05
    pressure = 0.75 + 0.25 * np.cos(0.35 * (qx - cx) + rng.uniform(0, 2 * np.pi))
    noise = np.random.default_rng([0xB0B, seed, number, sum(map(ord, profile.name))])
    grey = 140.0 - 95.0 * pressure * np.cos(phase) + noise.normal(0, NOISE_SIGMA, phase.shape)
    grey = np.where(skin, grey, BACKGROUND)
    return GreyImage(width, height, np.clip(grey, 0, 255).astype(np.uint8).tobytes())


def enrolment_image(seed: int) -> GreyImage:
    """The careful capture an enrolment station makes of identity ``seed``."""
    return impression(seed, 0, synth.ENROLMENT)


def blank(width: int = 296, height: int = 372, seed: int = 0) -> GreyImage:
    """An empty sensor (no ridges, a little noise): a capture with no usable finger."""
    noise = np.random.default_rng([0xB1A, seed]).normal(200.0, 4.0, (height, width))
    return GreyImage(width, height, np.clip(noise, 0, 255).astype(np.uint8).tobytes())
