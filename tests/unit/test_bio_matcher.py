"""The on-card matcher: genuine impressions match, impostors do not, alignment does not matter."""

from __future__ import annotations

import math

import pytest

from sdbox.biometric import compact, matcher, synth
from sdbox.biometric.compact import Minutia


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_genuine_impressions_match_their_reference(seed: int) -> None:
    reference = synth.enrolment_template(seed)
    for number in range(1, 5):
        assert matcher.score(synth.impression(seed, number), reference) >= matcher.THRESHOLD


@pytest.mark.parametrize("seed", [21, 22, 23, 24, 25])
def test_impostors_do_not_match(seed: int) -> None:
    probe = synth.impression(seed, 1)
    for other in range(31, 41):
        assert matcher.score(probe, synth.enrolment_template(other)) < matcher.THRESHOLD


def _moved(template: bytes, degrees: float, dx: int, dy: int) -> bytes:
    # turns the finger clockwise as seen (the image's y axis points down), so its ISO
    # angles (counter-clockwise as seen) decrease
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


@pytest.mark.parametrize(
    ("degrees", "dx", "dy"), [(0, 0, 0), (25, 0, 0), (-30, 0, 0), (0, 15, -12), (18, -10, 8)]
)
def test_rotation_and_translation_do_not_change_the_decision(
    degrees: float, dx: int, dy: int
) -> None:
    reference = synth.enrolment_template(5)
    probe = synth.impression(5, 2)
    moved = _moved(probe, degrees, dx, dy)
    assert matcher.score(moved, reference) >= matcher.THRESHOLD
    assert abs(matcher.score(moved, reference) - matcher.score(probe, reference)) < 0.15


def test_identical_templates_score_one_and_tiny_ones_zero() -> None:
    reference = synth.enrolment_template(7)
    assert matcher.score(reference, reference) == pytest.approx(1.0)
    assert matcher.score(reference[:6], reference) == 0.0


def test_scores_are_deterministic() -> None:
    probe, reference = synth.impression(9, 3), synth.enrolment_template(9)
    assert matcher.score(probe, reference) == matcher.score(bytes(probe), bytes(reference))
