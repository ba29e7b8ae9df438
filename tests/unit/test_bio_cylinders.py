"""The matcher's cylinders: the same finger's neighbourhoods agree, another finger's do not."""

from __future__ import annotations

import math

import pytest

from sdbox.biometric import compact, cylinders, matcher, synth
from sdbox.biometric.compact import Minutia


def _agreement(probe: bytes, reference: bytes) -> float:
    pp, pa, _ = matcher._prepare(probe)
    rp, ra, _ = matcher._prepare(reference)
    return cylinders.agreement(matcher._cylinders(pp, pa), matcher._cylinders(rp, ra))


def _turned(template: bytes, degrees: float, dx: int, dy: int) -> bytes:
    # the finger turned clockwise as seen: ISO angles (counter-clockwise as seen) decrease
    items = compact.decode(template)
    cx = sum(m.x for m in items) / len(items)
    cy = sum(m.y for m in items) / len(items)
    t = math.radians(degrees)
    out = []
    for m in items:
        x = cx + (m.x - cx) * math.cos(t) - (m.y - cy) * math.sin(t) + dx
        y = cy + (m.x - cx) * math.sin(t) + (m.y - cy) * math.cos(t) + dy
        if 0 <= x <= 255 and 0 <= y <= 255:
            out.append(Minutia(round(x), round(y), m.kind, (m.angle - round(degrees / 5.625)) % 64))
    return compact.encode(out)


def test_a_template_agrees_fully_with_itself() -> None:
    reference = synth.enrolment_template(7)
    assert _agreement(reference, reference) == pytest.approx(1.0)


@pytest.mark.parametrize(("degrees", "dx", "dy"), [(0, 12, -9), (22, 0, 0), (-17, -8, 6)])
def test_turning_and_moving_the_finger_keeps_the_agreement(
    degrees: float, dx: int, dy: int
) -> None:
    reference = synth.enrolment_template(5)
    probe = synth.impression(5, 2)
    before = _agreement(probe, reference)
    # rounding to the card's 0.1 mm and 5.6 degrees moves the cells a little (seen: 0.003)
    assert _agreement(_turned(probe, degrees, dx, dy), reference) == pytest.approx(before, abs=0.03)


def test_the_same_finger_agrees_more_than_other_fingers() -> None:
    genuine, impostor = [], []
    for seed in range(41, 49):
        reference = synth.enrolment_template(seed)
        genuine.append(_agreement(synth.impression(seed, 1), reference))
        impostor.append(_agreement(synth.impression(seed + 100, 1), reference))
    assert min(genuine) > max(impostor)


def test_too_few_minutiae_for_a_print_area_agree_with_nothing() -> None:
    # two minutiae span no area: every cell lies outside the print
    tiny = compact.encode([Minutia(50, 50, compact.MinutiaType.RIDGE_ENDING, 3),
                           Minutia(60, 52, compact.MinutiaType.BIFURCATION, 9)])  # fmt: skip
    assert _agreement(tiny, synth.enrolment_template(7)) == 0.0
