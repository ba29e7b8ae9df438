"""QEMU's VSCard passthrough protocol: the codec, and the bridge against a peer that plays QEMU."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdbox.smartcard.emulator import vscard
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.vscard import (
    CardBridge,
    Decoder,
    ErrorCode,
    Message,
    MsgType,
    VSCardError,
)
from sdbox.trust.pki import Pki

SELECT_PIV = bytes.fromhex("00a4040009a0000003080000100000")


def test_header_is_three_big_endian_words() -> None:
    wire = Message(MsgType.APDU, 0, b"\x00\xa4").encode()
    assert wire == bytes.fromhex("00000007" "00000000" "00000002") + b"\x00\xa4"


def test_init_carries_the_magic_as_bytes_and_version_0_0_2() -> None:
    payload = vscard.init_payload()
    assert payload[:4] == b"VSCD"
    assert struct.unpack(">I", payload[4:8])[0] == 2  # MAKE_VERSION(0, 0, 2)
    assert vscard.parse_init(payload) == (2, (0,))
    assert vscard.version_text(vscard.make_version(1, 2, 3)) == "1.2.3"


def test_a_wrong_magic_or_short_init_is_refused() -> None:
    with pytest.raises(VSCardError, match="magic"):
        vscard.parse_init(b"DCSV" + bytes(8))
    with pytest.raises(VSCardError, match="12 \\+ 4n"):
        vscard.parse_init(b"VSCD\x00\x00")


def test_decoder_reassembles_messages_cut_anywhere() -> None:
    stream = b"".join(
        m.encode()
        for m in (
            Message(MsgType.INIT, vscard.UNDEFINED_READER_ID, vscard.init_payload()),
            Message(MsgType.ERROR, 0, vscard.error_payload(ErrorCode.SUCCESS)),
            Message(MsgType.APDU, 0, SELECT_PIV),
            Message(MsgType.CARD_REMOVE, 0),
        )
    )
    decoder = Decoder()
    seen: list[Message] = []
    for i in range(len(stream)):  # one byte at a time
        seen += decoder.feed(stream[i : i + 1])
    assert [m.type for m in seen] == [MsgType.INIT, MsgType.ERROR, MsgType.APDU, MsgType.CARD_REMOVE]
    assert seen[0].reader_id == vscard.UNDEFINED_READER_ID
    assert vscard.parse_error(seen[1].payload) == ErrorCode.SUCCESS
    assert seen[2].payload == SELECT_PIV
    assert seen[3].payload == b""


def test_an_oversized_payload_is_refused_before_buffering_it() -> None:
    with pytest.raises(VSCardError, match="payload"):
        Decoder().feed(struct.pack(">III", MsgType.APDU, 0, vscard.MAX_PAYLOAD + 1))


class FakeQemu:
    """Plays QEMU's ccid-card-passthru on the bridge's socket (as its chardev client would)."""

    def __init__(self, path: Path, refuse: set[int] | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.refuse = refuse or set()
        self.decoder = Decoder()
        self.received: list[Message] = []
        self.answers: list[bytes] = []
        self.answered = threading.Event()
        # QEMU sends its Init when the card device is realised
        self.send(Message(MsgType.INIT, vscard.UNDEFINED_READER_ID, vscard.init_payload()))
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, message: Message) -> None:
        self.sock.sendall(message.encode())

    def run(self) -> None:
        with contextlib.suppress(OSError):  # the test closed the socket: QEMU went away
            self.serve()

    def serve(self) -> None:
        while data := self.sock.recv(65536):
            for message in self.decoder.feed(data):
                self.received.append(message)
                if message.type in (MsgType.READER_ADD, MsgType.ATR, MsgType.CARD_REMOVE):
                    code = ErrorCode.GENERAL_ERROR if message.type in self.refuse else ErrorCode.SUCCESS
                    self.send(Message(MsgType.ERROR, 0, vscard.error_payload(code)))
                elif message.type == MsgType.APDU:
                    self.answers.append(message.payload)
                    self.answered.set()

    def types(self) -> list[int]:
        return [m.type for m in self.received]


@pytest.fixture
def applet(tmp_path: Path) -> PivApplet:
    return PivApplet(issue_card(load_profile("demo"), Pki.init(tmp_path / "pki")))


@pytest.fixture
def bridge(applet: PivApplet, tmp_path: Path) -> Iterator[CardBridge]:
    made = CardBridge(applet, tmp_path / "vscard.sock")
    made.start()
    yield made
    made.close()


def test_bridge_attaches_inserts_answers_apdus_and_removes(bridge: CardBridge) -> None:
    qemu = FakeQemu(bridge.socket_path)
    bridge.wait_attached(timeout_s=10)
    assert bridge.peer_version == vscard.VERSION
    assert qemu.types()[:2] == [MsgType.INIT, MsgType.READER_ADD]
    bridge.insert()
    atr = next(m for m in qemu.received if m.type == MsgType.ATR).payload
    assert atr == bridge.atr
    assert atr[0] == 0x3B
    assert len(atr) <= vscard.MAX_ATR
    # the guest selects the PIV application: the emulated card answers with its template
    qemu.send(Message(MsgType.APDU, 0, SELECT_PIV))
    assert qemu.answered.wait(10)
    assert qemu.answers[0][-2:] == b"\x90\x00"
    assert qemu.answers[0][0] == 0x61
    bridge.remove()
    assert qemu.types()[-1] == MsgType.CARD_REMOVE
    assert not bridge.inserted
    assert bridge.apdus == 1


def test_a_refused_insertion_is_an_error(applet: PivApplet, tmp_path: Path) -> None:
    bridge = CardBridge(applet, tmp_path / "vscard.sock")
    bridge.start()
    try:
        FakeQemu(bridge.socket_path, refuse={MsgType.ATR})
        bridge.wait_attached(timeout_s=10)
        with pytest.raises(VSCardError, match="refused inserting the card: GENERAL_ERROR"):
            bridge.insert()
        assert not bridge.inserted
    finally:
        bridge.close()


def test_qemu_gone_is_an_error_not_a_hang(bridge: CardBridge) -> None:
    qemu = FakeQemu(bridge.socket_path)
    bridge.wait_attached(timeout_s=10)
    qemu.sock.close()
    with pytest.raises(VSCardError):
        bridge.insert(timeout_s=5)


def test_no_qemu_is_a_timeout_that_says_so(bridge: CardBridge) -> None:
    with pytest.raises(VSCardError, match="did not connect"):
        bridge.wait_attached(timeout_s=0.2)
