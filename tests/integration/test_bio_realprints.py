"""Real fingerprints (FVC2002 B sets) through the box's capture path, the quality gate and the card.

The images stay in ``../shared/data/fvc2002`` (their terms forbid copying them into the
repository); every test here skips, saying why, where that folder is absent.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sdbox.biometric import compact, extract, images, matcher, quality, realprints
from sdbox.biometric.errors import ImageError
from sdbox.biometric.libfprint import LibfprintSensor
from sdbox.biometric.quality import Advice, PoorCapture
from sdbox.biometric.ridges import GreyImage
from tests.integration.conftest import InsertedCard
from tests.integration.test_bio_card import DEMO_MANAGEMENT_KEY
from tests.integration.test_bio_libfprint import (
    DRIVER,
    Finger,
    enrol,
    finger,
    sdbox,
    socket_path,
    verify,
)

__all__ = ["finger", "socket_path"]  # fixtures of the libfprint capture path's tests

_missing = realprints.missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")


def real(set_name: str, finger_number: int, impression: int) -> GreyImage:
    """One FVC2002 image, read and checked as the box reads an image file."""
    path = realprints.data_dir() / set_name / f"{finger_number}_{impression}.png"
    return images.load(path, realprints.SETS[set_name])


def partial(image: GreyImage, keep_mm: float) -> GreyImage:
    """The same image with only a ``keep_mm`` square of the finger on the sensor, at its centre."""
    grey = np.full((image.height, image.width), 255, dtype=np.uint8)
    whole = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width)
    keep = round(keep_mm * image.ppmm)
    top, left = (image.height - keep) // 2, (image.width - keep) // 2
    grey[top : top + keep, left : left + keep] = whole[top : top + keep, left : left + keep]
    return GreyImage(image.width, image.height, grey.tobytes(), image.ppmm)


def smudged(image: GreyImage) -> GreyImage:
    """The same finger seen through a smear: ridges averaged away over about 1 mm, grease noise."""
    grey = np.frombuffer(image.pixels, dtype=np.uint8).reshape(image.height, image.width)
    blurred = grey.astype(np.float64)
    for axis in (0, 1):
        for _ in range(4):
            blurred = (np.roll(blurred, 3, axis) + blurred + np.roll(blurred, -3, axis)) / 3
    noise = np.random.default_rng(7).normal(0, 30, blurred.shape)
    out = np.clip(blurred + noise, 0, 255).astype(np.uint8)
    return GreyImage(image.width, image.height, out.tobytes(), image.ppmm)


def test_every_image_of_the_sets_reads_and_the_pipeline_makes_a_card_template() -> None:
    made = {name: realprints.templates(name) for name in realprints.SETS}
    for name, templates in made.items():
        assert len(templates) == 80, name
        usable = [t for t in templates.values() if t is not None]
        assert len(usable) >= 72, name  # a few captures are too poor for 12 minutiae
        for template in usable:
            minutiae = compact.decode(template)
            assert 12 <= len(minutiae) <= 60


def test_file_extraction_is_the_capture_paths(finger: Finger) -> None:
    """An image file and the same image captured by libfprint give the same card template."""
    image = real("DB1_B", 101, 1)
    from_file = extract.template(image, 500)
    finger.place(image)
    captured = asyncio.run(LibfprintSensor(DRIVER).capture())
    assert captured == from_file


def test_genuine_real_prints_match_and_other_fingers_do_not() -> None:
    reference = extract.template(real("DB1_B", 102, 2), 500)
    assert matcher.score(extract.template(real("DB1_B", 102, 6), 500), reference) >= matcher.THRESHOLD
    assert matcher.score(extract.template(real("DB1_B", 103, 6), 500), reference) < matcher.THRESHOLD


@pytest.mark.parametrize(
    ("make", "advice"),
    [
        (lambda: real("DB3_B", 107, 7), Advice.COVER_SENSOR),  # a real partial capture
        (lambda: partial(real("DB1_B", 102, 2), 6.0), Advice.COVER_SENSOR),
        (lambda: real("DB3_B", 110, 3), Advice.CLEAN_SENSOR),  # a real smeared capture
        (lambda: smudged(real("DB1_B", 102, 2)), Advice.CLEAN_SENSOR),
    ],
)
def test_poor_real_captures_are_refused_with_what_to_do(
    make: object, advice: Advice, finger: Finger
) -> None:
    image = make()  # type: ignore[operator]
    with pytest.raises(PoorCapture) as refused:
        quality.gate(image)
    assert refused.value.advice == advice
    finger.place(image)  # the box's own path refuses it too, before any template exists
    with pytest.raises(PoorCapture) as captured:
        asyncio.run(LibfprintSensor(DRIVER).capture())
    assert captured.value.advice == advice


def test_a_poor_real_capture_never_reaches_the_card(demo_card: InsertedCard, finger: Finger) -> None:
    enrolled = enrol(demo_card, finger, real("DB1_B", 102, 2))
    assert enrolled.returncode == 0, enrolled.stderr
    assert demo_card.state.fingers[0x96].tries == 5

    poor = verify(demo_card, finger, partial(real("DB1_B", 102, 6), 6.0))
    assert poor.returncode == 4
    assert "place your finger again" in poor.stderr
    assert "covered too little of the sensor" in poor.stderr
    assert demo_card.state.fingers[0x96].tries == 5  # no try spent: VERIFY was never sent

    impostor = verify(demo_card, finger, real("DB1_B", 103, 6))
    assert impostor.returncode == 4
    assert demo_card.state.fingers[0x96].tries == 4  # a good capture of another finger does cost one

    genuine = verify(demo_card, finger, real("DB1_B", 102, 6))
    assert genuine.returncode == 0, genuine.stderr
    assert demo_card.state.fingers[0x96].tries == 5


def test_images_a_sensor_does_not_make_are_refused_naming_the_problem(tmp_path: Path) -> None:
    image = real("DB3_B", 101, 1)
    with pytest.raises(ImageError, match=r"width 300 px is 38\.1 mm at 200 ppi"):
        images.check(GreyImage(image.width, image.height, image.pixels, 200 / 25.4))
    blank = GreyImage(image.width, image.height, bytes([200]) * len(image.pixels), image.ppmm)
    with pytest.raises(ImageError, match="blank"):
        images.check(blank)


def station(card: InsertedCard, *args: str) -> subprocess.CompletedProcess[str]:
    """`sdbox bio enrol` at the enrolment station, the management key on stdin."""
    return sdbox("bio", "enrol", "--reader", card.reader, *args, stdin=DEMO_MANAGEMENT_KEY)


def fvc(set_name: str, finger_number: int, impression: int) -> str:
    return str(realprints.data_dir() / set_name / f"{finger_number}_{impression}.png")


def test_enrolment_keeps_the_most_consistent_of_several_good_captures(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    poor = tmp_path / "poor.pgm"
    image = partial(real("DB1_B", 102, 1), 6.0)
    poor.write_bytes(b"P5 %d %d 255\n" % (image.width, image.height) + image.pixels)
    images_given = [str(poor), fvc("DB1_B", 102, 1), fvc("DB1_B", 102, 2), fvc("DB1_B", 102, 3)]
    enrolled = station(demo_card, *(arg for path in images_given for arg in ("--image", path)))
    assert enrolled.returncode == 0, enrolled.stderr
    assert "covered too little of the sensor" in enrolled.stderr  # the poor one was asked again
    assert "kept capture 2 of 3" in enrolled.stderr
    reference = demo_card.state.fingers[0x96].reference
    assert reference == extract.template(real("DB1_B", 102, 2), 500)


def test_enrolment_of_captures_that_disagree_is_refused_and_nothing_is_written(
    demo_card: InsertedCard,
) -> None:
    before = demo_card.state.fingers[0x96].reference
    mixed = [fvc("DB1_B", 102, 1), fvc("DB1_B", 102, 2), fvc("DB1_B", 104, 1)]
    refused = station(demo_card, *(arg for path in mixed for arg in ("--image", path)))
    assert refused.returncode == 4
    assert "captures 1 and 3 do not match each other" in refused.stderr
    assert demo_card.state.fingers[0x96].reference == before


def test_enrolment_with_no_finger_or_no_sensor_writes_nothing(
    demo_card: InsertedCard, socket_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = demo_card.state.fingers[0x96].reference
    timed_out = station(demo_card, "--sensor", "libfprint", "--sensor-driver", DRIVER,
                        "--capture-timeout", "2")  # fmt: skip
    assert timed_out.returncode == 4
    assert "no finger on the sensor within 2 s: nothing was enrolled" in timed_out.stderr
    monkeypatch.delenv("FP_VIRTUAL_IMAGE")  # the sensor is gone
    unplugged = station(demo_card, "--sensor", "libfprint", "--sensor-driver", DRIVER)
    assert unplugged.returncode == 4
    assert "no fingerprint sensor" in unplugged.stderr
    assert demo_card.state.fingers[0x96].reference == before
