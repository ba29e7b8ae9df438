"""The renewal journal: what an interrupted renewal had done, on disk.

Written atomically (temporary file, fsync, rename, fsync of the directory)
*before* each card write it announces (write-ahead), so that after a crash,
a pulled card or a killed process the journal is never behind the card. The
next run reads it and either finishes (the CA confirmed the certificate: write
what is missing and switch) or cleans up (remove what the attempt wrote and
start again). It holds public data only: slot numbers, the new public key and
the certificate.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from sdbox.renewal.errors import JournalError


class Phase(StrEnum):
    """How far one project's renewal got (each is written before the step it names)."""

    GENERATING = "generating"  # a key is being generated in new_slot
    REQUESTED = "requested"  # the key exists; the kur is on its way
    WRITING = "writing"  # the CA's certificate is being written to new_slot
    CONFIRMED = "confirmed"  # the CA answered pkiConf: the certificate is final
    SWITCHING = "switching"  # key history and directory are being switched
    SWITCHED = "switched"  # the directory names new_slot; the old slot is being freed


@dataclass(frozen=True)
class Entry:
    """One renewal in progress."""

    card: str  # GUID hex: the journal applies to this card only
    project: str
    old_slot: int
    new_slot: int
    phase: Phase
    public_key_pem: str = ""
    certificate_pem: str = ""

    def advance(
        self, phase: Phase, *, public_key_pem: str | None = None, certificate_pem: str | None = None
    ) -> Entry:
        """The same entry at a later phase."""
        return replace(
            self,
            phase=phase,
            public_key_pem=self.public_key_pem if public_key_pem is None else public_key_pem,
            certificate_pem=self.certificate_pem if certificate_pem is None else certificate_pem,
        )


class Journal:
    """The journal file (one entry at most: renewals run one project at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def for_card(self, guid: bytes) -> Journal:
        """This card's journal beside this one (a box sees several cards; each resumes its own)."""
        path = self.path
        return Journal(path.with_name(f"{path.stem}-{guid.hex()}{path.suffix}"))

    def read(self) -> Entry | None:
        """The pending entry, or None."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise JournalError(
                f"the renewal journal {self.path} is unreadable ({exc}); check the card with "
                "`sdbox card info` before removing it"
            ) from exc
        try:
            return Entry(
                card=str(raw["card"]), project=str(raw["project"]),
                old_slot=int(raw["old_slot"]), new_slot=int(raw["new_slot"]),
                phase=Phase(raw["phase"]), public_key_pem=str(raw.get("public_key_pem", "")),
                certificate_pem=str(raw.get("certificate_pem", "")),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise JournalError(f"the renewal journal {self.path} is damaged: {exc!r}") from exc

    def write(self, entry: Entry) -> None:
        """Replace the journal with ``entry``, atomically and durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({**asdict(entry), "phase": entry.phase.value}, indent=1).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)

    def clear(self) -> None:
        """Forget the entry (the renewal finished or was cleaned up)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
