"""Enrolment quality at the enrolment station: several good captures, consistent, the best kept.

A reference lives on the card for years and every verification is compared
with it, so the station is stricter than the box:

1. **Several captures** (:attr:`EnrolmentPolicy.captures`, 3 by default), each
   through the capture quality gate (:mod:`sdbox.biometric.quality`): a poor
   capture is refused with what to do, and does not count. After
   :attr:`EnrolmentPolicy.max_attempts` captures without enough good ones,
   enrolment is refused.
2. **Consistent with one another**: every pair of captures is compared with
   the card's matcher, both ways; the lower score of each pair must reach
   :data:`sdbox.biometric.matcher.THRESHOLD`. Two captures that do not match
   each other are two fingers, or one finger placed so differently that no
   single reference would serve: refused, start again.
3. **The best kept**: the capture that agrees most with the others (the
   highest sum of scores, "MDIST" template selection, Uludag, Ross and Jain
   2004): the most typical placement, not an outlier, becomes the
   reference; more minutiae break a tie.

Nothing here writes to a card: the caller writes the reference only when
:func:`enrol` returns, so a capture that times out, a sensor unplugged or a
refusal leaves the card as it was.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass

from sdbox.biometric import matcher
from sdbox.biometric.errors import BiometricError, PlaceFingerAgain
from sdbox.biometric.sensor import Sensor


class EnrolmentRefused(BiometricError):
    """The finger could not be enrolled; the message says why and what to do."""


@dataclass(frozen=True)
class EnrolmentPolicy:
    """How the station enrols a finger."""

    captures: int = 3
    max_attempts: int = 8
    capture_timeout_s: float = 30.0
    consistency: float = matcher.THRESHOLD


@dataclass(frozen=True)
class Enrolled:
    """The reference chosen and how the captures compared."""

    reference: bytes
    chosen: int  # index of the kept capture
    captures: tuple[bytes, ...]
    agreement: tuple[float, ...]  # per capture, the sum of its (two-way minimum) scores


async def enrol(
    sensor: Sensor,
    policy: EnrolmentPolicy = EnrolmentPolicy(),
    prompt: Callable[[str], None] = lambda _text: None,
) -> Enrolled:
    """Capture, check and choose (see the module docstring); raises :class:`EnrolmentRefused`."""
    captures: list[bytes] = []
    attempts = 0
    while len(captures) < policy.captures:
        if attempts == policy.max_attempts:
            raise EnrolmentRefused(
                f"only {len(captures)} good captures of {policy.captures} in {attempts} attempts: "
                "clean the sensor, then start again (another finger may enrol better)"
            )
        attempts += 1
        prompt(f"capture {len(captures) + 1} of {policy.captures}: place your finger on the sensor")
        try:
            captured = await asyncio.wait_for(sensor.capture(), policy.capture_timeout_s)
        except TimeoutError as exc:
            raise EnrolmentRefused(
                f"no finger on the sensor within {policy.capture_timeout_s:g} s: nothing was enrolled"
            ) from exc
        except PlaceFingerAgain as exc:
            prompt(exc.message)
            continue
        captures.append(captured)
    return choose(captures, policy.consistency)


def choose(captures: list[bytes], consistency: float = matcher.THRESHOLD) -> Enrolled:
    """Cross-compare the captures; the most agreeing one, or a refusal naming the pair that disagrees."""
    count = len(captures)
    agreement = [0.0] * count
    for a, b in itertools.combinations(range(count), 2):
        score = min(matcher.score(captures[a], captures[b]), matcher.score(captures[b], captures[a]))
        if score < consistency:
            raise EnrolmentRefused(
                f"captures {a + 1} and {b + 1} do not match each other (score {score:.3f}, "
                f"{consistency} needed): place the same finger, flat and centred, each time, "
                "and start again"
            )
        agreement[a] += score
        agreement[b] += score
    best = max(range(count), key=lambda i: (agreement[i], len(captures[i])))
    return Enrolled(captures[best], best, tuple(captures), tuple(agreement))
