"""mindtct's minutiae -> ISO/IEC 19794-2 record -> card probe (no device: the conversion only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.agent.adapters import make_sensor
from sdbox.agent.config import load
from sdbox.biometric import compact, ridges
from sdbox.biometric.compact import MinutiaType
from sdbox.biometric.errors import PlaceFingerAgain
from sdbox.biometric.libfprint import Capture, LibfprintSensor, NbisMinutia, to_probe, to_record


@pytest.mark.parametrize(
    ("direction", "degrees"),
    # NBIS: 0 points up, 11.25-degree units clockwise; ISO: 0 points right, counter-clockwise
    [(0, 90), (8, 0), (16, 270), (24, 180), (4, 45), (2, 67), (31, 101)],
)
def test_nbis_directions_become_iso_angles(direction: int, degrees: int) -> None:
    assert NbisMinutia(0, 0, direction, 0.5, 1).iso_degrees == degrees


def _capture(count: int, reliability: float = 0.5) -> Capture:
    minutiae = tuple(NbisMinutia(20 + 9 * i, 30 + 7 * i, i % 32, reliability, i % 2) for i in range(count))
    return Capture(300, 400, minutiae, 0.0)


def test_record_keeps_pixels_and_the_sensor_resolution() -> None:
    rec = to_record(_capture(3))
    assert (rec.width, rec.height, rec.x_resolution, rec.y_resolution) == (300, 400, 197, 197)
    first = rec.views[0].minutiae[0]
    assert (first.x, first.y, first.kind, first.quality) == (20, 30, MinutiaType.BIFURCATION, 50)
    assert first.angle == 64  # 90 degrees in 360/256 steps
    assert rec.views[0].minutiae[1].kind == MinutiaType.RIDGE_ENDING


def test_unreliable_minutiae_are_dropped() -> None:
    assert to_record(_capture(5, reliability=0.05)).views[0].minutiae == ()


def test_probe_is_in_card_units() -> None:
    probe = compact.decode(to_probe(_capture(20)))
    assert len(probe) == 20
    assert (probe[0].x, probe[0].y) == (10, 15)  # 20, 30 pixels at 500 ppi = 1.0, 1.5 mm
    assert probe[0].angle == 16  # 90 degrees in 360/64 steps


def test_too_few_minutiae_is_place_finger_again() -> None:
    with pytest.raises(PlaceFingerAgain, match="place your finger again"):
        to_probe(_capture(11))


def test_generated_images_are_deterministic_and_sized_to_the_window() -> None:
    first, again = ridges.impression(5, 1), ridges.impression(5, 1)
    assert first == again
    assert ridges.impression(5, 2) != first
    assert (first.width, first.height) == (292, 372)  # the default 15 x 19 mm window at 500 ppi
    assert abs(first.ppmm - 500 / 25.4) < 1e-9


def test_the_agent_builds_the_configured_libfprint_sensor(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[sensor]\nkind = "libfprint"\ndriver = "elan"\nppi = 508\n')
    sensor = make_sensor(load(path).sensor)
    assert isinstance(sensor, LibfprintSensor)
    assert (sensor.driver, sensor.ppi) == ("elan", 508)
