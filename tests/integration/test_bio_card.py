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


def verify(card: InsertedCard, seed: int) -> subprocess.CompletedProcess[str]:
    """`sdbox card verify` with the emulated sensor presenting finger ``seed``."""
    return sdbox("card", "verify", "--reader", card.reader, "--sensor", "emulated", "--identity-seed", str(seed))


def enrol(card: InsertedCard, seed: int, key: str = DEMO_MANAGEMENT_KEY) -> subprocess.CompletedProcess[str]:
    """`sdbox bio enrol` of finger ``seed``, the management key on stdin."""
    return sdbox("bio", "enrol", "--reader", card.reader, "--identity-seed", str(seed), stdin=key)


def test_fresh_impressions_match_on_the_card(demo_card: InsertedCard) -> None:
    for _ in range(3):
        out = verify(demo_card, 1001)
        assert out.returncode == 0, out.stderr
    assert demo_card.state.fingers[0x96].tries == 5


def test_another_finger_blocks_and_re_enrolment_unblocks(demo_card: InsertedCard) -> None:
    for left in (4, 3, 2, 1):
        out = verify(demo_card, 4242)
        assert out.returncode == 4
        assert f"{left} attempt" in out.stderr
    assert "blocked" in verify(demo_card, 4242).stderr
    assert verify(demo_card, 1001).returncode == 4  # blocked is blocked, even for the right finger
    assert enrol(demo_card, 1001, key="00" * 16 + "\n").returncode != 0  # not the management key
    enrolled = enrol(demo_card, 1001)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "5 tries" in enrolled.stdout
    again = verify(demo_card, 1001)
    assert again.returncode == 0, again.stderr


def test_enrolling_another_identity_changes_who_matches(demo_card: InsertedCard) -> None:
    enrolled = enrol(demo_card, 77)
    assert enrolled.returncode == 0, enrolled.stderr
    assert demo_card.state.fingers[0x96].reference == synth.enrolment_template(77)
    assert verify(demo_card, 77).returncode == 0
    assert verify(demo_card, 1001).returncode == 4


def test_emulated_sensor_gives_fresh_impressions() -> None:
    import asyncio

    sensor = EmulatedSensor(1001)
    first, second = asyncio.run(sensor.capture()), asyncio.run(sensor.capture())
    assert first != second


def test_card_refuses_a_malformed_probe_without_spending_a_try(demo_card: InsertedCard) -> None:
    import pytest

    from sdbox.smartcard import pcsc
    from sdbox.smartcard.biosso import BioSsoSession
    from sdbox.smartcard.errors import InvalidTemplate

    conn = pcsc.connect(demo_card.reader)
    try:
        session = BioSsoSession(conn)
        session.piv.select()
        with pytest.raises(InvalidTemplate):
            session.piv.verify_finger(0x96, synth.impression(1001, 1) + b"\x01")  # 3N+1 bytes
        with pytest.raises(InvalidTemplate):
            session.piv.verify_finger(0x96, bytes(3 * 70))  # more minutiae than the BIT allows
    finally:
        conn.close()
    assert demo_card.state.fingers[0x96].tries == 5
