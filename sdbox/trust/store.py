"""The box's revocation store: cached CRLs on disk and the time floor.

One file per issuer (``<hash of the issuer name>.crl``, DER), replaced
atomically (write to a temporary file, fsync, rename, fsync the directory) so
that a power cut leaves the old list or the new one, never half of either.
A CRL is accepted only if it verifies under the issuer's certificate and its
CRL number is higher than the one held: lists never go backwards, so an
attacker cannot replay an older list from before a revocation.

The time floor is the newest of the image's build time and every accepted
CRL's thisUpdate, persisted beside the CRLs: a box whose clock reads earlier
than that has a wrong clock, and validating certificates against it would
resurrect expired ones, so :func:`sdbox.trust.validate` refuses.

Beside the lists, a ledger records the number of every list accepted. A
cached list that no longer parses (a damaged sector, a file truncated by
hand) is moved aside as ``<stem>.crl.damaged`` when the next list for that
authority arrives, and the ledger still refuses a replayed older list; with
no ledger entry (a store written by an older release) the replacement must
be at least as recent as the time floor. Until a new list arrives, the
damaged one makes revocation checks of that authority fail closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.time_floor import FLOOR_FILE, floor_document, read_floor
from sdbox.trust.errors import BadSignature, CrlRollback, MalformedCertificate
from sdbox.trust.loaders import load_crl
from sdbox.trust.names import describe
from sdbox.trust.revocation import IndexedCrl

_LEDGER_FILE = "crl-numbers.json"

log = logging.getLogger(__name__)


def _file_stem(issuer: x509.Name) -> str:
    return hashlib.sha256(issuer.public_bytes()).hexdigest()[:32]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RevocationStore:
    """CRLs cached in ``path``; a :class:`~sdbox.trust.revocation.CrlSource`."""

    def __init__(self, path: Path, *, build_time: datetime) -> None:
        self.path = path
        self.build_time = build_time.astimezone(UTC)
        path.mkdir(parents=True, exist_ok=True)
        # Parsed lists, keyed by file stem, with the file's (mtime, size) so a
        # list replaced by another process is re-read.
        self._cache: dict[str, tuple[tuple[int, int], IndexedCrl]] = {}

    # -- the time floor ------------------------------------------------------

    @property
    def time_floor(self) -> datetime:
        """Validation below this time is refused (the clock is wrong)."""
        return read_floor(self.path, self.build_time)

    def _raise_floor(self, moment: datetime) -> None:
        if moment > self.time_floor:
            _atomic_write(self.path / FLOOR_FILE, floor_document(moment))

    # -- accepting and reading lists -----------------------------------------

    def accept(self, data: bytes, issuer: x509.Certificate) -> IndexedCrl:
        """Verify a CRL (DER or PEM) against ``issuer`` and keep it if it is newer.

        Raises :class:`BadSignature` if ``issuer`` did not sign it,
        :class:`~sdbox.trust.errors.CrlNumberInvalid` if it has no CRL number or
        marks it critical, and :class:`CrlRollback` if it is not newer than the
        list held.
        """
        crl = load_crl(data)
        who = describe(issuer.subject)
        if crl.issuer != issuer.subject:
            raise BadSignature(f"a revocation list that claims to be from {describe(crl.issuer)}")
        indexed = IndexedCrl(crl)
        if not indexed.verify_signature(issuer):
            raise BadSignature(f"the revocation list of {who}")
        # No number, or a critical one (RFC 5280 5.2.3): CrlNumberInvalid. The
        # rollback check below rests on that number.
        number = indexed.check_number()
        if indexed.has_duplicates:
            raise MalformedCertificate("revocation list", f"{who}'s list names a serial twice")
        if not indexed.usable:
            # The store keeps one complete list per authority; a delta or a
            # partial list in its place would leave every certificate of that
            # authority without a usable list.
            raise MalformedCertificate(
                "revocation list",
                f"{who}'s list is a delta or partial list; the box keeps complete lists only",
            )
        stem = _file_stem(issuer.subject)
        try:
            held = self._load(stem)
        except MalformedCertificate as damaged:
            self._set_aside(stem, who, damaged)
            held = None
            self._check_replacement(who, number, indexed, self._ledger().get(stem))
        # A held list refused for its number (kept by an older release) still
        # has its number read, so that only a newer list replaces it.
        if held is not None and held.number is not None:
            if number < held.number or (number == held.number and held.crl != crl):
                raise CrlRollback(who, number, held.number)
            if number == held.number:
                return held  # the same list again: nothing to do
        target = self.path / f"{stem}.crl"
        _atomic_write(target, _der(crl))
        stat = target.stat()
        self._cache[stem] = ((stat.st_mtime_ns, stat.st_size), indexed)
        self._record_number(stem, number)
        self._raise_floor(indexed.this_update)
        return indexed

    # -- the ledger of accepted numbers, and damaged lists -------------------

    def _ledger(self) -> dict[str, int]:
        try:
            saved = json.loads((self.path / _LEDGER_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}  # a damaged ledger: the time floor still bounds replays
        if not isinstance(saved, dict):
            return {}
        return {k: v for k, v in saved.items() if isinstance(v, int) and not isinstance(v, bool)}

    def _record_number(self, stem: str, number: int) -> None:
        ledger = self._ledger()
        if ledger.get(stem, -1) < number:
            ledger[stem] = number
            _atomic_write(self.path / _LEDGER_FILE, json.dumps(ledger, sort_keys=True).encode())

    def _set_aside(self, stem: str, who: str, damaged: MalformedCertificate) -> None:
        """Move a cached list that no longer parses out of the way (kept for support)."""
        target = self.path / f"{stem}.crl"
        os.replace(target, target.with_name(f"{target.name}.damaged"))
        self._cache.pop(stem, None)
        log.warning(
            "the cached revocation list of %s was damaged and is replaced: %s", who, damaged
        )

    def _check_replacement(
        self, who: str, number: int, offered: IndexedCrl, recorded: int | None
    ) -> None:
        """The rollback rule for a list that replaces a damaged one."""
        if recorded is not None:
            if number < recorded:
                raise CrlRollback(who, number, recorded)
            return
        if offered.this_update < self.time_floor:
            raise CrlRollback(who, number, None)

    def _load(self, stem: str) -> IndexedCrl | None:
        target = self.path / f"{stem}.crl"
        try:
            stat = target.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(stem)
        if cached is not None and cached[0] == key:
            return cached[1]
        indexed = IndexedCrl(load_crl(target.read_bytes()))
        self._cache[stem] = (key, indexed)
        return indexed

    def crls_for(self, issuer: x509.Name) -> Iterable[IndexedCrl]:
        """The list held for ``issuer`` (at most one: the newest accepted)."""
        held = self._load(_file_stem(issuer))
        return [] if held is None or held.issuer != issuer else [held]

    def held(self) -> list[IndexedCrl]:
        """Every list in the store."""
        found = (self._load(p.stem) for p in sorted(self.path.glob("*.crl")))
        return [c for c in found if c is not None]


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)
