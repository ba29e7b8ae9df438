"""Fault injection for the card emulator.

A fault is written ``KIND[:key=value,...]`` (CLI ``--fault``, control socket,
tests), for example ``remove:ins=cb,object=5fff40`` (pull the card when the
directory is read), ``truncate:ins=cb``, ``sw:ins=20,sw=6f00``,
``garble:ins=cb``, ``latency:ms=500,ins=87``.

Matching keys: ``ins`` (hex), ``p2`` (hex), ``object`` (hex tag named by a
GET/PUT DATA). ``nth`` (default 1) skips the first n-1 matching commands;
``times`` (default 1; 0 = every time) bounds how often the fault fires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sdbox.errors import SdboxError
from sdbox.smartcard import tlv
from sdbox.smartcard.apdu import Ins, decode_command
from sdbox.smartcard.errors import CardProtocolError, TlvError
from sdbox.smartcard.profile import TAG_OBJECT_ID


class FaultSpecError(SdboxError):
    """A fault specification does not parse."""


class FaultKind(StrEnum):
    """What happens when a fault fires."""

    REMOVE = "remove"  # the card is pulled: no answer, the connection drops
    TRUNCATE = "truncate"  # the answer's data is cut in half (status word kept)
    GARBLE = "garble"  # the answer's data bytes are inverted
    SW = "sw"  # the answer carries another status word and no data
    NO_SW = "no-sw"  # the answer is a single byte: no status word at all
    LATENCY = "latency"  # the answer is delayed by ms


@dataclass
class Fault:
    """One armed fault."""

    kind: FaultKind
    ins: int | None = None
    p2: int | None = None
    object: int | None = None
    nth: int = 1
    times: int = 1
    sw: int = 0x6F00
    ms: int = 0
    seen: int = field(default=0, compare=False)
    fired: int = field(default=0, compare=False)

    def matches(self, command: bytes) -> bool:
        """Whether ``command`` is one this fault is aimed at (counts it if so)."""
        if self.times and self.fired >= self.times:
            return False
        try:
            apdu, _extended = decode_command(command)
        except CardProtocolError:
            return False
        if self.ins is not None and apdu.ins != self.ins:
            return False
        if self.p2 is not None and apdu.p2 != self.p2:
            return False
        if self.object is not None:
            if apdu.ins not in (Ins.GET_DATA, Ins.PUT_DATA):
                return False
            try:
                name = tlv.parse_list(apdu.data)[0]
            except (TlvError, IndexError):
                return False
            if name.tag != TAG_OBJECT_ID or int.from_bytes(name.value, "big") != self.object:
                return False
        self.seen += 1
        if self.seen < self.nth:
            return False
        self.fired += 1
        return True


_INT_KEYS = {"ins": 16, "p2": 16, "object": 16, "sw": 16, "nth": 10, "times": 10, "ms": 10}


def parse_fault(spec: str) -> Fault:
    """Parse ``KIND[:key=value,...]``."""
    kind_text, _, rest = spec.partition(":")
    try:
        kind = FaultKind(kind_text.strip().lower())
    except ValueError as exc:
        known = ", ".join(k.value for k in FaultKind)
        raise FaultSpecError(
            f"fault {spec!r}: unknown kind {kind_text!r} (known: {known})"
        ) from exc
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in _INT_KEYS:
            raise FaultSpecError(
                f"fault {spec!r}: {part!r} is not one of {', '.join(_INT_KEYS)}=VALUE"
            )
        try:
            values[key] = int(value, _INT_KEYS[key])
        except ValueError as exc:
            raise FaultSpecError(f"fault {spec!r}: {key}={value!r} is not a number") from exc
    if values.get("nth", 1) < 1 or values.get("times", 1) < 0:
        raise FaultSpecError(f"fault {spec!r}: nth must be >= 1 and times >= 0")
    return Fault(kind=kind, **values)
