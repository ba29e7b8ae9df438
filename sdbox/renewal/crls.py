"""CRL refresh: fetch each CA's list from its distribution point, keep only better ones.

A download replaces the cached list only if it parses, is signed by the CA
it names, is fresh (nextUpdate not passed, thisUpdate not in the future) and
its CRL number is higher than the one held (:class:`RevocationStore` checks
signature and number and replaces atomically, then advances the time floor).
Anything else keeps the previous copy and is reported.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509

from sdbox.errors import SdboxError
from sdbox.trust.errors import BadSignature, ClockWrong, CrlRollback, MalformedCertificate
from sdbox.trust.loaders import load_crl
from sdbox.trust.store import RevocationStore

_MAX_CRL_BYTES = 64 << 20
_CLOCK_SKEW = timedelta(minutes=5)


class RefreshStatus(StrEnum):
    """What happened to one distribution point."""

    UPDATED = "updated"
    UNCHANGED = "unchanged"
    UNREACHABLE = "unreachable"
    MALFORMED = "malformed"
    UNKNOWN_ISSUER = "unknown_issuer"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    NOT_YET_VALID = "not_yet_valid"
    ROLLBACK = "rollback"
    CLOCK_PROBLEM = "clock_problem"


@dataclass(frozen=True)
class RefreshResult:
    """One distribution point's result."""

    url: str
    status: RefreshStatus
    detail: str = ""
    issuer: str = ""
    number: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the cache now holds this CA's newest acceptable list."""
        return self.status in (RefreshStatus.UPDATED, RefreshStatus.UNCHANGED)

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {
            "url": self.url,
            "status": self.status.value,
            "detail": self.detail,
            "issuer": self.issuer,
            "crl_number": self.number,
        }


def distribution_points(certificates: Iterable[x509.Certificate]) -> list[str]:
    """The HTTP CRL distribution points named by ``certificates``, in order, once each."""
    urls: list[str] = []
    for cert in certificates:
        try:
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        except x509.ExtensionNotFound:
            continue
        for point in points:
            for name in point.full_name or []:
                if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                    ("http://", "https://")
                ) and name.value not in urls:  # fmt: skip
                    urls.append(name.value)
    return urls


def fetch(url: str, timeout_s: float) -> bytes:
    """One CRL download (raises OSError-like errors on failure)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310  (configured URL)
        data: bytes = answer.read(_MAX_CRL_BYTES + 1)
    if len(data) > _MAX_CRL_BYTES:
        raise OSError("the CRL is larger than 64 MiB")
    return data


def refresh(
    store: RevocationStore,
    urls: Iterable[str],
    issuers: Iterable[x509.Certificate],
    *,
    now: datetime,
    timeout_s: float = 10.0,
) -> list[RefreshResult]:
    """Refresh the cached CRL behind every URL; see the module docstring."""
    known = list(issuers)
    results = []
    floor = store.time_floor
    for url in urls:
        if now < floor:
            results.append(
                RefreshResult(url, RefreshStatus.CLOCK_PROBLEM, ClockWrong(now, floor).message)
            )
            continue
        results.append(_refresh_one(store, url, known, now=now, timeout_s=timeout_s))
    return results


def _refresh_one(
    store: RevocationStore,
    url: str,
    issuers: list[x509.Certificate],
    *,
    now: datetime,
    timeout_s: float,
) -> RefreshResult:
    try:
        data = fetch(url, timeout_s)
    except urllib.error.HTTPError as exc:
        return RefreshResult(
            url, RefreshStatus.UNREACHABLE, f"HTTP {exc.code}; the cached list is kept"
        )
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        return RefreshResult(url, RefreshStatus.UNREACHABLE, f"{exc}; the cached list is kept")
    try:
        crl = load_crl(data)
    except SdboxError as exc:
        return RefreshResult(url, RefreshStatus.MALFORMED, exc.message)
    who = crl.issuer.rfc4514_string()
    issuer = next((c for c in issuers if c.subject == crl.issuer), None)
    if issuer is None:
        return RefreshResult(
            url, RefreshStatus.UNKNOWN_ISSUER, f"no trusted CA is named {who}", who
        )
    next_update = crl.next_update_utc
    if next_update is None or next_update < now:
        return RefreshResult(
            url, RefreshStatus.STALE,
            f"the list's nextUpdate ({next_update}) has passed; the cached list is kept", who,
        )  # fmt: skip
    if crl.last_update_utc > now + _CLOCK_SKEW:
        return RefreshResult(
            url, RefreshStatus.NOT_YET_VALID,
            f"the list was issued in the future ({crl.last_update_utc}): check the clock", who,
        )  # fmt: skip
    held = next(iter(store.crls_for(crl.issuer)), None)
    try:
        indexed = store.accept(data, issuer)
    except BadSignature as exc:
        return RefreshResult(url, RefreshStatus.BAD_SIGNATURE, exc.message, who)
    except CrlRollback as exc:
        return RefreshResult(url, RefreshStatus.ROLLBACK, exc.message, who)
    except MalformedCertificate as exc:
        return RefreshResult(url, RefreshStatus.MALFORMED, exc.message, who)
    unchanged = held is not None and held.number == indexed.number
    status = RefreshStatus.UNCHANGED if unchanged else RefreshStatus.UPDATED
    return RefreshResult(url, status, "", who, indexed.number)
