"""The APDU processor stack, against recorded exchanges: exact bytes on the wire."""

from __future__ import annotations

import pytest

from sdbox.logging import TRACE
from sdbox.smartcard.apdu import Apdu
from sdbox.smartcard.atr import uses_extended_length
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.connection import ApduStack, redacted
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.smartcard.errors import CardProtocolError


class Recorded:
    """A connection that replays recorded answers and records what was sent."""

    def __init__(self, answers: list[tuple[str, int]]) -> None:
        self.answers = [(bytes.fromhex(d), sw) for d, sw in answers]
        self.sent: list[str] = []

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(apdu.hex().upper())
        return self.answers.pop(0)

    def close(self) -> None:
        pass


def test_response_chaining_gathers_61xx_with_get_response() -> None:
    conn = Recorded([("AA" * 256, 0x6110), ("BB" * 16, 0x9000)])
    stack = ApduStack(conn, extended=False)
    data, sw = stack.send(Apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC105"), le=256))
    assert sw == 0x9000
    assert data == b"\xaa" * 256 + b"\xbb" * 16
    assert conn.sent == ["00CB3FFF055C035FC10500", "00C0000010"]
    assert stack.stats.apdus == 2


def test_command_chaining_splits_long_commands_when_short_only() -> None:
    conn = Recorded([("", 0x9000), ("", 0x9000)])
    stack = ApduStack(conn, extended=False)
    stack.send(Apdu(0, 0xDB, 0x3F, 0xFF, b"\x01" * 300))
    assert conn.sent[0].startswith("10DB3FFFFF")
    assert conn.sent[1] == "00DB3FFF2D" + "01" * 45


def test_extended_length_sends_one_command() -> None:
    conn = Recorded([("", 0x9000)])
    ApduStack(conn, extended=True).send(Apdu(0, 0xDB, 0x3F, 0xFF, b"\x02" * 300))
    assert conn.sent == ["00DB3FFF00012C" + "02" * 300]


def test_chain_error_stops_at_the_refusing_part() -> None:
    conn = Recorded([("", 0x6982)])
    _data, sw = ApduStack(conn, extended=False).send(Apdu(0, 0xDB, 0x3F, 0xFF, b"\x01" * 300))
    assert sw == 0x6982
    assert len(conn.sent) == 1


def test_endless_61xx_is_a_protocol_error_not_a_hang() -> None:
    class Endless(Recorded):
        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            return b"\x00", 0x6101

    with pytest.raises(CardProtocolError, match="never ended"):
        ApduStack(Endless([]), extended=False).send(
            Apdu(0, 0xCB, 0x3F, 0xFF, b"\x5c\x01\x7e", le=256)
        )


def test_sensitive_command_data_is_redacted_in_logs() -> None:
    pin_verify = Apdu(0, 0x20, 0, 0x80, b"123456\xff\xff")
    assert "313233" not in redacted(pin_verify)
    assert "8 bytes redacted" in redacted(pin_verify)
    assert "5C" in redacted(Apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C017E")))


def test_a_general_authenticate_answer_is_redacted_also_where_it_is_chained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # an ECDH shared secret in two parts: the 61XX continuation must not show the rest
    secret = bytes(range(0x40, 0x60))
    answer = bytes.fromhex("7C228220") + secret
    conn = Recorded([(answer[:20].hex(), 0x6100 | (len(answer) - 20)), (answer[20:].hex(), 0x9000)])
    caplog.set_level(TRACE, logger="sdbox.smartcard.connection")
    stack = ApduStack(conn, extended=False)
    data, _sw = stack.send(Apdu(0, 0x87, 0x11, 0x82, bytes.fromhex("7C0482008500"), le=256))
    assert data == answer
    assert conn.sent[1] == "00C0000010"  # the continuation really went out
    assert "<20 bytes redacted>" in caplog.text
    assert "<16 bytes redacted>" in caplog.text
    for form in (secret[-16:].hex().upper(), secret[:16].hex().upper()):
        assert form not in caplog.text


# -- the stack follows the card's variant (docs/card-variants.md) ---------------------


def test_t0_wrong_le_is_answered_by_asking_again_with_the_exact_length() -> None:
    # a T=0 card: GET RESPONSE asked for 256 bytes, the card has 0x1D (6C1D)
    conn = Recorded([("", 0x6C1D), ("CC" * 0x1D, 0x9000)])
    data, sw = ApduStack(conn, extended=False).send(Apdu(0, 0xC0, 0, 0, le=256))
    assert (data, sw) == (b"\xcc" * 0x1D, 0x9000)
    assert conn.sent == ["00C0000000", "00C000001D"]


def test_t0_case_4_answer_comes_through_get_response_and_6cxx() -> None:
    # T=0: GET DATA (case 4) answered 61 1D with no data; the GET RESPONSE is exact
    conn = Recorded([("", 0x611D), ("DD" * 0x1D, 0x9000)])
    data, sw = ApduStack(conn, extended=False).send(
        Apdu(0, 0xCB, 0x3F, 0xFF, bytes.fromhex("5C017E"), le=65536)
    )
    assert (data, sw) == (b"\xdd" * 0x1D, 0x9000)
    assert conn.sent == ["00CB3FFF035C017E00", "00C000001D"]


def test_a_6cxx_answer_is_followed_once_not_forever() -> None:
    conn = Recorded([("", 0x6C10), ("", 0x6C08)])
    _data, sw = ApduStack(conn, extended=False).send(Apdu(0, 0xC0, 0, 0, le=256))
    assert sw == 0x6C08
    assert len(conn.sent) == 2


def test_a_chaining_only_card_gets_short_apdus_from_its_atr() -> None:
    directory = "53820140" + "AB" * 320  # a 324-byte object answer, in two parts
    first, rest = directory[: 256 * 2], directory[256 * 2 :]
    conn = Recorded([(first, 0x6144), (rest, 0x9000)])
    session = BioSsoSession.for_atr(conn, build_atr("T=1", extended=False))
    assert session.piv.get_object(0x5FFF40) == b"\xab" * 320
    assert conn.sent == ["00CB3FFF055C035FFF4000", "00C0000044"]


def test_a_card_stating_extended_length_gets_one_extended_apdu() -> None:
    conn = Recorded([("53820140" + "AB" * 320, 0x9000)])
    session = BioSsoSession.for_atr(conn, build_atr("T=1", extended=True))
    assert session.piv.get_object(0x5FFF40) == b"\xab" * 320
    assert conn.sent == ["00CB3FFF00000" + "55C035FFF400000"]


def test_extended_length_follows_what_the_atr_states() -> None:
    # a YubiKey 5's ATR states chaining and extended length (73 C0 21 C0)
    assert uses_extended_length(bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940"))
    assert not uses_extended_length(build_atr("T=0", extended=False))
    # no compact-TLV capabilities (proprietary historical bytes), or no ATR that parses:
    # the assumption sdbox has always made of PIV cards
    assert uses_extended_length(bytes.fromhex("3B021480"))
    assert uses_extended_length(b"\x00")


def test_a_head_read_stops_asking_once_it_has_enough_and_reads_on_on_request() -> None:
    """The directory's head on a chip without extended length: one exchange, the rest on demand."""
    from sdbox.smartcard.piv import PivSession

    value = bytes(range(256)) * 2  # 512 bytes: 53 82 02 00 + value, sent 256 bytes at a time
    wire = bytes.fromhex("53820200") + value
    conn = Recorded([(wire[:256].hex(), 0x6100), (wire[256:512].hex(), 0x6104),
                     (wire[512:].hex(), 0x9000)])  # fmt: skip
    piv = PivSession(ApduStack(conn, extended=False))
    head, size, rest = piv.get_object_head(0x5FFF40, 200)
    assert (head, size) == (value[:252], 512)
    assert conn.sent == ["00CB3FFF055C035FFF4000"]  # GET DATA only: no GET RESPONSE yet
    assert rest() == value
    assert conn.sent[1:] == ["00C0000000", "00C0000004"]


def test_a_head_read_on_a_t0_chip_asks_for_the_first_answer() -> None:
    conn = Recorded([("", 0x6100), (("53 10" + "AB" * 16).replace(" ", ""), 0x9000)])
    from sdbox.smartcard.piv import PivSession

    head, size, _rest = PivSession(ApduStack(conn, extended=False)).get_object_head(0x5FFF40, 200)
    assert (head, size) == (b"\xab" * 16, 16)
    assert conn.sent == ["00CB3FFF055C035FFF4000", "00C0000000"]


def test_a_select_that_needs_no_label_is_not_followed_by_get_response_on_a_t0_chip() -> None:
    """61XX is a successful SELECT: the listing does not fetch the properties it does not use."""
    from sdbox.smartcard.piv import PivSession

    conn = Recorded([("", 0x611C)])
    assert PivSession(ApduStack(conn, extended=False)).select(properties=False).label == ""
    assert conn.sent == ["00A404000BA00000030800001000010000"]


def test_a_select_that_wants_the_label_still_reads_it_on_a_t0_chip() -> None:
    from sdbox.smartcard.piv import PivSession

    apt = "61174F0BA000000308000010000100" + "5008" + "5049562043617264"  # label "PIV Card"
    conn = Recorded([("", 0x6100 | len(bytes.fromhex(apt))), (apt, 0x9000)])
    label = PivSession(ApduStack(conn, extended=False)).select().label
    assert conn.sent[1].startswith("00C00000")  # the GET RESPONSE the label needs
    assert label == "PIV Card"


def test_the_listing_on_a_t0_chip_is_six_apdus_with_the_cached_directory() -> None:
    """SELECT (no GET RESPONSE), CHUID (2), the directory's head (2), the finger's counter."""
    chuid = "531C" + "3410" + "11" * 16 + "3508" + "3230333031323331"
    conn = Recorded([
        ("", 0x611C),  # SELECT: selected, properties left unread
        ("", 0x6100 | len(bytes.fromhex(chuid))), (chuid, 0x9000),  # CHUID
        ("", 0x6A82),  # no directory: the head read stops at once
        ("", 0x63C4),  # the primary finger: 4 tries left
    ])  # fmt: skip
    session = BioSsoSession(conn, extended=False)
    summary = session.read_summary(lambda _s, _i: None, lambda _guid: None)
    assert summary.guid == b"\x11" * 16
    assert (summary.occ, summary.finger_primary_tries) == (True, 4)
    assert conn.sent == [
        "00A404000BA00000030800001000010000",
        "00CB3FFF055C035FC10200", "00C000001E",
        "00CB3FFF055C035FFF4000",
        "00200096",
    ]


@pytest.mark.parametrize("sw", [0x6A88, 0x6A86, 0x6D00])
def test_a_card_without_the_primary_finger_is_listed_as_pin_only(sw: int) -> None:
    """No discovery read: the finger's own status says whether the card compares it."""
    chuid = "531C" + "3410" + "22" * 16 + "3508" + "3230333031323331"
    conn = Recorded([("", 0x9000), (chuid, 0x9000), ("", 0x6A82), ("", sw)])
    summary = BioSsoSession(conn).read_summary(lambda _s, _i: None)
    assert (summary.occ, summary.finger_primary_tries) == (False, None)
    assert len(conn.sent) == 4
