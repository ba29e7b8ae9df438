"""First boot: enrol the box with the centre (docs/broker-protocol.md, "Enrolment").

The box creates its TPM key if it has none, sends a certification request
signed by that key together with the one-time enrolment token written on its
config partition at flashing, checks the certificate the centre returns (its
key is the TPM key; it validates under the box-identity CA for
``Purpose.BOX``) and stores it on the sealed data partition. The token is then
used up on the centre's side; the box removes its copy.

Revocation of the new certificate is not checked here: it was issued a moment
ago over a TLS channel the box validated, and the broker checks revocation at
every credential request.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sdbox.centre.enrolment import request_certificate
from sdbox.centre.protocol import ProtocolError
from sdbox.certificates import load_certificate
from sdbox.errors import SdboxError
from sdbox.identity import IdentityConfig, IdentityError, _box_id
from sdbox.identity.provision import provision_tpm, tpm_csr
from sdbox.trust import Purpose, validate

_log = logging.getLogger("sdbox.identity")
MAX_TOKEN = 4096


@dataclass(frozen=True)
class Enrolled:
    """The outcome of `sdbox identity enrol`."""

    box_id: str
    not_after: datetime
    already: bool  # the box was enrolled before: no token was spent
    token_removed: bool


def read_token(path: Path) -> str:
    """The one-time token from the config partition (printable ASCII, one line)."""
    try:
        raw = path.read_bytes().removesuffix(b"\n")
    except OSError as exc:
        raise IdentityError(
            f"the enrolment token {path} cannot be read ({exc.strerror}): was the box "
            "flashed with --enrolment-token-file?"
        ) from exc
    if not raw or len(raw) > MAX_TOKEN or not all(0x21 <= b <= 0x7E for b in raw):
        raise IdentityError(f"{path} does not hold an enrolment token")
    return raw.decode()


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _check(
    certificate: x509.Certificate,
    public_key: object,
    intermediates: list[x509.Certificate],
    anchors: list[x509.Certificate],
) -> None:
    if certificate.public_key() != public_key:
        raise IdentityError("the box certificate is not for this box's TPM key")
    validate(certificate, intermediates, anchors, at=datetime.now(UTC), purpose=Purpose.BOX,
             crls=None)  # fmt: skip


def enrol(
    config: IdentityConfig,
    *,
    broker_url: str,
    token_file: Path,
    broker_anchors: list[x509.Certificate],
    anchors: list[x509.Certificate],
    intermediates: list[x509.Certificate],
    timeout_s: float = 30.0,
) -> Enrolled:
    """Enrol this box: TPM key, CSR + token to the broker, certificate checked and stored."""
    if not broker_url.startswith("https://"):
        raise ProtocolError("the broker URL must be https://")
    provisioned = provision_tpm(config)
    if config.certificate.exists():
        try:
            current = load_certificate(config.certificate.read_bytes())
            _check(current, provisioned.public_key, intermediates, anchors)
        except (ValueError, OSError, SdboxError) as exc:  # unreadable, another key, expired...
            _log.warning("the stored box certificate is not usable (%s): enrolling again", exc)
        else:
            return Enrolled(_box_id(current), current.not_valid_after_utc, True, False)
    token = read_token(token_file)
    csr = tpm_csr(config, x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sdbox box")]))
    certificate, chain = request_certificate(
        broker_url, token=token, csr_der=csr.public_bytes(serialization.Encoding.DER),
        anchors=broker_anchors, timeout_s=timeout_s,
    )  # fmt: skip
    _check(certificate, provisioned.public_key, intermediates + chain, anchors)
    _write_certificate(config.certificate, certificate)
    try:
        token_file.unlink()
        removed = True
    except OSError:  # a read-only config partition: the token is spent anyway
        removed = False
    box_id = _box_id(certificate)
    _log.info("box enrolled as %s", box_id)
    return Enrolled(box_id, certificate.not_valid_after_utc, False, removed)
