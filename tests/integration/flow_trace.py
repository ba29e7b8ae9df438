"""A live trace of a coroutine's await points, and a hook that fires at a chosen one.

The agent's connection flow (verify, validate, obtain a credential, start the
session client, wait for "connected", run) suspends at many places: every
card command on the card thread, the session's preflight, each step of the
client's spawn, the wait for its first "connected" line. A hand-written list of
those places goes stale as the code changes; this module finds them by
running the flow: :class:`Traced` wraps the flow's coroutine and, at each
suspension, names the chain of sdbox frames that is waiting (outermost first,
``qualname:line``). A first run records the trace; the removal matrix then
replays the flow once per point and acts when that point is reached.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

_OURS = "/sdbox/"


@dataclass(frozen=True, order=True)
class AwaitPoint:
    """One suspension of the flow: where it waits, and the how-many-th time there."""

    where: tuple[str, ...]  # sdbox frames, outermost first: "ConnectionFlow._run_session:286"
    occurrence: int  # 0 for the first suspension at ``where`` in this run

    def __str__(self) -> str:
        suffix = f" #{self.occurrence + 1}" if self.occurrence else ""
        return " > ".join(self.where) + suffix

    @property
    def innermost(self) -> str:
        """The deepest sdbox frame waiting (the step itself)."""
        return self.where[-1]


def waiting_frames(coro: Coroutine[Any, Any, Any]) -> tuple[str, ...]:
    """The chain of sdbox coroutine frames ``coro`` is suspended in, outermost first."""
    chain: list[str] = []
    current: Any = coro
    while current is not None:
        frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        if _OURS in code.co_filename:
            chain.append(f"{code.co_qualname}:{frame.f_lineno}")
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)
    return tuple(chain)


class Traced:
    """Wraps a coroutine: ``on_point`` is called at each of its suspensions.

    The wrapped coroutine runs unchanged (values and exceptions, cancellation
    included, pass through); only the points where it hands control back to
    the event loop are observed.
    """

    def __init__(
        self, coro: Coroutine[Any, Any, Any], on_point: Callable[[AwaitPoint], None]
    ) -> None:
        self._coro = coro
        self._on_point = on_point
        self._seen: dict[tuple[str, ...], int] = {}

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        to_send: Any = None
        to_throw: BaseException | None = None
        while True:
            try:
                yielded = coro.throw(to_throw) if to_throw is not None else coro.send(to_send)
            except StopIteration as stop:
                return stop.value
            where = waiting_frames(coro)
            occurrence = self._seen.get(where, 0)
            self._seen[where] = occurrence + 1
            self._on_point(AwaitPoint(where, occurrence))
            try:
                to_send, to_throw = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go into the flow
                to_send, to_throw = None, exc


def is_coroutine(value: object) -> bool:
    """Whether ``value`` is a native coroutine (what Traced wraps)."""
    return isinstance(value, types.CoroutineType)
