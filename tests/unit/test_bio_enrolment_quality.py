"""Enrolment quality (sdbox.biometric.enrolment) with synthetic fingers and scripted sensors."""

from __future__ import annotations

import asyncio

import pytest

from sdbox.biometric import synth
from sdbox.biometric.enrolment import EnrolmentPolicy, EnrolmentRefused, choose, enrol
from sdbox.biometric.errors import SensorUnavailable
from sdbox.biometric.quality import PoorCapture, Quality

POOR = Quality(clear_mm2=10.0, foreground_mm2=12.0, contrast=60.0, certainty=0.9)


class Scripted:
    """A sensor that gives what it is told, in order: a template, a PoorCapture, or a hang."""

    def __init__(self, *script: bytes | Quality | None) -> None:
        self.script = list(script)

    async def capture(self) -> bytes:
        step = self.script.pop(0)
        if step is None:
            await asyncio.sleep(3600)
        if isinstance(step, Quality):
            raise PoorCapture(step)
        assert isinstance(step, bytes)
        return step


def impressions(seed: int, count: int) -> list[bytes]:
    return [synth.impression(seed, n, synth.ENROLMENT) for n in range(1, count + 1)]


def test_poor_captures_are_asked_again_with_advice_and_the_most_consistent_is_kept() -> None:
    good = impressions(1001, 3)
    prompts: list[str] = []
    enrolled = asyncio.run(enrol(Scripted(good[0], POOR, good[1], good[2]), prompt=prompts.append))
    assert enrolled.captures == tuple(good)
    assert enrolled.reference == good[enrolled.chosen]
    assert enrolled.agreement[enrolled.chosen] == max(enrolled.agreement)
    assert any("covered too little of the sensor" in p for p in prompts)
    assert sum("place your finger on the sensor" in p for p in prompts) == 4


def test_another_finger_among_the_captures_is_refused_naming_it() -> None:
    captures = impressions(1001, 2) + impressions(1002, 1)
    with pytest.raises(EnrolmentRefused, match="captures 1 and 3 do not match each other"):
        choose(captures)


def test_too_many_poor_captures_refuse_enrolment() -> None:
    policy = EnrolmentPolicy(captures=2, max_attempts=3)
    sensor = Scripted(impressions(1001, 1)[0], POOR, POOR)
    with pytest.raises(EnrolmentRefused, match="only 1 good captures of 2 in 3 attempts"):
        asyncio.run(enrol(sensor, policy))


def test_a_capture_that_times_out_refuses_enrolment() -> None:
    policy = EnrolmentPolicy(capture_timeout_s=0.05)
    with pytest.raises(EnrolmentRefused, match=r"no finger on the sensor within 0\.05 s"):
        asyncio.run(enrol(Scripted(impressions(1001, 1)[0], None), policy))


def test_a_sensor_unplugged_between_captures_ends_enrolment_with_nothing_chosen() -> None:
    class Unplugged:
        def __init__(self) -> None:
            self.left = impressions(1001, 1)

        async def capture(self) -> bytes:
            if self.left:
                return self.left.pop()
            raise SensorUnavailable("no fingerprint sensor")

    with pytest.raises(SensorUnavailable):
        asyncio.run(enrol(Unplugged()))
