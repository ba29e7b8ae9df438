"""PC/SC transport on pyscard's low-level ``smartcard.scard`` binding.

This is the only module that imports pyscard. It translates every PC/SC
error once into :mod:`sdbox.smartcard.errors`, retries sharing violations
briefly (another process, e.g. OpenSC, may hold a transaction for a moment),
and re-establishes its context when pcscd restarts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from smartcard import scard

from sdbox.smartcard.errors import (
    CardAccessError,
    CardBusy,
    CardNotResponding,
    CardRemoved,
    NoCard,
    NoReader,
    PcscUnavailable,
)

_log = logging.getLogger(__name__)
T = TypeVar("T")

PNP_NOTIFICATION = r"\\?PnP?\Notification"
_SHARING_RETRIES = 20
_SHARING_DELAY_S = 0.05

_ERRORS: dict[int, tuple[type[CardAccessError], str]] = {
    scard.SCARD_E_NO_SERVICE: (PcscUnavailable, "the smart card service (pcscd) is not running"),
    scard.SCARD_E_SERVICE_STOPPED: (PcscUnavailable, "the smart card service (pcscd) stopped"),
    scard.SCARD_E_NO_READERS_AVAILABLE: (NoReader, "no card reader is connected"),
    scard.SCARD_E_UNKNOWN_READER: (NoReader, "the card reader is not connected"),
    scard.SCARD_E_READER_UNAVAILABLE: (NoReader, "the card reader was disconnected"),
    scard.SCARD_E_NO_SMARTCARD: (NoCard, "no card in the reader"),
    scard.SCARD_W_REMOVED_CARD: (CardRemoved, "the card was removed"),
    scard.SCARD_W_RESET_CARD: (CardRemoved, "the card was reset by another program"),
    scard.SCARD_W_UNPOWERED_CARD: (CardRemoved, "the card is not powered"),
    scard.SCARD_W_UNRESPONSIVE_CARD: (CardNotResponding, "the card does not respond"),
    scard.SCARD_E_NOT_TRANSACTED: (CardNotResponding, "the card did not complete the command"),
    scard.SCARD_E_COMM_DATA_LOST: (CardNotResponding, "the card's answer was lost"),
    scard.SCARD_E_TIMEOUT: (CardNotResponding, "the card did not answer in time"),
    scard.SCARD_E_SHARING_VIOLATION: (CardBusy, "another program is using the card"),
    scard.SCARD_E_INVALID_HANDLE: (PcscUnavailable, "the smart card service was restarted"),
    scard.SCARD_E_UNSUPPORTED_FEATURE: (NoReader, "the reader does not support this card"),
}


def pcsc_error(hresult: int, doing: str) -> CardAccessError:
    """The typed error for a PC/SC result code."""
    klass, text = _ERRORS.get(hresult, (CardAccessError, "smart card access failed"))
    detail = scard.SCardGetErrorMessage(hresult)
    err = klass(f"{doing}: {text} ({detail})")
    err.hresult = hresult  # type: ignore[attr-defined]
    return err


def _check(hresult: int, doing: str) -> None:
    if hresult != scard.SCARD_S_SUCCESS:
        raise pcsc_error(hresult, doing)


@dataclass(frozen=True)
class ReaderState:
    """What pcscd says about one reader."""

    name: str
    present: bool
    exclusive: bool
    mute: bool
    atr: bytes
    event_count: int


class PcscContext:
    """A PC/SC context that re-establishes itself after pcscd restarts."""

    def __init__(self) -> None:
        self._context: Any = None

    def handle(self) -> Any:
        """The live context handle, establishing one when needed."""
        if self._context is None:
            hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            _check(hresult, "connecting to the smart card service")
            self._context = context
        return self._context

    def call(self, doing: str, fn: Callable[[Any], tuple[Any, ...]]) -> tuple[Any, ...]:
        """Run ``fn(context)``; on a dead context, re-establish once and retry."""
        for attempt in range(2):
            result = fn(self.handle())
            hresult = result[0]
            if (
                hresult
                in (
                    scard.SCARD_E_NO_SERVICE,
                    scard.SCARD_E_INVALID_HANDLE,
                    scard.SCARD_E_SERVICE_STOPPED,
                )
                and attempt == 0
            ):
                _log.info(
                    "PC/SC context lost (%s); re-establishing", scard.SCardGetErrorMessage(hresult)
                )
                self.release()
                continue
            return result
        raise AssertionError("unreachable")

    def release(self) -> None:
        """Release the context (ignoring a daemon that is already gone)."""
        if self._context is not None:
            try:
                scard.SCardReleaseContext(self._context)
            except Exception:  # (pyscard raises on a dead daemon; nothing to release then)
                _log.debug("releasing a dead PC/SC context", exc_info=True)
            self._context = None

    def list_readers(self) -> list[str]:
        """Names of the connected readers (empty when there are none)."""
        hresult, readers = self.call(
            "listing card readers", lambda c: scard.SCardListReaders(c, [])
        )
        if hresult in (scard.SCARD_E_NO_READERS_AVAILABLE, scard.SCARD_E_READER_UNAVAILABLE):
            return []
        _check(hresult, "listing card readers")
        return list(readers)

    def reader_states(self, readers: list[str] | None = None) -> list[ReaderState]:
        """The current state of each reader (all readers by default)."""
        names = self.list_readers() if readers is None else readers
        if not names:
            return []
        query = [(name, scard.SCARD_STATE_UNAWARE) for name in names]
        hresult, states = self.call(
            "reading reader state", lambda c: scard.SCardGetStatusChange(c, 0, query)
        )
        _check(hresult, "reading reader state")
        return [_reader_state(s) for s in states]

    def wait_for_change(
        self, known: list[ReaderState], timeout_s: float, *, watch_readers: bool = True
    ) -> list[ReaderState] | None:
        """Block until a reader in ``known`` changes state, a reader comes or goes, or timeout.

        Returns the new states, or None on timeout. This is pcscd's own event
        mechanism (SCardGetStatusChange), not polling.
        """
        query: list[tuple[str, int]] = [(s.name, _state_bits(s)) for s in known]
        if watch_readers:
            query.append((PNP_NOTIFICATION, len(known) << 16))
        timeout_ms = max(0, int(timeout_s * 1000))
        hresult, _changed = self.call(
            "waiting for a card event", lambda c: scard.SCardGetStatusChange(c, timeout_ms, query)
        )
        if hresult == scard.SCARD_E_TIMEOUT:
            return None
        if hresult in (scard.SCARD_E_UNKNOWN_READER, scard.SCARD_E_READER_UNAVAILABLE):
            return self.reader_states()
        _check(hresult, "waiting for a card event")
        return self.reader_states()

    def cancel(self) -> None:
        """Wake up a :meth:`wait_for_change` blocked in another thread."""
        if self._context is not None:
            scard.SCardCancel(self._context)


def _state_bits(state: ReaderState) -> int:
    bits: int = scard.SCARD_STATE_PRESENT if state.present else scard.SCARD_STATE_EMPTY
    return bits | (state.event_count << 16)


def _reader_state(raw: tuple[str, int, list[int]]) -> ReaderState:
    name, bits, atr = raw
    return ReaderState(
        name=name,
        present=bool(bits & scard.SCARD_STATE_PRESENT),
        exclusive=bool(bits & scard.SCARD_STATE_EXCLUSIVE),
        mute=bool(bits & scard.SCARD_STATE_MUTE),
        atr=bytes(atr),
        event_count=(bits >> 16) & 0xFFFF,
    )


class PcscConnection:
    """A connection to the card in one reader; implements SmartCardConnection."""

    def __init__(
        self, reader: str, *, exclusive: bool = False, context: PcscContext | None = None
    ) -> None:
        self.reader = reader
        self.exclusive = exclusive
        self._context = context or PcscContext()
        self._own_context = context is None
        self._card: Any = None
        self._protocol = 0
        self._connect()

    def _connect(self) -> None:
        share = scard.SCARD_SHARE_EXCLUSIVE if self.exclusive else scard.SCARD_SHARE_SHARED
        protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        doing = f"connecting to the card in '{self.reader}'"
        for attempt in range(_SHARING_RETRIES):
            hresult, card, protocol = self._context.call(
                doing, lambda c: scard.SCardConnect(c, self.reader, share, protocols)
            )
            if hresult == scard.SCARD_E_SHARING_VIOLATION and attempt < _SHARING_RETRIES - 1:
                time.sleep(_SHARING_DELAY_S)
                continue
            _check(hresult, doing)
            self._card, self._protocol = card, protocol
            return

    @property
    def atr(self) -> bytes:
        """The card's answer to reset."""
        hresult, _reader, _state, _protocol, atr = scard.SCardStatus(self._card)
        _check(hresult, "reading the card's ATR")
        return bytes(atr)

    def make_exclusive(self) -> None:
        """Reconnect in exclusive mode, leaving the card as it is (verification kept)."""
        if self.exclusive:
            return
        hresult, protocol = scard.SCardReconnect(
            self._card,
            scard.SCARD_SHARE_EXCLUSIVE,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
            scard.SCARD_LEAVE_CARD,
        )
        _check(hresult, f"taking the card in '{self.reader}' exclusively")
        self._protocol = protocol
        self.exclusive = True

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Hold the card for a sequence of commands nobody may interleave with."""
        doing = "reserving the card for a transaction"
        for attempt in range(_SHARING_RETRIES):
            hresult = scard.SCardBeginTransaction(self._card)
            if hresult == scard.SCARD_E_SHARING_VIOLATION and attempt < _SHARING_RETRIES - 1:
                time.sleep(_SHARING_DELAY_S)
                continue
            _check(hresult, doing)
            break
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # the card may be gone: nothing to end then
                scard.SCardEndTransaction(self._card, scard.SCARD_LEAVE_CARD)

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        """Transmit one APDU; card removal mid-command raises :class:`CardRemoved`."""
        if self._card is None:
            raise CardRemoved("the card connection is closed")
        hresult, response = scard.SCardTransmit(self._card, self._protocol, list(apdu))
        _check(hresult, "talking to the card")
        if len(response) < 2:
            raise CardNotResponding("talking to the card: the answer had no status word")
        data = bytes(response[:-2])
        return data, (response[-2] << 8) | response[-1]

    def close(self) -> None:
        """Release the card (leave it powered: another client may use it next)."""
        if self._card is not None:
            try:
                scard.SCardDisconnect(self._card, scard.SCARD_LEAVE_CARD)
            except Exception:  # (the daemon may be gone already)
                _log.debug("disconnecting from a dead card handle", exc_info=True)
            self._card = None
        if self._own_context:
            self._context.release()

    def __enter__(self) -> PcscConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_readers() -> list[str]:
    """Names of the connected readers."""
    context = PcscContext()
    try:
        return context.list_readers()
    finally:
        context.release()


def connect(reader: str | None = None, *, exclusive: bool = False) -> PcscConnection:
    """Connect to the card in ``reader``, or in the first reader holding a card."""
    context = PcscContext()
    try:
        states = context.reader_states()
        if not states:
            raise NoReader("no card reader is connected")
        if reader is not None:
            matching = [s for s in states if s.name == reader]
            if not matching:
                names = ", ".join(s.name for s in states)
                raise NoReader(f"no reader named '{reader}' (connected: {names})")
            if not matching[0].present:
                raise NoCard(f"no card in '{reader}': insert your card")
            name = reader
        else:
            with_card = [s for s in states if s.present]
            if not with_card:
                raise NoCard("no card in any reader: insert your card")
            name = with_card[0].name
        conn = PcscConnection(name, exclusive=exclusive, context=context)
        conn._own_context = True  # the connection releases the context it was given here
        return conn
    except BaseException:
        context.release()
        raise
