"""Another PIV client, Yubico's yubico-piv-tool, reads and uses the emulated card.

It was written for YubiKeys but speaks plain SP 800-73-4 for everything
used here: the status dump (CHUID, CCC, certificates), PIN verification,
a 9A signature and an ECDH with a project's retired key-management slot.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sdbox.smartcard.profile import certificate_object, decode_certificate
from tests.integration.conftest import InsertedCard

pytestmark = pytest.mark.skipif(
    shutil.which("yubico-piv-tool") is None, reason="yubico-piv-tool missing (make setup, card tier)"
)
# The demo profile's published test PIN. yubico-piv-tool takes it only as an
# argument or from a terminal; no secret of a real card goes this way.
DEMO_PIN = "123456"


def piv_tool(card: InsertedCard, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["yubico-piv-tool", "--reader", card.reader, *args],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _pem(card: InsertedCard, slot: int, path: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = decode_certificate(card.state.objects[certificate_object(slot)])
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    return path


def test_status_shows_the_mandatory_objects_and_every_certificate(demo_card: InsertedCard) -> None:
    out = piv_tool(demo_card, "--action", "status")
    assert out.returncode == 0, out.stderr
    lines = {line.split(":", 1)[0].strip(): line for line in out.stdout.splitlines()}
    assert "No data" not in lines["CHUID"]
    assert "No data" not in lines["CCC"]  # the Card Capability Container is mandatory
    for slot in ("9a", "82", "83", "84"):
        assert f"Slot {slot}" in lines, out.stdout
    assert "Dr Ada Lovelace (genomics-lab)" in out.stdout
    assert "ECCP384" in out.stdout  # genomics-lab's key


def test_signature_and_ecdh_through_yubico_piv_tool(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    holder = _pem(demo_card, 0x9A, tmp_path / "9a.pem")
    signed = piv_tool(demo_card, "-a", "verify-pin", "-P", DEMO_PIN,
                      "-a", "test-signature", "-s", "9a", "-i", str(holder))  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert "Successful ECDSA verification" in signed.stdout + signed.stderr
    census = _pem(demo_card, 0x82, tmp_path / "82.pem")
    derived = piv_tool(demo_card, "-a", "verify-pin", "-P", DEMO_PIN,
                       "-a", "test-decipher", "-s", "82", "-i", str(census))  # fmt: skip
    assert derived.returncode == 0, derived.stderr
    assert "Successfully performed ECDH exchange" in derived.stdout + derived.stderr
    # the holder key does not verify under a project's certificate: the check is real
    wrong = piv_tool(demo_card, "-a", "verify-pin", "-P", DEMO_PIN,
                     "-a", "test-signature", "-s", "9a", "-i", str(census))  # fmt: skip
    assert "Failed ECDSA verification" in wrong.stdout + wrong.stderr


def test_wrong_pin_counts_down_and_is_refused(demo_card: InsertedCard) -> None:
    out = piv_tool(demo_card, "-a", "verify-pin", "-P", "654321")
    assert out.returncode != 0
    assert "tries left" in (out.stdout + out.stderr).lower()
    status = piv_tool(demo_card, "-a", "status")
    assert "PIN tries left:\t2" in status.stdout
