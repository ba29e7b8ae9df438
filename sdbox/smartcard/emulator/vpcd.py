"""vsmartcard's vpcd protocol: the emulated card as a TCP client of pcscd's vpcd driver.

Wire format: every message is a 2-byte big-endian length and a payload. A
1-byte payload from vpcd is a control code (00 power off, 01 power on, 02
reset, 04 get ATR); anything longer is a command APDU, answered with the
response APDU. Connecting is inserting the card; closing the socket is
pulling it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

from sdbox.smartcard import atr
from sdbox.smartcard.atr import Transmission
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.faults import Fault, FaultKind

_log = logging.getLogger(__name__)

VPCD_BASE_PORT = 35963  # vpcd's default: reader "Virtual PCD 00 0N" listens on base + N
CTRL_POWER_OFF = 0x00
CTRL_POWER_ON = 0x01
CTRL_RESET = 0x02
CTRL_GET_ATR = 0x04


def build_atr(transmission: str = "T=1", *, extended: bool = True) -> bytes:
    """The emulator's ATR: its transmission protocol and card capabilities (tag 7).

    The historical bytes announce command chaining and, on chips that have
    it, extended Lc/Le (docs/card-variants.md). It is no known vendor's ATR,
    so OpenSC finds the card by selecting the PIV application, not by a quirk.
    """
    protocol = Transmission.T0 if transmission == "T=0" else Transmission.T1
    return atr.build_atr(transmission=protocol, chaining=True, extended=extended, tag=b"SDB")


class VirtualCard:
    """One emulated card that can be inserted into and pulled from a vpcd reader."""

    def __init__(
        self,
        applet: PivApplet,
        *,
        host: str = "127.0.0.1",
        port: int = VPCD_BASE_PORT,
        latency_ms: float = 0.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.applet = applet
        self.host, self.port = host, port
        self.latency_ms = latency_ms
        self.atr = build_atr(applet.state.transmission, extended=applet.state.extended_length)
        self.faults: list[Fault] = []
        self.apdus = 0
        self._on_event = on_event or (lambda _event: None)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._inserted = threading.Event()

    @property
    def inserted(self) -> bool:
        """Whether the card is in the reader (connected to vpcd)."""
        return self._inserted.is_set()

    def insert(self, timeout_s: float = 10.0) -> None:
        """Connect to vpcd: pcscd sees a card insertion. Retries while vpcd starts."""
        with self._lock:
            if self._sock is not None:
                return
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    sock = socket.create_connection((self.host, self.port), timeout=2.0)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self.applet.power_cycle()
            self._inserted.set()
            self._thread = threading.Thread(
                target=self._serve, args=(sock,), daemon=True, name=f"vpcd-{self.port}"
            )
            self._thread.start()
        self._on_event("inserted")

    def remove(self) -> None:
        """Close the connection: pcscd sees the card pulled."""
        with self._lock:
            sock, self._sock = self._sock, None
            thread, self._thread = self._thread, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._inserted.clear()
        self.applet.power_cycle()
        self._on_event("removed")

    def add_fault(self, fault: Fault) -> None:
        """Arm a fault."""
        self.faults.append(fault)

    # -- the connection loop -----------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        try:
            while True:
                header = _recv_exact(sock, 2)
                if header is None:
                    break
                (length,) = struct.unpack(">H", header)
                payload = _recv_exact(sock, length)
                if payload is None:
                    break
                if length == 1:
                    self._control(sock, payload[0])
                    continue
                answer = self._command(payload)
                if answer is None:  # fault: card pulled mid-command
                    threading.Thread(target=self.remove, daemon=True).start()
                    return
                sock.sendall(struct.pack(">H", len(answer)) + answer)
        except OSError as exc:
            _log.debug("vpcd connection ended: %s", exc)
        if self._sock is sock:  # vpcd went away (pcscd stopped): the card is out
            threading.Thread(target=self.remove, daemon=True).start()

    def _control(self, sock: socket.socket, code: int) -> None:
        if code == CTRL_GET_ATR:
            sock.sendall(struct.pack(">H", len(self.atr)) + self.atr)
        elif code in (CTRL_POWER_OFF, CTRL_POWER_ON, CTRL_RESET):
            self.applet.power_cycle()
        else:
            _log.warning("vpcd sent unknown control code %02X", code)

    def _command(self, command: bytes) -> bytes | None:
        self.apdus += 1
        delay = self.latency_ms
        fired = [f for f in self.faults if f.matches(command)]
        for fault in fired:
            if fault.kind == FaultKind.LATENCY:
                delay += fault.ms
        if any(f.kind == FaultKind.REMOVE for f in fired):
            _log.info("fault: card pulled during command %s", command[:4].hex())
            return None
        answer = self.applet.process(command)
        if delay:
            time.sleep(delay / 1000)
        for fault in fired:
            data, sw = answer[:-2], answer[-2:]
            if fault.kind == FaultKind.TRUNCATE:
                answer = data[: len(data) // 2] + sw
            elif fault.kind == FaultKind.GARBLE:
                answer = bytes(b ^ 0xFF for b in data) + sw
            elif fault.kind == FaultKind.SW:
                answer = fault.sw.to_bytes(2, "big")
            elif fault.kind == FaultKind.NO_SW:
                answer = b"\x90"
        return answer


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        # vpcd writes the length and the payload separately; with Nagle on its
        # side, a delayed ACK on ours would stall every APDU for ~40 ms. Linux
        # clears QUICKACK after use, so it is set before every read.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
