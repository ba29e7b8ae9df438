"""Possession proofs: a card with the right key passes, a copied certificate does not."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from sdbox.trust.errors import PossessionFailed, WrongPurpose
from sdbox.trust.pki import Pki
from sdbox.trust.possession import CHALLENGE_CONTEXT, prove_key_agreement, prove_signature

from .conftest import T0


class SoftCard:
    """A card stand-in: one private key per slot, and a log of what it was asked."""

    def __init__(self, keys: dict[int, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey]) -> None:
        self.keys = keys
        self.peers: list[ec.EllipticCurvePublicKey] = []

    def ecdh(self, slot: int, peer: ec.EllipticCurvePublicKey) -> bytes:
        self.peers.append(peer)
        key = self.keys[slot]
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key.exchange(ec.ECDH(), peer)

    def sign(self, slot: int, message: bytes) -> bytes:
        key = self.keys[slot]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(message, ec.ECDSA(hashes.SHA256()))
        return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_project_key_on_the_card_proves_possession_with_fresh_ephemerals(
    pki: Pki, curve: ec.EllipticCurve
) -> None:
    key = ec.generate_private_key(curve)
    cert = pki.issue_project("p", key.public_key(), subject_cn="Ada", not_before=T0)
    card = SoftCard({0x82: key})
    prove_key_agreement(cert, 0x82, card.ecdh)
    prove_key_agreement(cert, 0x82, card.ecdh)
    assert card.peers[0].public_numbers() != card.peers[1].public_numbers()


def test_a_copied_project_certificate_on_another_card_fails(pki: Pki) -> None:
    cert = pki.issue_project(
        "p", ec.generate_private_key(ec.SECP256R1()).public_key(), subject_cn="Ada"
    )
    impostor = SoftCard({0x82: ec.generate_private_key(ec.SECP256R1())})
    with pytest.raises(PossessionFailed, match="does not hold the key"):
        prove_key_agreement(cert, 0x82, impostor.ecdh)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_holder_key_signs_a_fresh_challenge(pki: Pki, kind: str) -> None:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(65537, 2048)
    )
    cert = pki.issue_holder(key.public_key(), subject_cn="Ada", not_before=T0)
    card = SoftCard({0x9A: key})
    first = prove_signature(cert, 0x9A, card.sign)
    second = prove_signature(cert, 0x9A, card.sign)
    assert first.startswith(CHALLENGE_CONTEXT)
    assert first != second


def test_a_signature_by_another_key_fails(pki: Pki) -> None:
    cert = pki.issue_holder(
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        subject_cn="Ada",
        not_before=T0,
        not_after=T0 + timedelta(days=1),
    )
    impostor = SoftCard({0x9A: ec.generate_private_key(ec.SECP256R1())})
    with pytest.raises(PossessionFailed):
        prove_signature(cert, 0x9A, impostor.sign)


def test_an_rsa_certificate_cannot_do_key_agreement(pki: Pki) -> None:
    cert = pki.issue_holder(rsa.generate_private_key(65537, 2048).public_key(), subject_cn="Ada")
    card = SoftCard({})
    with pytest.raises(WrongPurpose):
        prove_key_agreement(cert, 0x82, card.ecdh)
