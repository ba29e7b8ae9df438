"""The transport contract and the APDU processor stack.

A transport implements one call, :meth:`SmartCardConnection.send_and_receive`
(raw command bytes in, response data and status word out). Above it, small
processors each add one ISO/IEC 7816-4 mechanism: extended length or command
chaining (``CLA | 0x10``) for long commands, response chaining (``61XX``
answered by GET RESPONSE) and T=0's wrong-Le answer (``6CXX``: the command sent
again with Le = XX). Which of them a card gets is its capability (its ATR,
:mod:`sdbox.smartcard.atr`), not an assumption. The session classes only see
:class:`ApduStack`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

from sdbox.logging import TRACE
from sdbox.smartcard.apdu import (
    CLA_CHAINING,
    SHORT_MAX_DATA,
    SHORT_MAX_LE,
    Apdu,
    Ins,
    Sw,
)
from sdbox.smartcard.errors import CardProtocolError

_log = logging.getLogger(__name__)

# Commands whose data may carry a PIN, a template, a key or an authentication
# witness: their data never reaches a log, only its length.
_SENSITIVE_INS = frozenset(
    {Ins.VERIFY, Ins.CHANGE_REFERENCE, Ins.RESET_RETRY, Ins.GENERAL_AUTHENTICATE, Ins.PUT_DATA}
)
_MAX_RESPONSE_CHAIN = 1024  # 256 KiB of GET RESPONSE: far beyond any PIV object


class SmartCardConnection(Protocol):
    """A connection to one card (PC/SC, or an in-process emulator in unit tests)."""

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Send one raw command APDU; return (response data, status word)."""
        ...

    def close(self) -> None:
        """Release the card."""
        ...


@dataclass
class ApduStats:
    """APDUs exchanged with the card and the time spent, for benchmarks and `card info`."""

    apdus: int = 0
    seconds: float = 0.0
    by_ins: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        """Start counting afresh."""
        self.apdus, self.seconds = 0, 0.0
        self.by_ins.clear()


def redacted(apdu: Apdu) -> str:
    """A log-safe rendering of a command."""
    head = f"{apdu.cla:02X}{apdu.ins:02X}{apdu.p1:02X}{apdu.p2:02X}"
    if apdu.ins in _SENSITIVE_INS and apdu.data:
        return f"{head} <{len(apdu.data)} bytes redacted>"
    return f"{head} {apdu.data.hex().upper()}" + (f" Le={apdu.le}" if apdu.le is not None else "")


def redacted_response(command: Apdu, data: bytes) -> str:
    """A log-safe rendering of the answer to ``command``.

    What GENERAL AUTHENTICATE returns (an ECDH shared secret, a signature, a
    management-key witness) never shows, only its length.
    """
    if command.ins == Ins.GENERAL_AUTHENTICATE and data:
        return f"<{len(data)} bytes redacted>"
    return data.hex().upper()


class ApduStack:
    """Sends :class:`Apdu` objects over a connection with chaining as needed.

    ``extended``: use extended-length APDUs (one exchange for a large object)
    when the card supports them; otherwise long commands are split by command
    chaining and long answers are gathered by response chaining.
    """

    def __init__(self, connection: SmartCardConnection, *, extended: bool = True) -> None:
        self.connection = connection
        self.extended = extended
        self.stats = ApduStats()

    def _exchange(
        self, apdu: Apdu, *, extended: bool, answering: Apdu | None = None
    ) -> tuple[bytes, int]:
        """One exchange; ``answering``: the command whose answer a GET RESPONSE continues."""
        raw = apdu.encode(extended=extended)
        if _log.isEnabledFor(TRACE):
            _log.log(TRACE, "> %s", redacted(apdu))
        start = time.perf_counter()
        try:
            data, sw = self.connection.send_and_receive(raw)
        finally:
            self.stats.apdus += 1
            self.stats.seconds += time.perf_counter() - start
            name = apdu.name()
            self.stats.by_ins[name] = self.stats.by_ins.get(name, 0) + 1
        if _log.isEnabledFor(TRACE):
            _log.log(TRACE, "< %s %04X", redacted_response(answering or apdu, data), sw)
        return data, sw

    def send(self, apdu: Apdu) -> tuple[bytes, int]:
        """Send ``apdu``; return the complete response data and final status word."""
        needs_extended = len(apdu.data) > SHORT_MAX_DATA or (apdu.le or 0) > SHORT_MAX_LE
        if self.extended and needs_extended:
            data, sw = self._exchange(apdu, extended=True)
        else:
            data, sw = self._send_short(apdu)
        return self._gather(apdu, data, sw)

    def send_head(self, apdu: Apdu, at_least: int) -> tuple[bytes, int]:
        """The start of ``apdu``'s answer: at least ``at_least`` bytes where there are as many.

        Without extended length a long answer comes 256 bytes at a time
        (61XX + GET RESPONSE): this stops asking once it has ``at_least``
        bytes and returns the last status word, 61XX when more remained
        (the card drops the rest at the next command, ISO/IEC 7816-4 7.1.3).
        With extended length the whole answer is one exchange anyway.
        """
        if self.extended:
            return self.send(apdu)
        data, sw = self._send_short(apdu)
        parts, have, rounds = [data], len(data), 0
        while sw & 0xFF00 == Sw.BYTES_REMAINING_00 and have < at_least:
            rounds += 1
            if rounds > _MAX_RESPONSE_CHAIN:
                raise CardProtocolError(f"{apdu.name()}: the card never ended its answer (61XX)")
            data, sw = self._exchange_short(
                Apdu(0x00, Ins.GET_RESPONSE, 0, 0, le=sw & 0xFF or SHORT_MAX_LE), answering=apdu
            )
            parts.append(data)
            have += len(data)
        return b"".join(parts), sw

    def send_rest(self, apdu: Apdu, head: bytes, sw: int) -> tuple[bytes, int]:
        """The whole answer to ``apdu``, from what :meth:`send_head` returned.

        Only before any other command: the card drops the rest at the next one.
        """
        return self._gather(apdu, head, sw)

    def _send_short(self, apdu: Apdu) -> tuple[bytes, int]:
        le = None if apdu.le is None else min(apdu.le, SHORT_MAX_LE)
        chunks = [
            apdu.data[i : i + SHORT_MAX_DATA] for i in range(0, len(apdu.data), SHORT_MAX_DATA)
        ]
        if len(chunks) <= 1:
            return self._exchange_short(Apdu(apdu.cla, apdu.ins, apdu.p1, apdu.p2, apdu.data, le))
        for chunk in chunks[:-1]:
            part = Apdu(apdu.cla | CLA_CHAINING, apdu.ins, apdu.p1, apdu.p2, chunk)
            data, sw = self._exchange(part, extended=False)
            if sw != Sw.OK:
                return data, sw
        last = Apdu(apdu.cla, apdu.ins, apdu.p1, apdu.p2, chunks[-1], le)
        return self._exchange_short(last)

    def _exchange_short(self, apdu: Apdu, answering: Apdu | None = None) -> tuple[bytes, int]:
        """A short exchange; a T=0 card's 6CXX (wrong Le) is answered by asking again with XX."""
        data, sw = self._exchange(apdu, extended=False, answering=answering)
        if sw & 0xFF00 == Sw.WRONG_LE_00 and apdu.le is not None:
            exact = sw & 0xFF or SHORT_MAX_LE
            data, sw = self._exchange(replace(apdu, le=exact), extended=False, answering=answering)
        return data, sw

    def _gather(self, apdu: Apdu, data: bytes, sw: int) -> tuple[bytes, int]:
        parts = [data]
        rounds = 0
        while sw & 0xFF00 == Sw.BYTES_REMAINING_00:
            rounds += 1
            if rounds > _MAX_RESPONSE_CHAIN:
                raise CardProtocolError(f"{apdu.name()}: the card never ended its answer (61XX)")
            more = sw & 0xFF or SHORT_MAX_LE
            # The rest of a sensitive answer (a T=0 card answers 61XX even to
            # a short one) is redacted like its start.
            data, sw = self._exchange_short(
                Apdu(0x00, Ins.GET_RESPONSE, 0, 0, le=more), answering=apdu
            )
            parts.append(data)
        return b"".join(parts), sw
