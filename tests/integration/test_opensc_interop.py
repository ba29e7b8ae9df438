"""Real PIV tooling reads and uses the emulated BIO SSO card (OpenSC, python-pkcs11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.smartcard.emulator.stack import VPCD_READERS, reader_name
from sdbox.smartcard.errors import VerificationError
from sdbox.smartcard.pkcs11 import OPENSC_MODULE
from sdbox.smartcard.profile import ObjectTag, certificate_object, decode_certificate
from tests.integration.conftest import InsertedCard

DEMO_PIN = "123456"  # the demo profile's published test PIN


def pkcs11_tool(
    *args: str, card: InsertedCard, pin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """pkcs11-tool on OpenSC, seeing only ``card``'s reader.

    OpenSC enumerates every reader; another run's card held exclusively in
    the other vpcd reader would fail the slot listing (CKR_DEVICE_ERROR), so
    the other readers are ignored through a private OpenSC configuration.
    """
    others = [reader_name(i) for i in range(VPCD_READERS) if reader_name(i) != card.reader]
    conf = card.state.path.parent / "opensc.conf" if card.state.path else Path("/tmp/opensc.conf")
    ignored = ", ".join(f'"{r}"' for r in others)
    conf.write_text(f"app default {{\n  ignored_readers = {ignored};\n}}\n")
    env = dict(os.environ, OPENSC_CONF=str(conf))
    extra: list[str] = []
    if pin is not None:  # through the environment, never on the command line
        env["SDBOX_TEST_PIN"] = pin
        extra = ["--login", "--pin", "env:SDBOX_TEST_PIN"]
    return subprocess.run(
        ["pkcs11-tool", "--module", str(OPENSC_MODULE), *extra, *args],
        check=False, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def _cert(card: InsertedCard, slot: int) -> x509.Certificate:
    return x509.load_der_x509_certificate(
        decode_certificate(card.state.objects[certificate_object(slot)])
    )


def test_opensc_tool_lists_the_reader_with_a_card(demo_card: InsertedCard) -> None:
    out = subprocess.run(
        ["opensc-tool", "--list-readers"], check=False, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if demo_card.reader in line)
    assert "Yes" in line


def test_pkcs11_tool_lists_holder_and_project_certificates(demo_card: InsertedCard) -> None:
    out = pkcs11_tool("--list-objects", "--type", "cert", card=demo_card)
    assert out.returncode == 0, out.stderr
    assert "Certificate for PIV Authentication" in out.stdout
    assert "subject:    DN: O=sdbox, CN=Dr Ada Lovelace" in out.stdout
    for project in ("census-2021", "health-cohort", "genomics-lab"):
        assert f"CN=Dr Ada Lovelace ({project})" in out.stdout


def test_pkcs11_tool_signature_verifies_with_the_holder_certificate(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    message = tmp_path / "challenge.bin"
    message.write_bytes(b"a fresh challenge from the broker")
    signature = tmp_path / "sig.der"
    out = pkcs11_tool(
        "--sign", "--id", "01", "-m", "ECDSA-SHA256", "--signature-format", "openssl",
        "-i", str(message), "-o", str(signature), card=demo_card, pin=DEMO_PIN,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    key = _cert(demo_card, 0x9A).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(signature.read_bytes(), message.read_bytes(), ec.ECDSA(hashes.SHA256()))


def test_pkcs11_tool_derive_matches_ecdh_with_the_project_certificate(
    demo_card: InsertedCard, tmp_path: Path
) -> None:
    project_key = _cert(demo_card, 0x83).public_key()  # health-cohort, P-256
    assert isinstance(project_key, ec.EllipticCurvePublicKey)
    ephemeral = ec.generate_private_key(project_key.curve)
    peer = tmp_path / "peer.der"
    peer.write_bytes(
        ephemeral.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    shared = tmp_path / "shared.bin"
    out = pkcs11_tool(
        "--derive",
        "--id",
        "06",
        "-m",
        "ECDH1-DERIVE",
        "-i",
        str(peer),
        "-o",
        str(shared),
        card=demo_card,
        pin=DEMO_PIN,
    )
    assert out.returncode == 0, out.stderr
    assert shared.read_bytes() == ephemeral.exchange(ec.ECDH(), project_key)


# python-pkcs11 runs in a child process: OpenSC's module, once loaded, stays
# in the process and keeps connections to every card it has seen, so a later
# test's exclusive connection (the agent's, a renewal's) would meet a sharing
# violation in this pytest process.
_CHILD = """
import os, sys
from sdbox.smartcard.pkcs11 import Pkcs11Card
from sdbox.errors import SdboxError
card = Pkcs11Card(reader=os.environ["SDBOX_TEST_READER"])
try:
    if sys.argv[1] == "sign":
        from cryptography.hazmat.primitives import serialization
        print(card.info.reader)
        print(card.holder_certificate().public_bytes(serialization.Encoding.DER).hex())
        print(card.sign(b"renewal request", os.environ["SDBOX_TEST_PIN"]).hex())
    else:
        card.sign(b"x", os.environ["SDBOX_TEST_PIN"])
except SdboxError as exc:
    print(type(exc).__name__, exc.message)
"""


def _python_pkcs11(card: InsertedCard, action: str, pin: str) -> list[str]:
    env = dict(os.environ, SDBOX_TEST_READER=card.reader, SDBOX_TEST_PIN=pin)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, action],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_python_pkcs11_signs_with_the_holder_key(demo_card: InsertedCard) -> None:
    reader, cert_hex, signature_hex = _python_pkcs11(demo_card, "sign", DEMO_PIN)
    assert reader == demo_card.reader
    cert = x509.load_der_x509_certificate(bytes.fromhex(cert_hex))
    assert cert == _cert(demo_card, 0x9A)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(bytes.fromhex(signature_hex), b"renewal request", ec.ECDSA(hashes.SHA256()))


def test_python_pkcs11_wrong_pin_is_a_verification_error(demo_card: InsertedCard) -> None:
    (outcome,) = _python_pkcs11(demo_card, "wrong", "999999")
    assert outcome.startswith(VerificationError.__name__)
    assert "wrong PIN" in outcome
    assert demo_card.state.pin.tries == 2
    assert ObjectTag.DIRECTORY in demo_card.state.objects


def test_pkcs11_random_bytes_come_from_the_card(demo_card: InsertedCard, tmp_path: Path) -> None:
    """C_GenerateRandom: OpenSC asks the card for a 9B challenge (and never answers it)."""
    outputs = []
    for name in ("first", "second"):
        out = tmp_path / name
        done = pkcs11_tool("--generate-random", "16", "--output-file", str(out), card=demo_card)
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_bytes())
    assert [len(o) for o in outputs] == [16, 16]
    assert outputs[0] != outputs[1]
