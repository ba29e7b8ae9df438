"""The agent's card: blocking PC/SC work on one thread, awaited from the loop.

Card commands must not interleave, and pyscard blocks; every operation on
the inserted card runs on a single worker thread in order. Reader events come
from pcscd itself (``SCardGetStatusChange``) on a watcher thread, posted to
the loop; the watcher sleeps in pcscd until something happens.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.smartcard import pcsc
from sdbox.smartcard.biosso import BioSsoSession, CardSummary, DirectoryCache, SignerValidator
from sdbox.smartcard.errors import CardAccessError

_log = logging.getLogger(__name__)
T = TypeVar("T")

_WATCH_TIMEOUT_S = 3600.0  # pcscd wakes us on any change; this only bounds a lost wake-up
_RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class CardHandle:
    """The card in one reader, for the duration of one insertion."""

    def __init__(self, reader: str) -> None:
        self.reader = reader
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="card")
        self._conn: pcsc.PcscConnection | None = None
        self._session: BioSsoSession | None = None

    async def run(self, fn: Callable[[BioSsoSession], T]) -> T:
        """Run ``fn(session)`` on the card thread (connecting on first use)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[BioSsoSession], T]) -> T:
        if self._session is None:
            self._conn = pcsc.PcscConnection(self.reader)
            self._session = BioSsoSession.for_atr(self._conn, self._conn.atr)
        return fn(self._session)

    async def summary(
        self, validate_signer: SignerValidator, cached: DirectoryCache | None = None
    ) -> CardSummary:
        """The picker's listing (``cached``: the box's verified directories, by card GUID)."""
        return await self.run(lambda s: s.read_summary(validate_signer, cached))

    async def make_exclusive(self) -> None:
        """Hold the card exclusively from now on (after holder verification)."""

        def reconnect(session: BioSsoSession) -> None:
            assert self._conn is not None
            self._conn.make_exclusive()

        await self.run(reconnect)

    async def guid(self, *, fresh: bool = False) -> bytes:
        """The card's GUID (re-read from the CHUID when ``fresh``)."""

        def read(session: BioSsoSession) -> bytes:
            if fresh:
                session.forget_identity()
            return session.guid

        return await self.run(read)

    async def certificate(self, slot: int) -> x509.Certificate:
        """The certificate stored for ``slot``."""
        return await self.run(lambda s: s.certificate(slot))

    async def ecdh(self, slot: int, peer: ec.EllipticCurvePublicKey) -> bytes:
        """ECDH with the project key in ``slot`` (needs holder verification)."""
        return await self.run(lambda s: s.ecdh(slot, peer))

    def close(self) -> None:
        """Release the card; pending operations finish or fail on their own."""

        def release() -> None:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._session = None

        self._executor.submit(release)
        self._executor.shutdown(wait=False)


@dataclass(frozen=True)
class ReaderEvent:
    """A card came or went in ``reader``."""

    reader: str
    present: bool
    atr: bytes


class ReaderWatcher:
    """Posts reader events to the loop; runs pcscd's event wait on its own thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[ReaderEvent], Any],
        readers: list[str] | None = None,
        on_service: Callable[[bool], Any] | None = None,
    ) -> None:
        self._loop = loop
        self._on_event = on_event
        self._on_service = on_service
        self._wanted = readers or []
        self._stop = threading.Event()
        self._context = pcsc.PcscContext()
        self._thread = threading.Thread(target=self._run, name="reader-watch", daemon=True)
        self._known: dict[str, bool] = {}

    def start(self) -> None:
        """Start watching (the current state is reported first)."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        try:
            self._context.cancel()
        except Exception:  # the daemon may be gone: nothing to cancel
            _log.debug("cancelling the reader watch", exc_info=True)
        self._thread.join(timeout=5)

    def _post(self, event: ReaderEvent) -> None:
        self._loop.call_soon_threadsafe(self._on_event, event)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                states = [
                    s
                    for s in self._context.reader_states()
                    if not self._wanted or s.name in self._wanted
                ]
                if failures and self._on_service:
                    self._loop.call_soon_threadsafe(self._on_service, True)
                failures = 0
                self._report(states)
                self._context.wait_for_change(states, _WATCH_TIMEOUT_S)
            except CardAccessError as exc:
                if self._stop.is_set():
                    return
                if failures == 0:
                    _log.warning("card service unavailable: %s", exc.message)
                    if self._on_service:
                        self._loop.call_soon_threadsafe(self._on_service, False)
                    for reader, present in list(self._known.items()):
                        if present:  # without pcscd, no card can be used: treat as removed
                            self._known[reader] = False
                            self._post(ReaderEvent(reader, False, b""))
                self._context.release()
                self._stop.wait(_RETRY_S[min(failures, len(_RETRY_S) - 1)])
                failures += 1

    def _report(self, states: list[pcsc.ReaderState]) -> None:
        seen = set()
        for s in states:
            seen.add(s.name)
            present = s.present and not s.mute
            if self._known.get(s.name) != present:
                self._known[s.name] = present
                self._post(ReaderEvent(s.name, present, s.atr))
        for reader in [r for r in self._known if r not in seen]:
            if self._known.pop(reader):
                self._post(ReaderEvent(reader, False, b""))
