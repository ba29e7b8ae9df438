"""Renewal on a spare slot: one project's certificate renewed through :class:`sdbox.renewal.flow.Renewer`.

Emulated target: OpenSSL's CMP mock server (``openssl cmp -port``) on
loopback is the CA, from the repository's test harness
(:mod:`tests.integration.cmp_ca`, shared with tests/integration/test_renewal.py);
the centre (9B relay, directory signing) is :class:`~sdbox.renewal.ports.LocalCentre`
on the bench's throw-away PKI. The mock serves one canned certificate, issued
for the key the emulated card will generate (its key generation is
deterministic) and carrying the old certificate's serial, which OpenSSL
3.0's mock checks.

After the run, on a fresh connection, what the holder would notice: the
directory still verifies and lists every project, and the renewed project
works with its new certificate (the slot the directory names holds it, the
card's ECDH with that slot matches the new certificate's key, and the
certificate validates for the project).

Real bench: skipped, with the reason. Renewal needs the centre (the card
management key and the directory-signing key) and a CA's CMP endpoint; this
build has only the development centre and the suite takes neither
(docs/hwtests.md says what a real-bench run would need).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty
from sdbox.smartcard.biosso import BioSsoSession

pytestmark = pytest.mark.writes

REAL_BENCH_SKIP = (
    "renewal on a real card needs the centre (the card management key 9B and the "
    "directory-signing key) and a CA's CMP endpoint with its pinned server certificate; this "
    "build has only the development centre and the suite takes neither: run `sdbox renew` "
    "against a test CA on the enrolment station (docs/hwtests.md)"
)


class _TimedTransport:
    """The real HTTP transport, timing each exchange with the CA (its share of the renewal)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.exchanges = 0
        self.seconds = 0.0

    def post(self, der: bytes) -> bytes:
        started = time.perf_counter()
        try:
            answer: bytes = self.inner.post(der)
        finally:
            self.exchanges += 1
            self.seconds += time.perf_counter() - started
        return answer


@pytest.mark.scenario("renewal on a spare slot")
def test_renewal_on_a_spare_slot(
    bench: Bench,
    verified_card: BioSsoSession,
    tmp_path: Path,
    record_property: RecordProperty,
) -> None:
    if bench.emulated is None:
        pytest.skip(REAL_BENCH_SKIP)
    try:
        from tests.integration.cmp_ca import make_cmp_ca, renewed_certificate, revocation_store
    except ImportError:
        pytest.skip("the emulated CA needs the repository's test harness (tests/integration): "
                    "run from a checkout")  # fmt: skip
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the CA is `openssl cmp`'s mock server)")
    from sdbox.renewal.flow import Outcome, Renewer
    from sdbox.renewal.ports import HttpCmpTransport, LocalCentre, RenewalTrust
    from sdbox.renewal.state import Journal
    from sdbox.smartcard.emulator.state import CardState, deterministic_key
    from sdbox.smartcard.profile import KeyRef
    from sdbox.trust.pki import Pki

    emulated = bench.emulated
    state = emulated.state
    assert isinstance(state, CardState)
    assert state.keygen_seed is not None, "the emulated card's key generation is deterministic"
    validate_signer = bench.validate_signer()
    assert validate_signer is not None  # the emulated bench's PKI roots
    pki = Pki.open(emulated.pki_path)
    work = tmp_path

    before = verified_card.read_directory(validate_signer)
    if not before.projects:
        pytest.skip("the card's directory lists no project")
    project = before.projects[0]  # the first project: on the demo card, a slot in the middle
    old_cert = verified_card.certificate(project.slot)
    old_key = old_cert.public_key()
    assert isinstance(old_key, ec.EllipticCurvePublicKey)
    # the key the card's next GENERATE will produce, and the CA's answer for it
    new_key = deterministic_key(state.keygen_seed, state.keygen_counter, old_key.curve).public_key()
    canned = renewed_certificate(pki, old_cert, new_key)

    cmp_ca = make_cmp_ca(work, pki)
    trust = RenewalTrust(
        anchors=list(emulated.anchors), intermediates=list(pki.intermediates),
        crls=revocation_store(work / "crl", pki), cmp_server=cmp_ca.ra_cert,
        now=lambda: datetime.now(UTC),
    )  # fmt: skip
    with cmp_ca.mock(work).start(canned) as mock:
        transport = _TimedTransport(HttpCmpTransport(mock.url, timeout_s=5))
        renewer = Renewer(
            session=verified_card,
            centre=LocalCentre(emulated.pki_path, emulated.management_key),
            transport=transport,
            trust=trust, journal=Journal(work / "journal.json"), validate_signer=validate_signer,
            window=timedelta(days=0), max_wait_s=2.0,
        )  # fmt: skip
        verified_card.stack.stats.reset()
        started = time.perf_counter()
        results = {r.project: r for r in renewer.run(force=[project.id])}
        renew_s = time.perf_counter() - started
        apdus = verified_card.stack.stats.apdus
    result = results[project.id]
    assert result.outcome == Outcome.RENEWED, result
    assert result.new_slot is not None
    assert result.new_slot != project.slot

    # what the holder notices, on a fresh connection (as at the next insertion)
    with bench.session() as card:
        probe = bench.probe()
        assert probe is not None
        card.piv.verify_finger(KeyRef.FINGER_PRIMARY, probe)
        after = card.read_directory(validate_signer)  # verifies, or raises
        assert [p.id for p in after.projects] == [p.id for p in before.projects]
        renewed = after.project(project.id)
        assert renewed.slot == result.new_slot
        new_cert = card.certificate(renewed.slot)
        der = new_cert.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).digest() == renewed.certificate_sha256, (
            "the directory names a certificate the slot does not hold"
        )
        assert new_cert != old_cert
        assert new_cert.public_key() == new_key
        assert new_cert.not_valid_after_utc > old_cert.not_valid_after_utc
        assert renewed.not_after == new_cert.not_valid_after_utc
        ephemeral = ec.generate_private_key(new_key.curve)
        assert card.ecdh(renewed.slot, ephemeral.public_key()) == ephemeral.exchange(
            ec.ECDH(), new_key
        ), "the card's key in the new slot does not match the new certificate"
        trust.check_project(new_cert, project.id)
        for other in after.projects:  # the other projects are untouched
            if other.id != project.id:
                assert other == before.project(other.id)
    assert not list(work.glob("journal*-*.json")), "the journal was left behind"
    record_property("renew_s", round(renew_s, 3))
    record_property("apdus", apdus)
    record_property("cmp_exchanges", transport.exchanges)
    record_property("cmp_s", round(transport.seconds, 3))
    record_property("project", project.id)
    record_property("slots", f"{project.slot:02X}->{renewed.slot:02X}")
    record_property("not_after", new_cert.not_valid_after_utc.date().isoformat())
