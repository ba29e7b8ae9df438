"""Measure the trust path with a large CRL (``sdbox trust bench``, ``make bench``).

Returns figures, prints nothing: the CLI and ``benchmarks/bench_trust.py``
present them. Targets (issue 4): a 100,000-entry CRL loads in at most 1 s, a
lookup takes at most 50 µs, a full chain validation at most 5 ms (median).
Issue 15 holds ``validate()`` given a plain list of CRLs to the same 5 ms: its
first call with a list indexes the big CRL (as a load does), later calls with
the same list must not, so the bench reports that first call beside the
median and 95th percentile of the calls after it.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from sdbox.trust.pki import Issued, Pki
from sdbox.trust.revocation import CrlSource, IndexedCrl
from sdbox.trust.store import RevocationStore
from sdbox.trust.validate import Purpose, validate

TARGETS = {
    "crl_load_s": 1.0,
    "lookup_us": 50.0,
    "validate_median_ms": 5.0,
    "validate_list_median_ms": 5.0,
}


def big_crl(
    ca: Issued,
    *,
    entries: int,
    now: datetime,
    number: int,
    extra: Sequence[int] = (),
) -> tuple[x509.CertificateRevocationList, list[int]]:
    """A CRL of ``ca`` listing ``entries`` random serials (plus ``extra``)."""
    assert ca.key is not None
    key: CertificateIssuerPrivateKeyTypes = ca.key  # type: ignore[assignment]
    reason = x509.CRLReason(x509.ReasonFlags.key_compromise)
    serials = [secrets.randbits(159) | (1 << 158) for _ in range(entries)] + list(extra)
    # The builder's constructor takes the whole list at once: adding entries
    # one by one copies the list each time (quadratic, minutes for 100,000).
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(now - timedelta(days=1))
        .add_extension(reason, critical=False)
        .build()
        for serial in serials
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.cert.subject,
        last_update=now,
        next_update=now + timedelta(days=7),
        extensions=[x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number))],
        revoked_certificates=revoked,
    )
    return builder.sign(key, hashes.SHA256()), serials


def _time_validations(
    count: int,
    leaf: x509.Certificate,
    pki: Pki,
    crls: CrlSource | Sequence[x509.CertificateRevocationList],
    at: datetime,
) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        validate(
            leaf,
            pki.intermediates,
            [pki.root.cert],
            at=at,
            purpose=Purpose.PROJECT,
            crls=crls,
            project="bench",
        )
        times.append(time.perf_counter() - start)
    return times


def _p95(times: list[float]) -> float:
    return sorted(times)[int(len(times) * 0.95)]


def run(
    entries: int = 100_000,
    validations: int = 300,
    lookups: int = 100_000,
    list_validations: int = 300,
) -> dict[str, float]:
    """Build a PKI and a big CRL in a temporary directory, then time the four paths."""
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="sdbox-bench-") as tmp:
        pki = Pki.init(Path(tmp) / "pki", now=now - timedelta(days=1))
        leaf = pki.issue_project(
            "bench", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="Bench"
        )
        crl, serials = big_crl(pki.project_ca, entries=entries, now=now, number=1000)
        store = RevocationStore(Path(tmp) / "crls", build_time=now - timedelta(days=2))
        der = crl.public_bytes(serialization.Encoding.DER)
        store.accept(der, pki.project_ca.cert)
        store.accept(
            pki.crl("root", now=now).public_bytes(serialization.Encoding.DER), pki.root.cert
        )

        # Load: parse, index and verify the signature, as the box does at boot.
        loads = []
        for _ in range(3):
            start = time.perf_counter()
            indexed = IndexedCrl(x509.load_der_x509_crl(der))
            indexed.verify_signature(pki.project_ca.cert)
            loads.append(time.perf_counter() - start)

        # Half hits, half misses: a miss is the common case on a real box.
        probes = [
            serials[i % len(serials)] if i % 2 else secrets.randbits(159) for i in range(lookups)
        ]
        start = time.perf_counter()
        for serial in probes:
            indexed.lookup(serial)
        lookup_us = (time.perf_counter() - start) / lookups * 1e6

        times = _time_validations(validations, leaf, pki, store, now)

        # The same chain against a plain list (tests, one-off checks): the
        # objects stay the same from call to call, as a caller's would.
        plain = [x509.load_der_x509_crl(der), pki.crl("root", now=now)]
        first = _time_validations(1, leaf, pki, plain, now)[0]
        listed = _time_validations(list_validations, leaf, pki, plain, now)
    return {
        "crl_entries": float(entries),
        "crl_bytes": float(len(der)),
        "crl_load_s": statistics.median(loads),
        "lookup_us": lookup_us,
        "validate_median_ms": statistics.median(times) * 1e3,
        "validate_p95_ms": _p95(times) * 1e3,
        "validate_list_first_ms": first * 1e3,
        "validate_list_median_ms": statistics.median(listed) * 1e3,
        "validate_list_p95_ms": _p95(listed) * 1e3,
    }
