"""The broker's possession proof follows the project key: ECDH for EC keys, a signature for RSA.

The protocol logic is called directly (no HTTP, no bubble): a proof that
passes is seen going on to the box's signature check, one that fails is
refused as ``possession``.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sdbox.broker.server import Broker, BrokerConfig, BubbleConfig
from sdbox.centre.protocol import (
    POSSESSION_ECDH,
    POSSESSION_SIGNATURE,
    Refused,
    Transcript,
    proof_mac,
    signature_message,
)
from sdbox.trust.pki import CA_NAMES, Pki
from sdbox.trust.store import RevocationStore

ENDPOINT = "127.0.0.1:3389"
DER = serialization.Encoding.DER


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Broker:
    pem = serialization.Encoding.PEM
    (tmp_path / "anchors.pem").write_bytes(pki.root.cert.public_bytes(pem))
    (tmp_path / "intermediates.pem").write_bytes(
        b"".join(pki.authority(ca).cert.public_bytes(pem) for ca in CA_NAMES[1:])
    )
    store = RevocationStore(tmp_path / "crl", build_time=pki.root.cert.not_valid_before_utc)
    for ca in CA_NAMES:
        store.accept(pki.crl(ca).public_bytes(DER), pki.authority(ca).cert)
    config = BrokerConfig(
        tls_certificate=tmp_path / "unused.pem", tls_key=tmp_path / "unused.key",
        anchors=tmp_path / "anchors.pem", intermediates=tmp_path / "intermediates.pem",
        crl_dir=tmp_path / "crl", build_time=pki.root.cert.not_valid_before_utc.isoformat(),
        bubbles={"census-2021": BubbleConfig(endpoint=ENDPOINT, kind="rdp", sam_file="/nonexistent")},
    )  # fmt: skip
    return Broker(config)


def _open(
    broker: Broker, pki: Pki, project_key: Any
) -> tuple[dict[str, Any], Transcript, x509.Certificate]:
    box_key = ec.generate_private_key(ec.SECP256R1())
    box = pki.issue_box(box_key.public_key(), box_id="b1")
    project = pki.issue_project("census-2021", project_key.public_key(), subject_cn="Ada")
    b64 = base64.b64encode
    answer = broker.challenge({
        "project": "census-2021", "endpoint": ENDPOINT,
        "box_certificate": b64(box.public_bytes(DER)).decode(),
        "project_certificate": b64(project.public_bytes(DER)).decode(),
    })  # fmt: skip
    point = base64.b64decode(answer["ephemeral"]) if "ephemeral" in answer else b""
    transcript = Transcript(
        answer["exchange"], base64.b64decode(answer["nonce"]), "census-2021", ENDPOINT,
        box.public_bytes(DER), project.public_bytes(DER), point,
    )  # fmt: skip
    return answer, transcript, project


def _answer(broker: Broker, exchange: str, proof: bytes) -> None:
    broker.credential({
        "exchange": exchange, "proof": base64.b64encode(proof).decode(),
        "box_signature": base64.b64encode(b"not the box's").decode(),
    })  # fmt: skip


def test_an_rsa_key_is_asked_to_sign_and_a_good_signature_passes(broker: Broker, pki: Pki) -> None:
    key = rsa.generate_private_key(65537, 2048)
    answer, transcript, _ = _open(broker, pki, key)
    assert answer["possession"] == POSSESSION_SIGNATURE
    assert "ephemeral" not in answer
    signature = key.sign(signature_message(transcript), padding.PKCS1v15(), hashes.SHA256())
    with pytest.raises(Refused) as refused:  # past the card's proof: the box's own is next
        _answer(broker, answer["exchange"], signature)
    assert refused.value.code == "box_identity"


@pytest.mark.parametrize(
    "forge",
    [
        "another key",  # a copy of the certificate on a card without its key
        "no context",  # the transcript signed bare: replayable as something else
        "another exchange",  # a signature from an earlier exchange
        "pss",  # another padding: one algorithm, written in the protocol
    ],
)
def test_an_rsa_proof_that_is_not_this_cards_over_this_exchange_is_refused(
    broker: Broker, pki: Pki, forge: str
) -> None:
    key = rsa.generate_private_key(65537, 2048)
    answer, transcript, _ = _open(broker, pki, key)
    message, signer, pad = signature_message(transcript), key, padding.PKCS1v15()
    if forge == "another key":
        signer = rsa.generate_private_key(65537, 2048)
    elif forge == "no context":
        message = transcript.encode()
    elif forge == "another exchange":
        message = signature_message(_open(broker, pki, key)[1])
    else:
        pad = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH)  # type: ignore[assignment]
    with pytest.raises(Refused) as refused:
        _answer(broker, answer["exchange"], signer.sign(message, pad, hashes.SHA256()))
    assert refused.value.code == "possession"


def test_an_ec_key_still_proves_by_ecdh_and_a_signature_is_refused(
    broker: Broker, pki: Pki
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    answer, transcript, _ = _open(broker, pki, key)
    assert answer["possession"] == POSSESSION_ECDH
    signature = key.sign(signature_message(transcript), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(Refused) as refused:
        _answer(broker, answer["exchange"], signature)
    assert refused.value.code == "possession"
    answer, transcript, _ = _open(broker, pki, key)
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), transcript.ephemeral)
    with pytest.raises(Refused) as refused:
        _answer(broker, answer["exchange"], proof_mac(key.exchange(ec.ECDH(), peer), transcript))
    assert refused.value.code == "box_identity"


def test_an_rsa_project_certificate_for_key_agreement_is_refused(broker: Broker, pki: Pki) -> None:
    """Purpose.PROJECT: an RSA project key must be a signature key (it cannot agree keys)."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from sdbox.trust import oids
    from sdbox.trust.pki import _key_usage

    key = rsa.generate_private_key(65537, 2048)
    project = pki._issue(
        "project-ca", key.public_key(), subject_cn="Ada", not_before=None, not_after=None,
        key_usage=_key_usage(key_agreement=True), eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        san=[x509.UniformResourceIdentifier(oids.PROJECT_URN_PREFIX + "census-2021")],
    )  # fmt: skip
    box = pki.issue_box(ec.generate_private_key(ec.SECP256R1()).public_key(), box_id="b1")
    with pytest.raises(Refused, match="digital signature") as refused:
        broker.challenge({
            "project": "census-2021", "endpoint": ENDPOINT,
            "box_certificate": base64.b64encode(box.public_bytes(DER)).decode(),
            "project_certificate": base64.b64encode(project.public_bytes(DER)).decode(),
        })  # fmt: skip
    assert refused.value.code == "project_certificate"
