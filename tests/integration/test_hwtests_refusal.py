"""`sdbox hwtest` refuses a card or a bench it was not told about, before any scenario runs."""

from __future__ import annotations

import subprocess
import sys

from hwtests.bench import EMULATED_GUID_SEED
from sdbox.smartcard.emulator.profiles import guid_for


def hwtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", "hwtest", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_another_card_than_the_named_one_is_refused() -> None:
    # the suite starts (or reuses) pcscd and reserves a vpcd reader itself
    done = hwtest("--card-serial", "00112233445566778899aabbccddeeff")
    assert done.returncode == 3, done.stdout[-2000:]
    assert "refusing to touch the card" in done.stdout
    assert guid_for(EMULATED_GUID_SEED).hex() in done.stdout  # says which card it found
    assert " passed" not in done.stdout  # no scenario ran


def test_a_real_reader_without_a_card_serial_is_refused() -> None:
    done = hwtest("--target", "pcsc:Virtual PCD 00 00")
    assert done.returncode == 4
    assert "needs --card-serial" in done.stderr + done.stdout


def test_the_named_card_is_accepted_and_scenarios_report_their_timings() -> None:
    done = hwtest("--card-serial", guid_for(EMULATED_GUID_SEED).hex(), "--", "-k", "reader or listing")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "sdbox hwtests: emulated" in done.stdout
    assert "listing time (4-APDU listing)" in done.stdout
    assert "apdus=4" in done.stdout
