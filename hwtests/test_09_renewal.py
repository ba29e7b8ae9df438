"""Renewal on a spare slot: one project's certificate renewed through :class:`sdbox.renewal.flow.Renewer`.

Emulated target: OpenSSL's CMP mock server (``openssl cmp -port``) on
loopback is the CA, from the repository's test harness
(:mod:`tests.integration.cmp_ca`, shared with tests/integration/test_renewal.py);
the centre (9B relay, directory signing) is :class:`~sdbox.renewal.ports.LocalCentre`
on the bench's throw-away PKI. The mock serves one canned certificate, issued
for the key the emulated card will generate (its key generation is
deterministic) and carrying the old certificate's serial, which OpenSSL
3.0's mock checks.

Real bench: only with ``--allow-write`` and ``--renewal-config FILE``, an
agent configuration naming a test CA's CMP endpoint and pinned server
certificate ([renewal] cmp_url, cmp_server_cert), the trust store ([trust])
and the development centre that issued the test card (dev_centre_pki,
dev_management_key_file); otherwise it skips and says what is missing.

After the run, on a fresh connection, what the holder would notice: the
directory still verifies and lists every project, and the renewed project
works with its new certificate (the slot the directory names holds it, the
card's ECDH with that slot matches the new certificate's key, and the
certificate validates for the project); the other projects are untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Project

pytestmark = pytest.mark.writes

REAL_BENCH_SKIP = (
    "renewal on a real card needs a test CA and the centre that issued the card: give "
    "--renewal-config FILE ([renewal] cmp_url, cmp_server_cert, dev_centre_pki, "
    "dev_management_key_file; [trust]); the deployment's centre protocol is not in this build"
)


@dataclass
class _Ca:
    """What the Renewer talks to besides the card, and how the result is checked."""

    centre: Any  # sdbox.renewal.ports.Centre
    url: str
    trust: Any  # sdbox.renewal.ports.RenewalTrust
    journal: Path
    validate_signer: Callable[[x509.Certificate, list[x509.Certificate]], None]
    expected_key: ec.EllipticCurvePublicKey | None  # known in advance on the emulated card
    label: str


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


@contextlib.contextmanager
def _emulated_ca(bench: Bench, card: BioSsoSession, project: Project, work: Path) -> Iterator[_Ca]:
    """openssl's CMP mock on loopback, serving the certificate for the card's next key."""
    try:
        from tests.integration.cmp_ca import make_cmp_ca, renewed_certificate, revocation_store
    except ImportError:
        pytest.skip("the emulated CA needs the repository's test harness (tests/integration): "
                    "run from a checkout, or give a real bench --renewal-config")  # fmt: skip
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (the emulated CA is `openssl cmp`'s mock server)")
    from sdbox.renewal.ports import LocalCentre, RenewalTrust
    from sdbox.smartcard.emulator.state import CardState, deterministic_key
    from sdbox.trust.pki import Pki

    emulated = bench.emulated
    assert emulated is not None
    state = emulated.state
    assert isinstance(state, CardState)
    assert state.keygen_seed is not None, "the emulated card's key generation is deterministic"
    validate_signer = bench.validate_signer()
    assert validate_signer is not None  # the emulated bench's PKI roots
    pki = Pki.open(emulated.pki_path)
    old_key = card.certificate(project.slot).public_key()
    assert isinstance(old_key, ec.EllipticCurvePublicKey)
    # the key the card's next GENERATE will produce, and the CA's answer for it
    new_key = deterministic_key(state.keygen_seed, state.keygen_counter, old_key.curve).public_key()
    canned = renewed_certificate(pki, card.certificate(project.slot), new_key)
    cmp_ca = make_cmp_ca(work, pki)
    trust = RenewalTrust(
        anchors=list(emulated.anchors), intermediates=list(pki.intermediates),
        crls=revocation_store(work / "crl", pki), cmp_server=cmp_ca.ra_cert,
        now=lambda: datetime.now(UTC),
    )  # fmt: skip
    with cmp_ca.mock(work).start(canned) as mock:
        yield _Ca(
            centre=LocalCentre(emulated.pki_path, emulated.management_key), url=mock.url,
            trust=trust, journal=work / "journal.json", validate_signer=validate_signer,
            expected_key=new_key, label="openssl cmp mock (loopback)",
        )  # fmt: skip


@contextlib.contextmanager
def _configured_ca(path: Path, session: BioSsoSession) -> Iterator[_Ca]:
    """The test CA and the centre (broker or development) an agent configuration names."""
    from sdbox._cli.renew import _pems, _store
    from sdbox.agent.config import load
    from sdbox.agent.renewal import make_centre
    from sdbox.errors import SdboxError
    from sdbox.identity import IdentitySource
    from sdbox.renewal.ports import RenewalTrust
    from sdbox.trust import validate_directory_signer

    try:
        config = load(path)
        section = config.renewal
        if not section.cmp_url:
            pytest.fail(f"--renewal-config {path}: [renewal] cmp_url is not set")
        anchors = _pems(config.trust.anchors, "trust anchors", required=True)
        intermediates = _pems(config.trust.intermediates, "intermediates", required=False)
        server = _pems(section.cmp_server_cert, "[renewal] cmp_server_cert", required=True)[0]
        store = _store(config) if config.trust.check_revocation else None
        centre = make_centre(config, session, IdentitySource(config.identity.identity_config()))
    except SdboxError as exc:
        pytest.fail(f"--renewal-config {path}: {exc.message}")
    trust = RenewalTrust(anchors, intermediates, store, server, lambda: datetime.now(UTC))

    def validate_signer(signer: x509.Certificate, chain: list[x509.Certificate]) -> None:
        validate_directory_signer(
            signer, [*chain, *intermediates], anchors, at=trust.check_clock(), crls=store
        )

    yield _Ca(
        centre=centre, url=section.cmp_url, trust=trust, journal=section.journal,
        validate_signer=validate_signer, expected_key=None, label=section.cmp_url,
    )  # fmt: skip


@pytest.mark.scenario("renewal on a spare slot")
def test_renewal_on_a_spare_slot(
    bench: Bench, verified_card: BioSsoSession, tmp_path: Path, record_property: RecordProperty
) -> None:
    from sdbox.renewal.flow import Outcome, Renewer
    from sdbox.renewal.ports import HttpCmpTransport
    from sdbox.renewal.state import Journal
    from sdbox.smartcard.profile import KeyRef

    bench.require(lambda c: c.multi_project, "one-project card: not renewed on the box (no "
                  "directory to switch, no free slot); the card office re-issues it")  # fmt: skip
    bench.require(lambda c: c.possession_by_ecdh, "RSA project keys: not renewed on the box "
                  "(it generates EC keys); the card office re-issues them")  # fmt: skip
    if bench.emulated is None and bench.renewal_config is None:
        pytest.skip(REAL_BENCH_SKIP)
    before = verified_card.read_signed_directory().directory  # verified below, with the CA's trust
    if not before.projects:
        pytest.skip("the card's directory lists no project")
    project = before.projects[0]  # the first project: on the demo card, a slot in the middle
    old_cert = verified_card.certificate(project.slot)
    with contextlib.ExitStack() as stack:
        if bench.emulated is not None:
            ca = stack.enter_context(_emulated_ca(bench, verified_card, project, tmp_path))
        else:
            assert bench.renewal_config is not None
            ca = stack.enter_context(_configured_ca(bench.renewal_config, verified_card))
        verified_card.read_directory(ca.validate_signer)  # the card's directory verifies before
        transport = _TimedTransport(HttpCmpTransport(ca.url, timeout_s=10))
        renewer = Renewer(
            session=verified_card, centre=ca.centre, transport=transport, trust=ca.trust,
            journal=Journal(ca.journal), validate_signer=ca.validate_signer,
            window=timedelta(days=0), max_wait_s=5.0,
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
        after = card.read_directory(ca.validate_signer)  # verifies, or raises
        assert [p.id for p in after.projects] == [p.id for p in before.projects]
        renewed = after.project(project.id)
        assert renewed.slot == result.new_slot
        new_cert = card.certificate(renewed.slot)
        der = new_cert.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).digest() == renewed.certificate_sha256, (
            "the directory names a certificate the slot does not hold"
        )
        new_key = new_cert.public_key()
        assert isinstance(new_key, ec.EllipticCurvePublicKey)
        assert new_key != old_cert.public_key(), "the renewed certificate certifies the old key"
        if ca.expected_key is not None:
            assert new_key == ca.expected_key
        assert new_cert.not_valid_after_utc > old_cert.not_valid_after_utc
        ephemeral = ec.generate_private_key(new_key.curve)
        assert card.ecdh(renewed.slot, ephemeral.public_key()) == ephemeral.exchange(
            ec.ECDH(), new_key
        ), "the card's key in the new slot does not match the new certificate"
        ca.trust.check_project(new_cert, project.id)
        for other in after.projects:  # the other projects are untouched
            if other.id != project.id:
                assert other == before.project(other.id)
    assert not Journal(ca.journal).for_card(bench.guid).read(), "an unfinished renewal is noted"
    record_property("renew_s", round(renew_s, 3))
    record_property("apdus", apdus)
    record_property("cmp_exchanges", transport.exchanges)
    record_property("cmp_s", round(transport.seconds, 3))
    record_property("project", project.id)
    record_property("slots", f"{project.slot:02X}->{renewed.slot:02X}")
    record_property("not_after", new_cert.not_valid_after_utc.date().isoformat())
    record_property("ca", ca.label)
