"""The centre's card register and the requests it refuses before any card is touched."""

from __future__ import annotations

import base64
import json
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox._cli import cli
from sdbox.broker.cards import CardManagement, add_card, load_register
from sdbox.centre.protocol import ProtocolError, Refused
from sdbox.config import ConfigError
from sdbox.trust.pki import Pki
from sdbox.trust.store import RevocationStore

GUID = bytes(range(16))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("cards-pki"))


def _holder(pki: Pki) -> x509.Certificate:
    return pki.issue_holder(
        ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="Dr Test"
    )


def _cards(pki: Pki, tmp_path: Path, register: Path) -> CardManagement:
    return CardManagement(
        register=register, directory_pki=pki.path, anchors=[pki.root.cert],
        intermediates=pki.intermediates,
        store=RevocationStore(tmp_path / "crl", build_time=pki.root.cert.not_valid_before_utc),
        window=timedelta(days=30), lifetime_s=60,
    )  # fmt: skip


def test_a_card_is_added_atomically_and_readable_only_by_the_centre(
    pki: Pki, tmp_path: Path
) -> None:
    register = tmp_path / "cards.json"
    holder = _holder(pki)
    add_card(register, GUID, bytes(16), holder)
    add_card(register, bytes(16), bytes(range(32)), holder)
    add_card(register, GUID, bytes([7]) * 24, holder)  # re-issued: its entry is replaced
    assert stat.S_IMODE(register.stat().st_mode) == 0o600
    cards = load_register(register)
    assert set(cards) == {GUID, bytes(16)}
    assert cards[GUID].management_key == bytes([7]) * 24
    assert "management_key" not in repr(cards[GUID])  # never in a log line
    assert not list(tmp_path.glob(".cards.json.*"))  # no temporary left behind


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "cannot be read"),
        ("[]", "JSON object keyed by card GUID"),
        ('{"00": {"management_key": "00"}}', "needs hex"),
        (json.dumps({"00" * 16: {"management_key": "00" * 3, "holder_certificate_sha256": "00" * 32}}),
         "AES key"),
    ],
)  # fmt: skip
def test_a_damaged_register_names_the_file_and_the_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    register = tmp_path / "cards.json"
    register.write_text(content)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_register(register)
    assert str(register) in caught.value.message


def test_an_unknown_card_is_refused_before_anything_else(pki: Pki, tmp_path: Path) -> None:
    register = tmp_path / "cards.json"
    register.write_text("{}")
    cards = _cards(pki, tmp_path, register)
    with pytest.raises(Refused) as refused:
        cards.open({"card_guid": GUID.hex()})
    assert refused.value.code == "unknown_card"
    with pytest.raises(ProtocolError, match="card_guid"):
        cards.open({"card_guid": "zz"})


def test_steps_without_an_open_session_are_refused(pki: Pki, tmp_path: Path) -> None:
    cards = _cards(pki, tmp_path, tmp_path / "none.json")
    b64 = base64.b64encode(bytes(16)).decode()
    for step, body in (
        (cards.authenticate, {"exchange": "nope", "holder_signature": b64, "box_signature": b64}),
        (cards.witness, {"session": "nope", "witness": b64}),
        (cards.response, {"session": "nope", "response": b64}),
        (cards.prove, {"session": "nope", "project": "p", "slot": 0x82, "certificate": b64}),
        (cards.directory, {"session": "nope", "exchange": "x", "proof": b64, "directory": b64}),
    ):
        with pytest.raises(Refused) as refused:
            step(body)
        assert refused.value.code == "exchange"


def test_register_card_from_the_command_line(pki: Pki, tmp_path: Path) -> None:
    register = tmp_path / "cards.json"
    config = tmp_path / "broker.toml"
    config.write_text(
        f'tls_certificate = "x"\ntls_key = "x"\nanchors = "x"\nintermediates = "x"\n'
        f'crl_dir = "x"\ncard_register = "{register}"\n'
    )
    holder = tmp_path / "holder.pem"
    holder.write_bytes(_holder(pki).public_bytes(serialization.Encoding.PEM))
    key = tmp_path / "management.key"
    key.write_text(bytes(range(16)).hex())
    result = CliRunner().invoke(
        cli,
        ["broker", "register-card", "--config", str(config), "--guid", GUID.hex(),
         "--holder-certificate", str(holder), "--management-key-file", str(key)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_register(register)[GUID].management_key == bytes(range(16))
