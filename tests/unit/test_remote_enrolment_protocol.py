"""Remote enrolment's authorisation: what the box accepts, and the centre's register of them."""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.agent.bioenrol import operator_check
from sdbox.broker.bioenrol import BioEnrolment, EnrolmentAuthorisationError, write_operator
from sdbox.centre.bioauth import (
    AUTHORISATION_CONTEXT,
    Authorisation,
    AuthorisationRefused,
    SignedAuthorisation,
    short_code,
    sign,
    verify,
)
from sdbox.smartcard.profile import KeyRef
from sdbox.trust.pki import CA_NAMES, Pki
from sdbox.trust.store import RevocationStore

GUID = bytes(range(16))
BOX_DER = b"box certificate (DER)"
CHALLENGE = bytes(range(32))
NOW = datetime.now(UTC).replace(microsecond=0)
BOTH = frozenset({KeyRef.FINGER_PRIMARY, KeyRef.FINGER_SECONDARY})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("bioauth-pki"))


@pytest.fixture(scope="module")
def crls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> RevocationStore:
    store = RevocationStore(tmp_path_factory.mktemp("crl"),
                            build_time=pki.root.cert.not_valid_before_utc)  # fmt: skip
    for ca in CA_NAMES:
        store.accept(pki.crl(ca).public_bytes(serialization.Encoding.DER), pki.authority(ca).cert)
    return store


def _operator(pki: Pki, name: str = "Alice") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, pki.issue_enrolment_operator(key.public_key(), operator=name)


def _authorisation(**changes: object) -> Authorisation:
    base = Authorisation(
        id="a1", card_guid=GUID, box_id="box-1",
        box_certificate_sha256=hashlib.sha256(BOX_DER).digest(), fingers=("primary",),
        not_before=NOW, not_after=NOW + timedelta(minutes=15), operator="Alice",
        box_challenge=CHALLENGE,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def _verify(pki: Pki, crls: RevocationStore, signed: SignedAuthorisation, **kwargs: object,
            ) -> Authorisation:  # fmt: skip
    args: dict[str, object] = {
        "validate_operator": operator_check([pki.root.cert], pki.intermediates, crls),
        "card_guid": GUID, "box_certificate": BOX_DER, "challenge": CHALLENGE, "now": NOW,
        "fingers_on_card": BOTH,
    }  # fmt: skip
    args.update(kwargs)
    return verify(signed, **args)  # type: ignore[arg-type]


def _reason(pki: Pki, crls: RevocationStore, signed: SignedAuthorisation, **kwargs: object) -> str:
    with pytest.raises(AuthorisationRefused) as refused:
        _verify(pki, crls, signed, **kwargs)
    return refused.value.reason


def test_an_authorisation_for_this_card_box_and_challenge_is_accepted(
    pki: Pki, crls: RevocationStore
) -> None:
    key, cert = _operator(pki)
    signed = sign(_authorisation(), key, cert, [pki.project_ca.cert])
    auth = _verify(pki, crls, signed)
    assert auth == _authorisation()
    assert auth.references == (KeyRef.FINGER_PRIMARY,)
    round_trip = SignedAuthorisation.from_json(json.loads(json.dumps(signed.to_json())))
    assert round_trip == signed


def test_the_code_is_six_digits_of_this_request(pki: Pki) -> None:
    key, cert = _operator(pki)
    first = sign(_authorisation(), key, cert, []).tbs
    other = sign(_authorisation(box_challenge=bytes(32)), key, cert, []).tbs
    assert len(short_code(first)) == 6
    assert short_code(first).isdigit()
    assert short_code(first) == short_code(first)  # the box and the centre compute the same
    assert short_code(first) != short_code(other)  # another challenge, another code


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"card_guid": bytes(16)}, "other_card"),
        ({"box_certificate": b"another box"}, "other_box"),
        ({"challenge": bytes(32)}, "replay"),
        ({"now": NOW + timedelta(minutes=30)}, "expired"),
        ({"now": NOW - timedelta(minutes=30)}, "not_yet_valid"),
        ({"fingers_on_card": frozenset({KeyRef.FINGER_SECONDARY})}, "finger"),
    ],
)
def test_the_box_refuses_what_is_not_for_it_now(
    pki: Pki, crls: RevocationStore, kwargs: dict[str, object], reason: str
) -> None:
    key, cert = _operator(pki)
    assert _reason(pki, crls, sign(_authorisation(), key, cert, []), **kwargs) == reason


def test_a_key_without_the_operator_role_is_refused(pki: Pki, crls: RevocationStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    holder = pki.issue_holder(key.public_key(), subject_cn="Alice")  # same CA, no operator EKU
    assert _reason(pki, crls, sign(_authorisation(), key, holder, [])) == "operator"
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    signed = sign(_authorisation(operator=signer.cert.subject.rfc4514_string()), signer.key,
                  signer.cert, [])  # fmt: skip
    assert _reason(pki, crls, signed) == "operator"


def test_a_revoked_operator_is_refused(pki: Pki, tmp_path: Path) -> None:
    key, cert = _operator(pki, "Bob")
    pki.revoke(cert)
    store = RevocationStore(tmp_path, build_time=pki.root.cert.not_valid_before_utc)
    for ca in CA_NAMES:
        store.accept(pki.crl(ca).public_bytes(serialization.Encoding.DER), pki.authority(ca).cert)
    signed = sign(_authorisation(operator="Bob"), key, cert, [])
    assert _reason(pki, store, signed) == "operator"


def test_tampering_and_another_operator_name_are_refused(pki: Pki, crls: RevocationStore) -> None:
    key, cert = _operator(pki)
    signed = sign(_authorisation(), key, cert, [])
    widened = signed.tbs.replace(b'["primary"]', b'["primary","secondary"]')
    assert _reason(pki, crls, replace(signed, tbs=widened)) == "signature"
    assert _reason(pki, crls, sign(_authorisation(operator="Mallory"), key, cert, [])) == "operator"
    other_key = ec.generate_private_key(ec.SECP256R1())
    assert _reason(pki, crls, sign(_authorisation(), other_key, cert, [])) == "signature"
    too_long = _authorisation(not_after=NOW + timedelta(hours=3))
    assert _reason(pki, crls, sign(too_long, key, cert, [])) == "not_yet_valid"


def test_non_canonical_bytes_are_refused_even_signed(pki: Pki, crls: RevocationStore) -> None:
    key, cert = _operator(pki)
    signed = sign(_authorisation(), key, cert, [])
    spaced = json.dumps(json.loads(signed.tbs), indent=1).encode()
    signature = key.sign(AUTHORISATION_CONTEXT + spaced, ec.ECDSA(hashes.SHA256()))
    assert _reason(pki, crls, replace(signed, tbs=spaced, signature=signature)) == "malformed"


# -- the centre's register -----------------------------------------------------------------


def _centre(pki: Pki, crls: RevocationStore, tmp_path: Path) -> BioEnrolment:
    key, cert = _operator(pki, "Alice Martin")
    write_operator(tmp_path / "operators", "alice", key, cert)
    key2 = ec.generate_private_key(ec.SECP256R1())
    write_operator(tmp_path / "operators", "mallory", key2,
                   pki.issue_holder(key2.public_key(), subject_cn="Mallory"))  # fmt: skip
    return BioEnrolment(register=tmp_path / "register.json", operators=tmp_path / "operators",
                        anchors=[pki.root.cert], intermediates=pki.intermediates,
                        store=crls)  # fmt: skip


def test_the_operator_opens_shows_and_revokes(
    pki: Pki, crls: RevocationStore, tmp_path: Path
) -> None:
    centre = _centre(pki, crls, tmp_path)
    record = centre.open(card_guid=GUID, box_id="box-1", fingers=("primary",), minutes=10,
                         operator="alice")  # fmt: skip
    assert record["state"] == "open"
    assert record["operator"] == "Alice Martin"
    assert "code" not in record  # no code before the box asked
    assert stat.S_IMODE((tmp_path / "register.json").stat().st_mode) == 0o600
    assert centre.show(record["id"])["state"] == "open"
    with pytest.raises(EnrolmentAuthorisationError, match="nothing to confirm"):
        centre.confirm(record["id"], "123456")
    assert centre.revoke(record["id"])["state"] == "revoked"
    assert [r["state"] for r in centre.records()] == ["revoked"]
    with pytest.raises(EnrolmentAuthorisationError, match="no enrolment authorisation"):
        centre.show("unknown")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operator": "mallory"}, "not an enrolment operator"),
        ({"operator": "nobody"}, "no usable key"),
        ({"operator": "../alice"}, "no enrolment operator named"),
        ({"minutes": 0}, "lasts 1 to"),
        ({"minutes": 121}, "lasts 1 to"),
        ({"fingers": ("thumb",)}, "primary and/or secondary"),
        ({"fingers": ("primary", "primary")}, "primary and/or secondary"),
        ({"card_guid": b"short"}, "16 bytes"),
    ],
)
def test_the_centre_refuses_to_open_what_it_cannot_authorise(
    pki: Pki, crls: RevocationStore, tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    centre = _centre(pki, crls, tmp_path)
    args: dict[str, object] = {"card_guid": GUID, "box_id": "box-1", "fingers": ("primary",),
                               "minutes": 10, "operator": "alice"}  # fmt: skip
    args.update(kwargs)
    with pytest.raises(EnrolmentAuthorisationError, match=message):
        centre.open(**args)  # type: ignore[arg-type]
    assert not (tmp_path / "register.json").exists()  # nothing recorded
