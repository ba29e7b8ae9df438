"""First-boot enrolment: the CSR built for a TPM key, the token register, the broker's checks."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.broker.enrolment import EnrolmentTokens, digest
from sdbox.broker.server import Broker, BrokerConfig
from sdbox.centre.protocol import ProtocolError, Refused
from sdbox.identity import IdentityError
from sdbox.identity.csr import build_csr
from sdbox.trust import Purpose, validate
from sdbox.trust.pki import Pki

NAME = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sdbox box")])


def _signer(key: ec.EllipticCurvePrivateKey) -> Any:
    return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))


def test_csr_for_an_external_signer_is_valid_pkcs10() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = build_csr(key.public_key(), NAME, _signer(key))
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject == NAME
    assert csr.signature_hash_algorithm is not None
    assert csr.signature_hash_algorithm.name == "sha256"


def test_csr_signed_by_another_key_is_refused() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(IdentityError, match="signature"):
        build_csr(key.public_key(), NAME, _signer(other))


def test_tokens_are_single_use_and_hashed_at_rest(tmp_path: Path) -> None:
    register = EnrolmentTokens(tmp_path / "tokens.json")
    token = register.add("box-1")
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text
    assert digest(token) in text
    assert (tmp_path / "tokens.json").stat().st_mode & 0o077 == 0
    assert register.consume(token) == "box-1"
    with pytest.raises(Refused, match="already used") as used:
        register.consume(token)
    assert used.value.code == "enrolment_token"
    with pytest.raises(Refused, match="not known"):
        register.consume("guessed-token")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("enrol-pki"))


def _broker(pki: Pki, tmp_path: Path, **overrides: Any) -> Broker:
    pem = serialization.Encoding.PEM
    (tmp_path / "roots.pem").write_bytes(pki.root.cert.public_bytes(pem))
    (tmp_path / "intermediates.pem").write_bytes(
        b"".join(c.public_bytes(pem) for c in pki.intermediates)
    )
    (tmp_path / "crl").mkdir(exist_ok=True)
    fields: dict[str, Any] = {
        "tls_certificate": tmp_path / "unused.pem", "tls_key": tmp_path / "unused.key",
        "anchors": tmp_path / "roots.pem", "intermediates": tmp_path / "intermediates.pem",
        "crl_dir": tmp_path / "crl", "enrolment_tokens": str(tmp_path / "tokens.json"),
        "box_ca": str(pki.path),
    }  # fmt: skip
    fields.update(overrides)
    return Broker(BrokerConfig(**fields))


def _request(token: str, key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    csr = build_csr(key.public_key(), NAME, _signer(key))
    der = csr.public_bytes(serialization.Encoding.DER)
    return {"token": token, "csr": base64.b64encode(der).decode()}


def test_broker_certifies_the_key_under_the_box_ca(pki: Pki, tmp_path: Path) -> None:
    broker = _broker(pki, tmp_path)
    token = broker.tokens.add("box-42")  # type: ignore[union-attr]
    key = ec.generate_private_key(ec.SECP256R1())
    answer = broker.enrol(_request(token, key))
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert certificate.public_key() == key.public_key()
    validate(certificate, pki.intermediates, [pki.root.cert], at=certificate.not_valid_before_utc,
             purpose=Purpose.BOX, crls=None)  # fmt: skip
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)] == [
        "urn:sdbox:box:box-42"
    ]
    assert json.loads(json.dumps(answer))["chain"]
    with pytest.raises(Refused, match="already used"):
        broker.enrol(_request(token, ec.generate_private_key(ec.SECP256R1())))


def test_a_bad_request_does_not_spend_the_token(pki: Pki, tmp_path: Path) -> None:
    broker = _broker(pki, tmp_path)
    token = broker.tokens.add("box-43")  # type: ignore[union-attr]
    key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(Refused, match="P-256") as err:
        broker.enrol(_request(token, key))
    assert err.value.code == "csr"
    forged = _request(token, ec.generate_private_key(ec.SECP256R1()))
    forged["csr"] = forged["csr"][:-8] + "AAAAAAA="
    with pytest.raises(Refused) as bad:
        broker.enrol(forged)
    assert bad.value.code == "csr"
    with pytest.raises(ProtocolError):
        broker.enrol({"csr": forged["csr"]})
    good = ec.generate_private_key(ec.SECP256R1())
    assert "certificate" in broker.enrol(_request(token, good))


def test_broker_without_enrolment_refuses(pki: Pki, tmp_path: Path) -> None:
    broker = _broker(pki, tmp_path, enrolment_tokens="", box_ca="")
    with pytest.raises(Refused, match="does not enrol") as err:
        broker.enrol(_request("x", ec.generate_private_key(ec.SECP256R1())))
    assert err.value.status == 404
