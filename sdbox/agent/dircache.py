"""The directories the box verified, by card GUID: what a slow chip need not send again.

A chip without extended length sends its directory (about 3.3 KB with three
projects and their bubbles' certificates) 256 bytes at a time: 13 more
APDUs at insertion, 22 on T=0. The agent keeps each card's last verified
directory object here (``<state_dir>/directories/<GUID>.dir``, public data:
what any reader reads off the card), and :meth:`BioSsoSession.read_summary`
uses it only where the card's own head of the directory matches, verifying
it again in full each time (docs/card-variants.md, "Benchmark"). A file that
cannot be read is a miss; one that cannot be written costs the next
insertion its speed, never its card.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

_log = logging.getLogger(__name__)
MAX_BYTES = 64 * 1024  # a directory of 20 projects with their certificates stays well below
MAX_CARDS = 256  # the oldest are dropped past this: a box sees a few dozen cards


class DirectoryCache:
    """The cache directory (None: no cache, every directory is read in full)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def _path(self, guid: bytes) -> Path | None:
        if self.directory is None or len(guid) != 16:
            return None
        return self.directory / f"{guid.hex()}.dir"

    def get(self, guid: bytes) -> bytes | None:
        """The object last verified for the card ``guid``, if any."""
        path = self._path(guid)
        if path is None:
            return None
        try:
            with path.open("rb") as file:
                data = file.read(MAX_BYTES + 1)
        except OSError:
            return None
        return data if 0 < len(data) <= MAX_BYTES else None

    def put(self, guid: bytes, value: bytes) -> None:
        """Keep ``value`` (a directory just verified) for the card ``guid``; atomic."""
        path = self._path(guid)
        if path is None or not value or len(value) > MAX_BYTES or self.get(guid) == value:
            return
        assert self.directory is not None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".dir-")
            with os.fdopen(fd, "wb") as file:
                file.write(value)
            os.replace(tmp, path)
            self._prune()
        except OSError as exc:
            _log.warning("cannot keep the card's directory for the next insertion: %s", exc)

    def _prune(self) -> None:
        assert self.directory is not None
        kept = sorted(self.directory.glob("*.dir"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MAX_CARDS]:
            old.unlink(missing_ok=True)
