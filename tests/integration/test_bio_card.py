"""Enrolment and on-card comparison through the real pcscd: what the holder and the station see."""

from __future__ import annotations

import subprocess
import sys

from sdbox.biometric import synth
from sdbox.biometric.sensor import EmulatedSensor
from tests.integration.conftest import InsertedCard

DEMO_MANAGEMENT_KEY = "00112233445566778899aabbccddeeff\n"  # the demo profile's published test key


def sdbox(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fresh_impressions_match_on_the_card(demo_card: InsertedCard) -> None:
    for _ in range(3):
        out = sdbox(
            "card",
            "verify",
            "--reader",
            demo_card.reader,
            "--sensor",
            "emulated",
            "--identity-seed",
            "1001",
        )
        assert out.returncode == 0, out.stderr
    assert demo_card.state.fingers[0x96].tries == 5


def test_another_finger_blocks_and_re_enrolment_unblocks(demo_card: InsertedCard) -> None:
    for left in (4, 3, 2, 1):
        out = sdbox(
            "card",
            "verify",
            "--reader",
            demo_card.reader,
            "--sensor",
            "emulated",
            "--identity-seed",
            "4242",
        )
        assert out.returncode == 4
        assert f"{left} attempt" in out.stderr
    blocked = sdbox(
        "card",
        "verify",
        "--reader",
        demo_card.reader,
        "--sensor",
        "emulated",
        "--identity-seed",
        "4242",
    )
    assert "blocked" in blocked.stderr
    still = sdbox(
        "card",
        "verify",
        "--reader",
        demo_card.reader,
        "--sensor",
        "emulated",
        "--identity-seed",
        "1001",
    )
    assert still.returncode == 4  # blocked is blocked, even for the right finger
    wrong_key = sdbox(
        "bio",
        "enrol",
        "--reader",
        demo_card.reader,
        "--identity-seed",
        "1001",
        stdin="00" * 16 + "\n",
    )
    assert wrong_key.returncode != 0
    enrol = sdbox(
        "bio",
        "enrol",
        "--reader",
        demo_card.reader,
        "--identity-seed",
        "1001",
        stdin=DEMO_MANAGEMENT_KEY,
    )
    assert enrol.returncode == 0, enrol.stderr
    assert "5 tries" in enrol.stdout
    again = sdbox(
        "card",
        "verify",
        "--reader",
        demo_card.reader,
        "--sensor",
        "emulated",
        "--identity-seed",
        "1001",
    )
    assert again.returncode == 0, again.stderr


def test_enrolling_another_identity_changes_who_matches(demo_card: InsertedCard) -> None:
    enrol = sdbox(
        "bio",
        "enrol",
        "--reader",
        demo_card.reader,
        "--identity-seed",
        "77",
        stdin=DEMO_MANAGEMENT_KEY,
    )
    assert enrol.returncode == 0, enrol.stderr
    assert demo_card.state.fingers[0x96].reference == synth.enrolment_template(77)
    assert (
        sdbox(
            "card",
            "verify",
            "--reader",
            demo_card.reader,
            "--sensor",
            "emulated",
            "--identity-seed",
            "77",
        ).returncode
        == 0
    )
    assert (
        sdbox(
            "card",
            "verify",
            "--reader",
            demo_card.reader,
            "--sensor",
            "emulated",
            "--identity-seed",
            "1001",
        ).returncode
        == 4
    )


def test_emulated_sensor_gives_fresh_impressions() -> None:
    import asyncio

    sensor = EmulatedSensor(1001)
    first, second = asyncio.run(sensor.capture()), asyncio.run(sensor.capture())
    assert first != second
