"""The box's CRL cache: verified, never rolled back, replaced whole; the clock floor."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.trust import Purpose, validate
from sdbox.trust.bench import big_crl
from sdbox.trust.errors import (
    BadSignature,
    CertificateRevoked,
    ClockWrong,
    CrlRollback,
    MalformedCertificate,
)
from sdbox.trust.pki import Pki
from sdbox.trust.revocation import _IndexCache
from sdbox.trust.store import RevocationStore

from .conftest import T0

AT = T0 + timedelta(days=30)


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def _store(tmp_path: Path) -> RevocationStore:
    return RevocationStore(tmp_path / "crls", build_time=T0)


def test_accepted_crl_survives_a_restart_and_revokes(pki: Pki, tmp_path: Path) -> None:
    cert = pki.issue_project(
        "p", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="x", not_before=T0
    )
    pki.revoke(cert, x509.ReasonFlags.key_compromise, when=T0 + timedelta(days=1))
    store = _store(tmp_path)
    store.accept(_der(pki.crl("project-ca", now=AT)), pki.project_ca.cert)
    store.accept(_der(pki.crl("root", now=AT)), pki.root.cert)
    restarted = _store(tmp_path)  # a new process: only the files remain
    with pytest.raises(CertificateRevoked):
        validate(
            cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=restarted
        )


def test_an_older_crl_never_replaces_a_newer_one(pki: Pki, tmp_path: Path) -> None:
    store = _store(tmp_path)
    older = pki.crl("project-ca", now=AT)
    newer = pki.crl("project-ca", now=AT + timedelta(hours=1))
    store.accept(_der(newer), pki.project_ca.cert)
    with pytest.raises(CrlRollback, match="never go backwards"):
        store.accept(_der(older), pki.project_ca.cert)
    held = list(store.crls_for(pki.project_ca.cert.subject))
    assert [c.number for c in held] == [
        newer.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    ]
    store.accept(_der(newer), pki.project_ca.cert)  # the same list again is harmless


def test_a_crl_signed_by_another_key_is_not_stored(pki: Pki, tmp_path: Path) -> None:
    rogue = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.project_ca.cert.subject)
        .last_update(AT)
        .next_update(AT + timedelta(days=1))
        .add_extension(x509.CRLNumber(10**6), critical=False)
        .sign(rogue, hashes.SHA256())
    )
    store = _store(tmp_path)
    with pytest.raises(BadSignature):
        store.accept(_der(forged), pki.project_ca.cert)
    assert list(store.crls_for(pki.project_ca.cert.subject)) == []


def test_a_crl_from_another_issuer_is_refused(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(BadSignature, match="claims to be from"):
        _store(tmp_path).accept(_der(pki.crl("server-ca", now=AT)), pki.project_ca.cert)


def test_duplicate_serials_are_refused(pki: Pki, tmp_path: Path) -> None:
    crl, serials = big_crl(pki.project_ca, entries=3, now=AT, number=5, extra=[])
    dup, _ = big_crl(pki.project_ca, entries=0, now=AT, number=6, extra=[serials[0], serials[0]])
    store = _store(tmp_path)
    store.accept(_der(crl), pki.project_ca.cert)
    with pytest.raises(MalformedCertificate, match="twice"):
        store.accept(_der(dup), pki.project_ca.cert)


def test_garbage_is_a_malformed_list_and_leaves_the_held_one(pki: Pki, tmp_path: Path) -> None:
    store = _store(tmp_path)
    good = pki.crl("project-ca", now=AT)
    store.accept(_der(good), pki.project_ca.cert)
    with pytest.raises(MalformedCertificate):
        store.accept(_der(good)[:-40], pki.project_ca.cert)
    assert [c.crl for c in store.crls_for(pki.project_ca.cert.subject)] == [good]
    assert not list((tmp_path / "crls").glob(".*.tmp"))


def test_time_floor_rises_with_accepted_crls_and_refuses_an_earlier_clock(
    pki: Pki, tmp_path: Path
) -> None:
    store = _store(tmp_path)
    assert store.time_floor == T0
    store.accept(_der(pki.crl("project-ca", now=AT)), pki.project_ca.cert)
    store.accept(_der(pki.crl("root", now=AT)), pki.root.cert)
    assert _store(tmp_path).time_floor == AT
    cert = pki.issue_project(
        "p", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="x", not_before=T0
    )
    with pytest.raises(ClockWrong, match="clock is wrong"):
        validate(
            cert,
            pki.intermediates,
            [pki.root.cert],
            at=AT - timedelta(days=1),
            purpose=Purpose.PROJECT,
            crls=store,
        )
    validate(cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=store)


def test_clock_below_the_build_time_is_refused(pki: Pki, tmp_path: Path) -> None:
    store = RevocationStore(tmp_path / "crls", build_time=T0 + timedelta(days=400))
    with pytest.raises(ClockWrong):
        validate(
            pki.directory_signer.cert,
            pki.intermediates,
            [pki.root.cert],
            at=T0 + timedelta(days=1),
            purpose=Purpose.DIRECTORY_SIGNING,
            crls=store,
        )


def test_big_crl_lookup_finds_revoked_serials(pki: Pki, tmp_path: Path) -> None:
    crl, serials = big_crl(pki.project_ca, entries=5000, now=AT, number=7)
    store = _store(tmp_path)
    indexed = store.accept(_der(crl), pki.project_ca.cert)
    assert len(indexed) == 5000
    entry = indexed.lookup(serials[1234])
    assert entry is not None
    assert entry.reason is x509.ReasonFlags.key_compromise
    assert indexed.lookup(1) is None


def test_the_index_cache_lets_go_of_big_lists_first(pki: Pki) -> None:
    # Bounded by serials held as well as by lists, so that a few big lists
    # handed to validate() do not stay in memory for good.
    cache = _IndexCache(size=8, entries=4)
    big, _ = big_crl(pki.project_ca, entries=3, now=AT, number=1)
    other, _ = big_crl(pki.project_ca, entries=3, now=AT, number=2)
    first = cache.get(big)
    assert cache.get(big) is first
    cache.get(other)  # 6 serials held: the older list goes
    assert cache.get(big) is not first
    lonely, _ = big_crl(pki.project_ca, entries=5, now=AT, number=3)
    assert cache.get(lonely) is cache.get(lonely)  # the newest list always stays


def _damage(store: RevocationStore, pki: Pki) -> Path:
    """Truncate the project CA's cached list (the file of the CA whose serial is listed)."""
    (cached,) = [
        p
        for p in store.path.glob("*.crl")
        if x509.load_der_x509_crl(p.read_bytes()).issuer == pki.project_ca.cert.subject
    ]
    cached.write_bytes(cached.read_bytes()[:40])  # a truncated file: no longer a CRL
    return cached


def test_a_damaged_cached_crl_fails_closed_and_does_not_block_its_refresh(
    pki: Pki, tmp_path: Path
) -> None:
    cert = pki.issue_project(
        "p", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="x", not_before=T0
    )
    store = _store(tmp_path)
    store.accept(_der(pki.crl("project-ca", now=AT)), pki.project_ca.cert)
    store.accept(_der(pki.crl("root", now=AT)), pki.root.cert)
    cached = _damage(store, pki)
    damaged = _store(tmp_path)
    with pytest.raises(MalformedCertificate):  # no revocation answer: refused, not waved through
        validate(
            cert, pki.intermediates, [pki.root.cert], at=AT, purpose=Purpose.PROJECT, crls=damaged
        )
    later = AT + timedelta(hours=1)
    damaged.accept(_der(pki.crl("project-ca", now=later)), pki.project_ca.cert)
    assert cached.with_name(cached.name + ".damaged").exists()  # kept for a support ticket
    validate(
        cert, pki.intermediates, [pki.root.cert], at=later, purpose=Purpose.PROJECT, crls=damaged
    )


def test_a_damaged_cached_crl_still_refuses_a_replayed_older_list(pki: Pki, tmp_path: Path) -> None:
    store = _store(tmp_path)
    older = pki.crl("project-ca", now=AT)
    store.accept(_der(older), pki.project_ca.cert)
    store.accept(_der(pki.crl("project-ca", now=AT + timedelta(hours=1))), pki.project_ca.cert)
    _damage(store, pki)
    with pytest.raises(CrlRollback, match="already holds number"):
        _store(tmp_path).accept(_der(older), pki.project_ca.cert)


def test_without_a_recorded_number_a_replacement_must_reach_the_time_floor(
    pki: Pki, tmp_path: Path
) -> None:
    store = _store(tmp_path)
    older = pki.crl("project-ca", now=AT)
    store.accept(_der(older), pki.project_ca.cert)
    store.accept(_der(pki.crl("project-ca", now=AT + timedelta(hours=1))), pki.project_ca.cert)
    _damage(store, pki)
    (store.path / "crl-numbers.json").unlink()  # a store written before the ledger existed
    with pytest.raises(CrlRollback, match="damaged"):
        _store(tmp_path).accept(_der(older), pki.project_ca.cert)
    _store(tmp_path).accept(
        _der(pki.crl("project-ca", now=AT + timedelta(hours=2))), pki.project_ca.cert
    )
