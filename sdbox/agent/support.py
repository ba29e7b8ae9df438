"""What the support screen shows: what a helpdesk asks for on the phone (D-Bus ``Support``).

The box's identity, its software version and A/B slot, its generation, its
outer addresses, where the network and tunnel stand, the last card seen (its
kind and when: never its holder, serial or projects) and the last problems
(their codes and times). Everything is read from files the image writes
(``/etc/sdbox/image-version``, ``/etc/sdbox/generation.toml``, the kernel
command line's ``rauc.slot=``, the box certificate) or noted by the agent as
it runs; nothing is personal, so the screen can be read out over the phone.
"""

from __future__ import annotations

import collections
import socket
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sdbox import __version__
from sdbox.agent.api import NetworkStatus, Problem, SupportField
from sdbox.certificates import UnreadableCertificate, load_certificate

KEEP_PROBLEMS = 5  # the screen has room for this many; older ones are in the journal


@dataclass(frozen=True)
class SupportSources:
    """Where the box's facts are (the image's paths; tests point elsewhere)."""

    image_version: Path = Path("/etc/sdbox/image-version")
    generation: Path = Path("/etc/sdbox/generation.toml")
    cmdline: Path = Path("/proc/cmdline")
    certificate: Path = Path("/var/lib/sdbox/identity/box.pem")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _box_name(certificate: Path) -> str:
    try:
        cert = load_certificate(certificate.read_bytes())
    except (OSError, UnreadableCertificate):
        return socket.gethostname()  # not enrolled yet: the host name is what the centre sees
    return cert.subject.rfc4514_string()


def _generation(path: Path) -> str:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    name = data.get("generation", {}).get("name", "")
    return name if isinstance(name, str) else ""


def _slot(cmdline: Path) -> str:
    for word in _read(cmdline).split():
        if word.startswith("rauc.slot="):
            return word.removeprefix("rauc.slot=")
    return ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class SupportRecord:
    """The facts read once at start, and what the agent notes as it runs."""

    sources: SupportSources = field(default_factory=SupportSources)
    card: str = ""
    card_seen: str = ""
    problems: collections.deque[tuple[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_PROBLEMS)
    )

    def __post_init__(self) -> None:
        src = self.sources
        self.box = _box_name(src.certificate)
        self.version = _read(src.image_version) or __version__
        self.slot = _slot(src.cmdline)
        self.generation = _generation(src.generation)

    def card_inserted(self, kind: str) -> None:
        """A card was read: its kind (a variant's name or a capability, never its identity)."""
        self.card, self.card_seen = kind, _now()

    def problem(self, problem: Problem | str) -> None:
        """A problem the researcher was shown (its code)."""
        self.problems.appendleft((_now(), str(problem)))

    def values(
        self, interface: str, addresses: tuple[str, ...], status: NetworkStatus
    ) -> dict[str, str]:
        """D-Bus ``Support``."""
        return {
            SupportField.BOX.value: self.box,
            SupportField.VERSION.value: self.version,
            SupportField.SLOT.value: self.slot,
            SupportField.GENERATION.value: self.generation,
            SupportField.INTERFACE.value: interface,
            SupportField.ADDRESSES.value: " ".join(addresses),
            SupportField.TUNNEL.value: status.value,
            SupportField.CARD.value: self.card,
            SupportField.CARD_SEEN.value: self.card_seen,
            SupportField.PROBLEMS.value: "\n".join(f"{at} {code}" for at, code in self.problems),
        }
