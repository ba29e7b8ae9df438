"""`sdbox card` and `sdbox emulate card` on the real pcscd: what an engineer sees."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from sdbox.smartcard.emulator.stack import reader_name, wait_for_card
from sdbox.trust.pki import Pki
from tests.integration.conftest import InsertedCard


def sdbox(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sdbox", *args],
        input=stdin,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_readers_lists_the_virtual_reader_with_its_card(demo_card: InsertedCard) -> None:
    out = sdbox("card", "readers")
    assert out.returncode == 0, out.stderr
    assert f"{demo_card.reader}: card present, ATR 3B88" in out.stdout


def test_info_json_lists_the_demo_projects_with_a_verified_directory(
    demo_card: InsertedCard,
) -> None:
    out = sdbox(
        "card", "info", "--reader", demo_card.reader, "--json", "--anchors", str(demo_card.anchors)
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["reader"] == demo_card.reader
    assert doc["directory_verified"] is True
    assert doc["occ"] is True
    assert doc["guid"] == demo_card.state.guid.hex().upper()
    assert doc["tries_left"] == {"pin": 3, "finger_primary": 5, "finger_secondary": 5}
    projects = {p["id"]: p for p in doc["projects"]}
    assert set(projects) == {"census-2021", "health-cohort", "genomics-lab"}
    assert projects["genomics-lab"]["protocol"] == "spice"
    assert projects["census-2021"]["slot"] == "82"
    assert projects["census-2021"]["endpoint"] == "127.0.0.1:33891"
    assert "census-2021" in projects["census-2021"]["certificate"]["subject"]
    assert doc["stats"]["apdus"] <= 6


def test_info_with_foreign_anchors_says_the_directory_is_not_trusted(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    other = Pki.init(tmp_path / "other")
    out = sdbox(
        "card",
        "info",
        "--reader",
        demo_card.reader,
        "--json",
        "--anchors",
        str(other.path / "root.pem"),
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["directory_verified"] is False
    assert doc["projects"] == []
    assert doc["directory_error"]


def test_info_text_names_projects_and_tries(demo_card: InsertedCard) -> None:
    out = sdbox("card", "info", "--reader", demo_card.reader, "--anchors", str(demo_card.anchors))
    assert out.returncode == 0, out.stderr
    assert "Census microdata 2021" in out.stdout
    assert "directory:  signature verified" in out.stdout
    assert "primary finger 5" in out.stdout


def test_verify_pin_from_stdin_and_wrong_pin_counts_down(demo_card: InsertedCard) -> None:
    ok = sdbox("card", "verify", "--reader", demo_card.reader, "--pin", stdin="123456\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "verified"
    bad = sdbox("card", "verify", "--reader", demo_card.reader, "--pin", stdin="000000\n")
    assert bad.returncode == 4
    assert "wrong PIN: 2 attempts left" in bad.stderr
    assert "000000" not in bad.stderr


def test_verify_finger_template(demo_card: InsertedCard, tmp_path: Path) -> None:
    reference = demo_card.state.fingers[0x96].reference
    assert reference is not None
    probe = tmp_path / "probe.bin"
    probe.write_bytes(reference)
    ok = sdbox("card", "verify", "--reader", demo_card.reader, "--finger-template", str(probe))
    assert ok.returncode == 0, ok.stderr
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(bytes(b ^ 0x11 for b in reference))
    bad = sdbox("card", "verify", "--reader", demo_card.reader, "--finger-template", str(wrong))
    assert bad.returncode == 4
    assert "4 attempts left" in bad.stderr
    malformed = tmp_path / "malformed.bin"
    malformed.write_bytes(reference + b"\x01")
    out = sdbox("card", "verify", "--reader", demo_card.reader, "--finger-template", str(malformed))
    assert out.returncode == 4
    assert "not a multiple of 3" in out.stderr  # refused on the box, before the card
    assert demo_card.state.fingers[0x96].tries == 4  # the malformed probe cost nothing


def test_no_card_is_a_clear_error(free_reader: int) -> None:
    assert wait_for_card(reader_name(free_reader), present=False, timeout_s=5)
    out = sdbox("card", "verify", "--reader", reader_name(free_reader), "--pin", stdin="123456\n")
    assert out.returncode == 3
    assert "insert your card" in out.stderr
    assert "Traceback" not in out.stderr


def test_emulate_card_command_inserts_and_removes(
    free_reader: int, pki: Pki, tmp_path: Path
) -> None:
    state = tmp_path / "card.json"
    reader = reader_name(free_reader)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sdbox", "emulate", "card", "--profile", "demo", "--reader-index", str(free_reader),
         "--state", str(state), "--pki", str(pki.path), "--apdu-latency-ms", "1"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert wait_for_card(reader, present=True, timeout_s=30)
        out = sdbox(
            "card",
            "info",
            "--json",
            "--reader",
            reader,
            "--anchors",
            str(pki.path / "root.pem"),
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["directory_verified"] is True
        assert state.exists()
        assert oct(state.stat().st_mode & 0o777) == "0o600"
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert f"inserted in '{reader}'" in err
    assert wait_for_card(reader, present=False, timeout_s=10)
