"""The emulated card's applet, in process: exact status words of the card profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdbox.smartcard import tlv
from sdbox.smartcard.apdu import Apdu
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import ProfileError, issue_card, load_profile, parse_profile
from sdbox.smartcard.emulator.state import CardState, CardStateError
from sdbox.smartcard.profile import PIV_AID, KeyRef, ObjectTag, pad_pin
from sdbox.trust.pki import Pki


class Direct:
    """An in-process connection to an applet (unit tests only)."""

    def __init__(self, applet: PivApplet) -> None:
        self.applet = applet

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        answer = self.applet.process(apdu)
        return answer[:-2], int.from_bytes(answer[-2:], "big")

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def applet(pki: Pki, tmp_path: Path) -> PivApplet:
    return PivApplet(issue_card(load_profile("demo"), pki, state_path=tmp_path / "card.json"))


def sw(applet: PivApplet, hex_apdu: str) -> str:
    return applet.process(bytes.fromhex(hex_apdu))[-2:].hex().upper()


def test_commands_before_select_and_foreign_aids(applet: PivApplet) -> None:
    assert sw(applet, "00CB3FFF055C035FC102") == "6985"
    assert sw(applet, "00A4040007A0000005272101") == "6A82"  # a foreign AID, as other drivers probe
    assert sw(applet, "00A4040005A000000308") == "9000"  # partial PIV AID


def test_select_answers_the_application_property_template(applet: PivApplet) -> None:
    answer = applet.process(bytes.fromhex("00A40400") + bytes((len(PIV_AID),)) + PIV_AID + b"\x00")
    apt = tlv.parse_one(answer[:-2], 0x61)
    assert tlv.parse_dict(apt.value)[0x4F] == bytes.fromhex("000010000100")
    assert answer[-2:] == b"\x90\x00"


def test_status_words_of_the_profile(applet: PivApplet) -> None:
    sw(applet, "00A4040005A000000308")
    assert sw(applet, "00CB3FFF055C035FC1FF") == "6A82"
    assert sw(applet, "00CB3FFF055C035FFF41") == "6982"  # references are write-only
    assert sw(applet, "00200080") == "63C3"
    assert sw(applet, "002000960401020304") == "6A80"  # 3N+1 bytes
    assert applet.state.fingers[KeyRef.FINGER_PRIMARY].tries == 5  # counter untouched
    assert sw(applet, "002000960601") == "6700"  # Lc says 6, no data: malformed APDU
    assert sw(applet, "00FF0000") == "6D00"
    assert sw(applet, "80CB3FFF00") == "6E00"
    assert sw(applet, "002C0096") == "6A86"  # RESET RETRY COUNTER: PIN only


def test_pin_counter_and_puk_reset(applet: PivApplet) -> None:
    sw(applet, "00A4040005A000000308")
    wrong = "0020008008" + pad_pin("000000").hex()
    assert [sw(applet, wrong) for _ in range(3)] == ["63C2", "63C1", "63C0"]
    assert sw(applet, "0020008008" + pad_pin("123456").hex()) == "6983"
    assert sw(applet, "002C008010" + pad_pin("12345678").hex() + pad_pin("654321").hex()) == "9000"
    assert sw(applet, "0020008008" + pad_pin("654321").hex()) == "9000"
    assert sw(applet, "00200080") == "9000"  # verified in this session
    applet.power_cycle()
    sw(applet, "00A4040005A000000308")
    assert sw(applet, "00200080") == "63C3"  # power-off clears the security status


def test_long_responses_are_chained_and_extended_answers_are_whole(applet: PivApplet) -> None:
    session = BioSsoSession(Direct(applet), extended=False)
    session.piv.select()
    directory = session.piv.get_object(ObjectTag.DIRECTORY)
    assert len(directory) > 256
    assert session.stack.stats.by_ins.get("GET RESPONSE", 0) >= len(directory) // 256
    extended = BioSsoSession(Direct(applet), extended=True)
    extended.piv.select()
    assert extended.piv.get_object(ObjectTag.DIRECTORY) == directory
    assert extended.stack.stats.apdus == 2


def test_command_chain_must_continue_with_the_same_command(applet: PivApplet) -> None:
    sw(applet, "00A4040005A000000308")
    assert sw(applet, "10DB3FFF0101") == "9000"
    assert sw(applet, "00200080") == "6883"


def test_picker_listing_is_four_apdus(applet: PivApplet, pki: Pki) -> None:
    session = BioSsoSession(Direct(applet))
    summary = session.read_summary(lambda _signer, _intermediates: None)
    assert summary.directory is not None
    assert [p.id for p in summary.directory.projects] == [
        "census-2021",
        "health-cohort",
        "genomics-lab",
    ]
    # SELECT, CHUID, directory, the finger's counter (which says the card compares it)
    assert session.stack.stats.by_ins == {"SELECT": 1, "GET DATA": 2, "VERIFY": 1}
    assert summary.finger_primary_tries == 5
    assert summary.occ


def test_untrusted_signer_is_reported_with_the_trust_error(applet: PivApplet) -> None:
    from sdbox.errors import SdboxError

    def refuse(_signer: object, _intermediates: object) -> None:
        raise SdboxError("signer not trusted")

    summary = BioSsoSession(Direct(applet)).read_summary(refuse)
    assert summary.directory is None
    assert str(summary.directory_error) == "signer not trusted"


def test_state_round_trips_and_corrupt_files_are_named(applet: PivApplet, tmp_path: Path) -> None:
    path = applet.state.path
    assert path is not None
    again = CardState.load(path)
    assert again.to_json() == applet.state.to_json()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CardStateError, match=r"bad.json is unreadable or not JSON"):
        CardState.load(bad)
    bad.write_text('{"version": 1}')
    with pytest.raises(CardStateError, match=r"bad.json is corrupt"):
        CardState.load(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pin = 12", "'pin' must be str"),
        ('pin = "12"\npuk = "12345678"', "'pin' must be 6 to 8 digits"),
        ('pin = "123456"\npuk = "12345678"\nmanagement_key = "00"', "32 hex digits"),
        ("[[[", "not valid TOML"),
    ],
)
def test_profile_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(text, source="p.toml")


def test_verify_apdu_goes_through_session_helpers(applet: PivApplet) -> None:
    session = BioSsoSession(Direct(applet))
    session.piv.select()
    tries = session.tries_left()
    assert (tries.pin, tries.finger_primary, tries.finger_secondary) == (3, 5, 5)
    data, status = session.stack.send(Apdu(0, 0x20, 0, 0x97))
    assert (data, status) == (b"", 0x63C5)


def _ga(applet: PivApplet, p1: int, body: bytes) -> tuple[bytes, str]:
    data = tlv.tlv(0x7C, body)
    answer = applet.process(bytes((0x00, 0x87, p1, 0x9B, len(data))) + data + b"\x00")
    return answer[:-2], answer[-2:].hex().upper()


def _challenge(applet: PivApplet, p1: int = 0x08) -> bytes:
    answer, status = _ga(applet, p1, tlv.tlv(0x81, b""))
    assert status == "9000"
    return tlv.parse_dict(tlv.parse_one(answer, 0x7C).value)[0x81]


def _generate_sw(applet: PivApplet) -> str:
    return sw(applet, "0047009A05AC03800111")


def test_external_authentication_of_the_management_key(applet: PivApplet) -> None:
    """SP 800-73-4's one-way form: the card's challenge, the host's encryption of it."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    assert sw(applet, "00A4040009A00000030800001000") == "9000"
    key = applet.state.management_key

    def encrypt(block: bytes) -> bytes:
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return enc.update(block) + enc.finalize()

    assert _generate_sw(applet) == "6982"  # not authenticated yet
    first, second = _challenge(applet), _challenge(applet)
    assert len(first) == 16
    assert first != second  # fresh each time; only the last one counts
    assert _ga(applet, 0x08, tlv.tlv(0x82, encrypt(first)))[1] == "6982"
    assert _ga(applet, 0x08, tlv.tlv(0x82, encrypt(second)))[1] == "6985"  # used up by the miss
    challenge = _challenge(applet)
    assert _ga(applet, 0x08, tlv.tlv(0x82, encrypt(challenge))) == (b"", "9000")
    assert _generate_sw(applet) == "9000"


def test_opensc_get_challenge_gives_random_bytes_that_authenticate_nobody(
    applet: PivApplet,
) -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    assert sw(applet, "00A4040009A00000030800001000") == "9000"
    random = _challenge(applet, p1=0x00)  # OpenSC's C_GenerateRandom: 00 87 00 9B 7C 02 81 00
    enc = Cipher(algorithms.AES(applet.state.management_key), modes.ECB()).encryptor()
    assert _ga(applet, 0x08, tlv.tlv(0x82, enc.update(random) + enc.finalize()))[1] == "6985"
    assert _ga(applet, 0x00, tlv.tlv(0x80, b""))[1] == "6A86"  # 00 is not this card's algorithm
    assert _generate_sw(applet) == "6982"
