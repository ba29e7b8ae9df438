"""Signature (9A) and ECDH (project keys), each checked against the card's own certificate."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hwtests.bench import Bench
from hwtests.plugin import RecordProperty, milliseconds
from sdbox.smartcard.biosso import BioSsoSession


@pytest.mark.scenario("signature (9A) verified with the holder certificate")
def test_holder_signature_verifies_with_its_certificate(
    verified_card: BioSsoSession, record_property: RecordProperty
) -> None:
    from sdbox.smartcard.piv import public_key_digest_algorithm
    from sdbox.smartcard.profile import Slot

    cert = verified_card.certificate(Slot.AUTHENTICATION)
    challenge = os.urandom(32)
    started = time.perf_counter()
    signature = verified_card.sign(challenge, certificate=cert)
    elapsed = time.perf_counter() - started
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = public_key_digest_algorithm(key)
        key.verify(signature, challenge, ec.ECDSA(algorithm))  # InvalidSignature fails the test
        kind = f"ECDSA {key.curve.name}"
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, challenge, padding.PKCS1v15(), hashes.SHA256())
        kind = f"RSA {key.key_size}"
    else:
        pytest.skip(f"the holder key is {type(key).__name__}: neither EC nor RSA")
    record_property("sign_ms", milliseconds(elapsed))
    record_property("key", kind)


@pytest.mark.scenario("ECDH (project keys) verified with their certificates")
def test_project_keys_agree_with_their_certificates(
    bench: Bench, verified_card: BioSsoSession, record_property: RecordProperty
) -> None:
    bench.require(lambda c: c.multi_project, "one-project card: its project key is the 9A key, "
                  "checked by the signature scenario")  # fmt: skip
    bench.require(lambda c: c.possession_by_ecdh, "RSA project keys: no ECDH, possession is "
                  "proven by a signature (docs/card-variants.md)")  # fmt: skip
    directory = verified_card.read_signed_directory().directory  # slots only; keys checked below
    if not directory.projects:
        pytest.skip("the card's directory lists no project")
    times: list[float] = []
    for project in directory.projects:
        cert = verified_card.certificate(project.slot)
        der = cert.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).digest() == project.certificate_sha256, (
            f"slot {project.slot:02X}: the certificate is not the one the directory names"
        )
        public = cert.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            pytest.fail(f"slot {project.slot:02X}: a project key must be EC (key agreement)")
        ephemeral = ec.generate_private_key(public.curve)
        started = time.perf_counter()
        shared = verified_card.ecdh(project.slot, ephemeral.public_key())
        times.append(time.perf_counter() - started)
        assert shared == ephemeral.exchange(ec.ECDH(), public), (
            f"slot {project.slot:02X}: the card's key does not match its certificate"
        )
    record_property("projects", len(directory.projects))
    record_property("ecdh_max_ms", milliseconds(max(times)))
