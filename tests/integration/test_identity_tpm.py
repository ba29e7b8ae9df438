"""The box identity in a (software) TPM: provisioning, signing, enrolment, the broker, the agent."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute
from pkcs11 import exceptions as p11err

from sdbox.identity import IdentityConfig, IdentityError, open_identity
from sdbox.identity.provision import provision_tpm, so_pin_file, tpm_csr
from sdbox.identity.tpm import find_private_key, get_token, key_properties, load_module, read_pin
from sdbox.trust.pki import Pki
from tests.integration.tpm_env import SoftwareTpm, swtpm, tpm_identity_config

__all__ = ["swtpm"]


@pytest.fixture(scope="module")
def box(swtpm: SoftwareTpm, tmp_path_factory: pytest.TempPathFactory) -> IdentityConfig:
    """A provisioned box key (the token of this module)."""
    directory = tmp_path_factory.mktemp("box-identity")
    config = tpm_identity_config(swtpm, directory, directory / "box.pem")
    provision_tpm(config)
    return config


def _certify(pki: Pki, config: IdentityConfig, box_id: str = "tpm-box-1") -> x509.Certificate:
    csr = tpm_csr(config, x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, box_id)]))
    cert = pki.issue_box(csr.public_key(), box_id=box_id)
    config.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def test_provisioning_creates_a_key_in_the_tpm_and_root_only_pins(
    box: IdentityConfig, swtpm: SoftwareTpm
) -> None:
    assert box.pin_file is not None
    for path in (box.pin_file, so_pin_file(box)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 32
    again = provision_tpm(box)  # first boot interrupted and run again: same key
    assert not again.created_token
    assert not again.created_key
    token = get_token(load_module(box), box)
    with token.open(user_pin=read_pin(box)) as session:
        key = find_private_key(session, box)
        props = key_properties(key)
        assert props.bound_to_tpm, props
        with pytest.raises(p11err.PKCS11Error):  # the private value cannot be read
            key[Attribute.VALUE]


def test_tpm_signature_verifies_with_the_certificate_key(pki: Pki, box: IdentityConfig) -> None:
    cert = _certify(pki, box)
    identity = open_identity(box)
    assert identity.box_id == "sdbox box tpm-box-1"
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for message in (b"", b"transcript" * 100):
        public.verify(identity.sign(message), message, ec.ECDSA(hashes.SHA256()))


def test_wrong_pin_file_is_refused_clearly(pki: Pki, box: IdentityConfig, tmp_path: Path) -> None:
    _certify(pki, box)
    wrong = tmp_path / "token-pin"
    wrong.write_text("not-the-pin\n")
    os.chmod(wrong, 0o600)
    identity = open_identity(replace(box, pin_file=wrong))
    with pytest.raises(IdentityError, match=r"refused the token PIN from .*do not retry"):
        identity.sign(b"x")
    missing = replace(box, pin_file=tmp_path / "absent")
    with pytest.raises(IdentityError, match=r"PIN file .* cannot be read"):
        open_identity(missing).sign(b"x")


def test_missing_token_is_refused_clearly(pki: Pki, box: IdentityConfig) -> None:
    _certify(pki, box)
    other = replace(box, token_label="never-provisioned")
    with pytest.raises(IdentityError, match=r"holds no token 'never-provisioned'.*provision"):
        open_identity(other)
    no_key = replace(box, key_label="no-such-key")
    with pytest.raises(IdentityError, match="holds no key 'no-such-key'"):
        open_identity(no_key).sign(b"x")
