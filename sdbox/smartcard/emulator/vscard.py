"""QEMU's smart-card passthrough protocol (VSCard): the emulated card in QEMU's USB CCID reader.

QEMU's ``usb-ccid`` device is an ordinary USB CCID reader to the guest (its
pcscd and libccid drive it like any other); its ``ccid-card-passthru`` card
forwards everything on a chardev in libcacard's VSCard protocol
(``vscard_common.h``; QEMU's ``hw/usb/ccid-card-passthru.c``). This module is
the other end of that chardev: the project's card emulator, in process.

Wire format: every message is a 12-byte header of three big-endian uint32
(type, reader id, payload length) and the payload. QEMU sends ``Init`` when
the card device is realised (magic ``VSCD`` as raw bytes, version 0.0.2 big
endian, capabilities) and answers ours with its own; ``ReaderAdd`` attaches the
reader to the guest's USB bus, ``ATR`` inserts a card, ``CardRemove`` pulls it,
``ReaderRemove`` detaches the reader; QEMU acknowledges each of these with an
``Error`` message carrying a big-endian code (0 = success). ``APDU`` messages
carry a command from the guest and our response, one for one. QEMU keeps the
ATR and answers the guest's power-on itself, so a guest power cycle reaches
the card as nothing at all; the applet is power-cycled at insertion and removal.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdbox.errors import SdboxError
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.vpcd import build_atr

_log = logging.getLogger(__name__)

HEADER = struct.Struct(">III")
MAGIC = b"VSCD"  # QEMU writes and compares it as raw bytes, not as a number
UNDEFINED_READER_ID = 0xFFFFFFFF
MINIMAL_READER_ID = 0
MAX_PAYLOAD = 64 * 1024  # QEMU's own input buffer (VSCARD_IN_SIZE)
MAX_ATR = 40  # ISO/IEC 7816-3; QEMU refuses a longer ATR


def make_version(major: int, middle: int, minor: int) -> int:
    """libcacard's version number: 11 + 11 + 10 bits."""
    return (major << 21) | (middle << 10) | minor


VERSION = make_version(0, 0, 2)


class MsgType(enum.IntEnum):
    """VSCMsgType."""

    INIT = 1
    ERROR = 2
    READER_ADD = 3
    READER_REMOVE = 4
    ATR = 5
    CARD_REMOVE = 6
    APDU = 7
    FLUSH = 8
    FLUSH_COMPLETE = 9


class ErrorCode(enum.IntEnum):
    """VSCErrorCode: the payload of an ``Error`` message (also the acknowledgement)."""

    SUCCESS = 0
    GENERAL_ERROR = 1
    CANNOT_ADD_MORE_READERS = 2
    CARD_ALREADY_INSERTED = 3


class VSCardError(SdboxError):
    """The passthrough peer broke the protocol, refused an operation or went away."""


@dataclass(frozen=True)
class Message:
    """One VSCard message."""

    type: int
    reader_id: int
    payload: bytes = b""

    def encode(self) -> bytes:
        """Header and payload, as on the wire."""
        if len(self.payload) > MAX_PAYLOAD:
            raise VSCardError(f"a VSCard payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD}")
        return HEADER.pack(self.type, self.reader_id, len(self.payload)) + self.payload


class Decoder:
    """Splits a byte stream into messages (the stream may cut anywhere)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        """Every whole message ``data`` completes, in order."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            kind, reader, length = HEADER.unpack_from(self._buffer)
            if length > MAX_PAYLOAD:
                raise VSCardError(f"the peer announced a {length}-byte VSCard payload")
            if len(self._buffer) < HEADER.size + length:
                break
            payload = bytes(self._buffer[HEADER.size : HEADER.size + length])
            del self._buffer[: HEADER.size + length]
            messages.append(Message(kind, reader, payload))
        return messages


def init_payload(capabilities: tuple[int, ...] = (0,)) -> bytes:
    """VSCMsgInit: magic, version, capabilities (none are defined)."""
    return MAGIC + struct.pack(f">I{len(capabilities)}I", VERSION, *capabilities)


def parse_init(payload: bytes) -> tuple[int, tuple[int, ...]]:
    """(version, capabilities) of a peer's Init; a wrong magic is refused."""
    if len(payload) < 12 or len(payload) % 4:
        raise VSCardError(f"a VSCard Init of {len(payload)} bytes (12 + 4n expected)")
    if payload[:4] != MAGIC:
        raise VSCardError(f"the peer's VSCard magic is {payload[:4].hex()}, not {MAGIC.hex()}")
    values = struct.unpack(f">{len(payload) // 4 - 1}I", payload[4:])
    return values[0], tuple(values[1:])


def error_payload(code: int) -> bytes:
    """VSCMsgError."""
    return struct.pack(">I", code)


def parse_error(payload: bytes) -> int:
    """The code of an ``Error`` message."""
    if len(payload) != 4:
        raise VSCardError(f"a VSCard Error of {len(payload)} bytes (4 expected)")
    code: int = struct.unpack(">I", payload)[0]
    return code


def version_text(version: int) -> str:
    """``major.middle.minor``."""
    return f"{version >> 21}.{(version >> 10) & 0x7FF}.{version & 0x3FF}"


class CardBridge:
    """The emulated card behind QEMU's ``ccid-card-passthru``, over a unix socket.

    The bridge listens (``start``) before QEMU starts; QEMU's chardev
    (``-chardev socket,id=X,path=SOCKET``, a client) connects when the
    machine is created. ``wait_attached`` exchanges Init and attaches the
    reader (the guest sees a USB CCID reader appear); ``insert`` and ``remove``
    put the card in and take it out. APDUs are answered by the applet on the
    bridge's own thread.
    """

    def __init__(
        self,
        applet: PivApplet,
        socket_path: Path,
        *,
        reader_name: str = "sdbox emulated card",
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.applet = applet
        self.socket_path = socket_path
        self.reader_name = reader_name
        self.atr = build_atr(applet.state.transmission, extended=applet.state.extended_length)
        if len(self.atr) > MAX_ATR:
            raise VSCardError(f"the card's ATR ({len(self.atr)} bytes) exceeds {MAX_ATR}")
        self.apdus = 0
        self.peer_version: int | None = None
        self.inserted = False
        self._on_event = on_event or (lambda _event: None)
        self._server: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._write = threading.Lock()
        self._acks: queue.Queue[int] = queue.Queue()
        self._peer_init = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen on the socket (QEMU connects to it at start)."""
        self.socket_path.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.socket_path))
        self.socket_path.chmod(0o600)
        server.listen(1)
        self._server = server

    def wait_attached(self, timeout_s: float = 60.0) -> None:
        """Accept QEMU's connection, exchange Init, attach the reader to the guest."""
        if self._server is None:
            raise VSCardError("the bridge is not listening: call start() first")
        self._server.settimeout(timeout_s)
        try:
            conn, _ = self._server.accept()
        except TimeoutError as exc:
            raise VSCardError(f"QEMU did not connect to {self.socket_path} in {timeout_s:.0f} s") from exc
        conn.settimeout(None)
        self._conn = conn
        self._thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                        name="vscard-bridge")  # fmt: skip
        self._thread.start()
        self._send(Message(MsgType.INIT, UNDEFINED_READER_ID, init_payload()))
        if not self._peer_init.wait(timeout_s):
            raise VSCardError("QEMU sent no VSCard Init")
        self._send(Message(MsgType.READER_ADD, UNDEFINED_READER_ID, self.reader_name.encode()))
        self._expect_ack("adding the reader", timeout_s)
        self._on_event("reader attached")

    def insert(self, timeout_s: float = 10.0) -> None:
        """Put the card in the reader (its ATR): the guest's pcscd sees an insertion."""
        self.applet.power_cycle()
        self._send(Message(MsgType.ATR, MINIMAL_READER_ID, self.atr))
        self._expect_ack("inserting the card", timeout_s)
        self.inserted = True
        self._on_event("inserted")

    def remove(self, timeout_s: float = 10.0) -> None:
        """Pull the card out: the guest's pcscd sees a removal."""
        self._send(Message(MsgType.CARD_REMOVE, MINIMAL_READER_ID))
        self._expect_ack("removing the card", timeout_s)
        self.inserted = False
        self.applet.power_cycle()
        self._on_event("removed")

    def close(self) -> None:
        """Stop serving (QEMU sees its chardev close) and stop listening."""
        self._closed.set()
        for sock in (self._conn, self._server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._conn = self._server = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.socket_path.unlink(missing_ok=True)

    # -- the connection ------------------------------------------------------------

    def _send(self, message: Message) -> None:
        conn = self._conn
        if conn is None:
            raise VSCardError("QEMU is not connected")
        with self._write:
            try:
                conn.sendall(message.encode())
            except OSError as exc:
                raise VSCardError(f"QEMU's passthrough chardev went away: {exc}") from exc

    def _expect_ack(self, what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        try:
            code = self._acks.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty as exc:
            raise VSCardError(f"QEMU did not acknowledge {what} in {timeout_s:.0f} s") from exc
        if code != ErrorCode.SUCCESS:
            name = ErrorCode(code).name if code in ErrorCode._value2member_map_ else str(code)
            raise VSCardError(f"QEMU refused {what}: {name}")

    def _serve(self, conn: socket.socket) -> None:
        decoder = Decoder()
        try:
            while not self._closed.is_set():
                data = conn.recv(65536)
                if not data:
                    break
                for message in decoder.feed(data):
                    self._handle(message)
        except (OSError, VSCardError) as exc:
            if not self._closed.is_set():
                _log.warning("VSCard connection ended: %s", exc)
        self._acks.put(ErrorCode.GENERAL_ERROR)  # wake a waiter: nobody will acknowledge now

    def _handle(self, message: Message) -> None:
        if message.type == MsgType.APDU:
            self.apdus += 1
            answer = self.applet.process(message.payload)
            self._send(Message(MsgType.APDU, message.reader_id, answer))
        elif message.type == MsgType.ERROR:
            self._acks.put(parse_error(message.payload))
        elif message.type == MsgType.INIT:
            self.peer_version, _ = parse_init(message.payload)
            if self.peer_version != VERSION:
                _log.info("QEMU speaks VSCard %s, we %s", version_text(self.peer_version),
                          version_text(VERSION))  # fmt: skip
            self._peer_init.set()
        elif message.type == MsgType.FLUSH:
            # APDUs are answered in order on this thread: by now every one has been
            self._send(Message(MsgType.FLUSH_COMPLETE, message.reader_id))
        else:
            _log.warning("unexpected VSCard message type %d from QEMU", message.type)
