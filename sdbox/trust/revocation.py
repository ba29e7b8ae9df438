"""Revocation checking against CRLs (``cryptography`` has no revocation API).

A CRL is indexed once (serial -> entry, a dict: O(1) per lookup however long
the list) and its signature is verified once per issuer key, then cached, so
that validating a chain against a 100,000-entry CRL costs a few dictionary
lookups. That holds for a plain list of CRLs too: :func:`indexed` remembers
the index of the last few CRL objects it was given, by identity (hashing the
DER would cost as much as indexing: cryptography re-encodes a 100,000-entry
list in about 200 ms). Checking a certificate needs the CRL of its issuer
that (1) names that issuer, (2) verifies under the issuer's key, (3) carries
a non-critical CRL number (RFC 5280 5.2.3: rollback protection rests on it),
(4) is fresh at the validation time (nextUpdate plus grace) and (5) covers
that kind of certificate; otherwise the answer is a refusal that says what
was missing, never a silent pass.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import CRLEntryExtensionOID, ExtensionOID

from sdbox.trust.errors import (
    BadSignature,
    CertificateRevoked,
    CrlMissing,
    CrlNumberInvalid,
    CrlStale,
    MalformedCertificate,
)
from sdbox.trust.names import describe, subject_of

# CRL extensions we understand: anything else marked critical makes the CRL
# unusable (RFC 5280 5.2), which we report as "no usable CRL".
_KNOWN_CRL_EXTENSIONS = {
    ExtensionOID.CRL_NUMBER,
    ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT,
    ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
}
_KNOWN_ENTRY_EXTENSIONS = {
    CRLEntryExtensionOID.CRL_REASON,
    CRLEntryExtensionOID.INVALIDITY_DATE,
}


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None


class IndexedCrl:
    """A parsed CRL with an O(1) serial index and a cached signature check."""

    def __init__(self, crl: x509.CertificateRevocationList) -> None:
        self.crl = crl
        self.issuer = crl.issuer
        self.this_update = crl.last_update_utc
        self.next_update = crl.next_update_utc
        try:
            self.number, self.number_problem = _crl_number(crl)
            self.usable, self.scope, self.delta_base = _scope(crl)
        except (ValueError, KeyError) as exc:  # an extension that does not parse
            raise MalformedCertificate("revocation list", str(exc)[:160]) from exc
        # Entries stay unparsed until hit: only serials are read up front,
        # which is what keeps loading 100,000 entries well under a second.
        self._index: dict[int, x509.RevokedCertificate] = {}
        duplicates = False
        try:
            for revoked in crl:
                serial = revoked.serial_number
                duplicates |= serial in self._index
                self._index[serial] = revoked
        except (ValueError, KeyError) as exc:
            raise MalformedCertificate("revocation list", str(exc)[:160]) from exc
        self.has_duplicates = duplicates
        self._verified_keys: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._index)

    def verify_signature(self, issuer: x509.Certificate) -> bool:
        """Whether ``issuer``'s key signed this CRL (cached per key)."""
        key = issuer.public_key()
        key_der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if key_der in self._verified_keys:
            return True
        try:
            ok = self.crl.is_signature_valid(key)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            ok = False
        if ok:
            self._verified_keys.add(key_der)
        return ok

    def lookup(self, serial: int) -> RevokedEntry | None:
        """The entry for ``serial``, or None if it is not on this list."""
        revoked = self._index.get(serial)
        if revoked is None:
            return None
        reason: x509.ReasonFlags | None = None
        try:  # entries are decoded only now (see __init__): damage surfaces here
            extensions = revoked.extensions
            revoked_at = revoked.revocation_date_utc
        except (ValueError, KeyError) as exc:
            raise MalformedCertificate("revocation list", str(exc)[:160]) from exc
        for ext in extensions:
            if ext.oid == CRLEntryExtensionOID.CRL_REASON:
                assert isinstance(ext.value, x509.CRLReason)
                reason = ext.value.reason
            elif ext.critical and ext.oid not in _KNOWN_ENTRY_EXTENSIONS:
                raise MalformedCertificate(
                    "revocation list",
                    f"entry with unknown critical extension {ext.oid.dotted_string}",
                )
        return RevokedEntry(serial, revoked_at, reason)

    def check_number(self) -> int:
        """The list's CRL number; refused unless present and non-critical (RFC 5280 5.2.3)."""
        if self.number_problem is not None or self.number is None:
            raise CrlNumberInvalid(describe(self.issuer), self.number_problem or "has no CRL number")
        return self.number


# Enough for every CA's complete and delta list in a test or a one-off check.
# Each entry keeps its CRL (and so its id) alive, and the index of 100,000
# entries takes some 15 MB of Python objects: past _CACHE_ENTRIES serials in
# all, the oldest lists go first (the newest always stays).
_CACHE_SIZE = 8
_CACHE_ENTRIES = 300_000


class _IndexCache:
    """The :class:`IndexedCrl` of each of the last few CRL objects, by identity."""

    def __init__(self, size: int, entries: int) -> None:
        self._size = size
        self._max_entries = entries
        self._entries: OrderedDict[int, tuple[x509.CertificateRevocationList, IndexedCrl]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()  # the broker validates from several threads

    def get(self, crl: x509.CertificateRevocationList) -> IndexedCrl:
        key = id(crl)
        with self._lock:
            hit = self._entries.get(key)
            # The entry holds its CRL, so no other object can have this id
            # while it is cached; the identity test says so once more.
            if hit is not None and hit[0] is crl:
                self._entries.move_to_end(key)
                return hit[1]
        indexed = IndexedCrl(crl)  # outside the lock: a big list takes a while
        with self._lock:
            self._entries[key] = (crl, indexed)
            self._entries.move_to_end(key)
            held = sum(len(i) for _, i in self._entries.values())
            while len(self._entries) > 1 and (
                len(self._entries) > self._size or held > self._max_entries
            ):
                _, (_, evicted) = self._entries.popitem(last=False)
                held -= len(evicted)
        return indexed


_INDEXES = _IndexCache(_CACHE_SIZE, _CACHE_ENTRIES)


def indexed(crl: x509.CertificateRevocationList) -> IndexedCrl:
    """``crl``'s index, built once per CRL object while it is among the last few used.

    A caller that parses the same bytes anew at every call gets a new object
    each time, and so pays the indexing each time: keep the object, or hold
    the lists in a :class:`CrlSet` or a :class:`~sdbox.trust.store.RevocationStore`.
    """
    return _INDEXES.get(crl)


@dataclass(frozen=True)
class _Scope:
    only_users: bool = False
    only_cas: bool = False
    # The distribution point the list is scoped to (IDP); None: the whole CA.
    point: frozenset[x509.GeneralName] | None = None
    relative: bool = False  # scoped by a relative name, which we do not resolve

    def covers(self, cert: x509.Certificate, is_ca: bool) -> bool:
        """Whether this list is authoritative for ``cert`` (RFC 5280 6.3.3 (b))."""
        if (self.only_cas and not is_ca) or (self.only_users and is_ca):
            return False
        if self.relative:
            return False
        if self.point is None:
            return True
        try:
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            return False  # a partitioned list, and the certificate names no partition
        return any(self.point & frozenset(dp.full_name or ()) for dp in points)


def _scope(crl: x509.CertificateRevocationList) -> tuple[bool, _Scope, int | None]:
    """Whether ``crl`` is a complete list, which certificates it covers, and its delta base.

    A delta CRL (``delta_base`` set) is not complete on its own; validation
    reads it on top of the complete list it extends.
    """
    scope = _Scope()
    delta_base: int | None = None
    usable = True
    for ext in crl.extensions:
        if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            assert isinstance(ext.value, x509.DeltaCRLIndicator)
            delta_base = ext.value.crl_number
            usable = False
        elif ext.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT:
            idp = ext.value
            assert isinstance(idp, x509.IssuingDistributionPoint)
            if idp.indirect_crl or idp.only_some_reasons or idp.only_contains_attribute_certs:
                return False, scope, None  # partial lists: not supported by this profile
            scope = _Scope(
                idp.only_contains_user_certs,
                idp.only_contains_ca_certs,
                frozenset(idp.full_name) if idp.full_name else None,
                idp.relative_name is not None,
            )
        elif ext.critical and ext.oid not in _KNOWN_CRL_EXTENSIONS:
            return False, scope, None
    return usable, scope, delta_base


def _crl_number(crl: x509.CertificateRevocationList) -> tuple[int | None, str | None]:
    """The list's CRL number, and what is wrong with it (None: nothing).

    A critical number is still read: the store compares it with the list it
    replaces, so that a refused list can be replaced by a good one, never by
    an older one.
    """
    try:
        ext = crl.extensions.get_extension_for_class(x509.CRLNumber)
    except x509.ExtensionNotFound:
        return None, "has no CRL number"
    if ext.critical:
        return ext.value.crl_number, "marks its CRL number critical"
    return ext.value.crl_number, None


class CrlSource(Protocol):
    """Where validation finds CRLs: an in-memory set or the on-disk store."""

    def crls_for(self, issuer: x509.Name) -> Iterable[IndexedCrl]:
        """Usable candidate CRLs whose issuer is ``issuer``, newest first."""
        ...

    @property
    def time_floor(self) -> datetime | None:
        """A time below which validation must refuse (None: no floor)."""
        ...


@dataclass
class CrlSet:
    """CRLs held in memory (tests, one-off checks); no time floor."""

    crls: Iterable[x509.CertificateRevocationList] = ()
    _by_issuer: dict[x509.Name, list[IndexedCrl]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for crl in self.crls:
            self.add(crl)

    def add(self, crl: x509.CertificateRevocationList | IndexedCrl) -> None:
        """Add one CRL."""
        indexed_crl = crl if isinstance(crl, IndexedCrl) else indexed(crl)
        bucket = self._by_issuer.setdefault(indexed_crl.issuer, [])
        bucket.append(indexed_crl)
        bucket.sort(key=lambda c: (c.number or -1, c.this_update), reverse=True)

    def crls_for(self, issuer: x509.Name) -> Iterable[IndexedCrl]:
        """Candidate CRLs of ``issuer``, newest first."""
        return self._by_issuer.get(issuer, [])

    @property
    def time_floor(self) -> datetime | None:
        """In-memory sets keep no floor."""
        return None


def as_source(crls: CrlSource | Iterable[x509.CertificateRevocationList]) -> CrlSource:
    """Accept a list of CRLs wherever a :class:`CrlSource` is expected."""
    if hasattr(crls, "crls_for"):
        return cast(CrlSource, crls)
    return CrlSet(list(crls))


def check_certificate(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    source: CrlSource,
    *,
    at: datetime,
    grace: timedelta,
) -> None:
    """Refuse ``cert`` if it is revoked or its status cannot be known."""
    issuer_name = describe(issuer.subject)
    if not _may_sign_crls(issuer):
        # A list signed by a key not certified for it is no list (RFC 5280 6.3.3 (f)).
        raise CrlMissing(issuer_name)
    is_ca = _is_ca(cert)
    candidates = [c for c in source.crls_for(cert.issuer) if c.usable]
    if not candidates:
        raise CrlMissing(issuer_name)
    signed = [c for c in candidates if c.verify_signature(issuer)]
    if not signed:
        raise BadSignature(f"the revocation list of {issuer_name}")
    for crl in signed:
        # A list the issuer signed but without a usable number is refused,
        # not skipped: skipping it could leave an older list to decide.
        crl.check_number()
    covering = [c for c in signed if c.scope.covers(cert, is_ca)]
    if not covering:
        raise CrlMissing(issuer_name)
    crl = covering[0]  # newest first
    if crl.next_update is None:
        raise MalformedCertificate("revocation list", f"{issuer_name}'s list has no nextUpdate")
    if at > crl.next_update + grace:
        raise CrlStale(issuer_name, crl.next_update)
    entry = crl.lookup(cert.serial_number)
    delta = _current_delta(cert, issuer, source, crl, is_ca, at=at, grace=grace)
    if delta is not None:  # newer than the complete list: what it says about the serial wins
        entry = delta.lookup(cert.serial_number) or entry
    if entry is None or entry.reason is x509.ReasonFlags.remove_from_crl:
        return
    reason = None if entry.reason is None else _REASON_WORDS.get(entry.reason, entry.reason.value)
    raise CertificateRevoked(subject_of(cert), entry.revoked_at, reason)


def _current_delta(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    source: CrlSource,
    base: IndexedCrl,
    is_ca: bool,
    *,
    at: datetime,
    grace: timedelta,
) -> IndexedCrl | None:
    """The newest delta CRL that extends ``base`` (RFC 5280 5.2.4, 6.3.3 (c)), if any.

    Only a delta signed by the issuer, covering the certificate, not stale,
    newer than ``base`` and built on a complete list no newer than ``base``
    counts; anything else is ignored, as if it were not there: the complete
    list alone still decides, which is never more lenient than with the delta.
    A delta the issuer signed without a usable CRL number (RFC 5280 5.2.4
    wants one in every delta) is refused like a complete list without one.
    """
    if base.number is None:
        return None
    for delta in source.crls_for(cert.issuer):
        if delta.delta_base is None:
            continue
        if delta.number_problem is not None and delta.verify_signature(issuer):
            delta.check_number()
        if delta.number is None:
            continue
        if delta.delta_base > base.number or delta.number <= base.number:
            continue
        if delta.next_update is None or at > delta.next_update + grace:
            continue
        if delta.scope.covers(cert, is_ca) and delta.verify_signature(issuer):
            return delta
    return None


def _may_sign_crls(issuer: x509.Certificate) -> bool:
    try:
        return issuer.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        return True  # no key usage: no restriction


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


_REASON_WORDS = {
    x509.ReasonFlags.unspecified: "unspecified",
    x509.ReasonFlags.key_compromise: "the key was compromised",
    x509.ReasonFlags.ca_compromise: "the authority was compromised",
    x509.ReasonFlags.affiliation_changed: "the holder's affiliation changed",
    x509.ReasonFlags.superseded: "it was replaced",
    x509.ReasonFlags.cessation_of_operation: "it is no longer used",
    x509.ReasonFlags.certificate_hold: "it is on hold",
    x509.ReasonFlags.privilege_withdrawn: "access was withdrawn",
    x509.ReasonFlags.aa_compromise: "the attribute authority was compromised",
}
