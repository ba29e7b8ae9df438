"""The box's own identity: a key that never leaves the TPM, certified by the centre.

:class:`BoxIdentity` is what the broker protocol needs: the box certificate
and a signature. Two implementations: :class:`TpmIdentity` (the key in the
TPM, used through PKCS#11 with Debian's libtpm2-pkcs11) and
:class:`DevelopmentIdentity` (a software key, allowed only when configured
explicitly, and saying so in every log line that uses it).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.errors import SdboxError

_log = logging.getLogger("sdbox.identity")


class IdentityError(SdboxError):
    """The box identity is missing or unusable."""


class BoxIdentity(Protocol):
    """The box's certificate and a signature with its key."""

    box_id: str
    certificate: x509.Certificate

    def sign(self, message: bytes) -> bytes:
        """ECDSA (P-256, SHA-256) over ``message``, DER encoded."""
        ...


@dataclass(frozen=True)
class IdentityConfig:
    """Where the identity comes from."""

    kind: Literal["tpm", "development"]
    certificate: Path
    key_file: Path | None = None  # development
    pkcs11_module: Path | None = None  # tpm
    token_label: str = "sdbox-box"  # noqa: S105  (a token name, not a secret)
    key_label: str = "box-identity"
    pin_file: Path | None = None  # tpm: root-only file with the token's user PIN
    tpm_store: Path | None = None  # tpm: libtpm2-pkcs11's token store (TPM2_PKCS11_STORE)
    tcti: str = ""  # tpm: how to reach the TPM (TPM2_PKCS11_TCTI), "" = the module's default


def read_pin(config: IdentityConfig) -> str:
    """The TPM token's user PIN, from its root-only file.

    Here rather than in :mod:`sdbox.identity.tpm`: the tunnel daemon hands the PIN to
    charon over VICI and has no use for python-pkcs11, which that module loads.
    """
    if config.pin_file is None:
        raise IdentityError("the TPM identity needs [identity] pin_file")
    try:
        pin = config.pin_file.read_text().strip()
    except OSError as exc:
        raise IdentityError(
            f"the TPM token PIN file {config.pin_file} cannot be read ({exc.strerror}): "
            "is the sealed data partition unlocked?"
        ) from exc
    if not pin:
        raise IdentityError(f"the TPM token PIN file {config.pin_file} is empty")
    return pin


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return load_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise IdentityError(
            f"the box certificate {path} is missing: the box is not enrolled"
        ) from exc
    except (OSError, UnreadableCertificate) as exc:
        raise IdentityError(f"the box certificate {path} cannot be read: {exc}") from exc


def _box_id(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


class DevelopmentIdentity:
    """A software key: development and tests only, never on a box in service."""

    def __init__(self, certificate: Path, key_file: Path) -> None:
        self.certificate = _load_certificate(certificate)
        self.box_id = _box_id(self.certificate)
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise IdentityError(
                f"the development box key {key_file} cannot be read: {exc}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError("the development box key is not an EC key")
        if key.public_key() != self.certificate.public_key():
            raise IdentityError("the development box key does not match the box certificate")
        self._key = key

    def sign(self, message: bytes) -> bytes:
        """Sign with the software key (logged as DEVELOPMENT every time)."""
        _log.warning(
            "DEVELOPMENT box identity (software key) used for %s: not for production", self.box_id
        )
        return self._key.sign(message, ec.ECDSA(hashes.SHA256()))


def open_identity(config: IdentityConfig) -> BoxIdentity:
    """The configured identity."""
    if config.kind == "development":
        if config.key_file is None:
            raise IdentityError("the development identity needs key_file")
        return DevelopmentIdentity(config.certificate, config.key_file)
    from sdbox.identity.tpm import TpmIdentity  # noqa: PLC0415  (python-pkcs11 only for the TPM)

    return TpmIdentity(config)


class IdentitySource:
    """The box identity, opened on first use and then shared (credentials, renewal).

    Opened late because the TPM may come up after the agent, and once because
    a PKCS#11 module takes one configuration per process.
    """

    def __init__(self, config: IdentityConfig) -> None:
        self._config = config
        self._identity: BoxIdentity | None = None
        # callers come from worker threads (the start-up probe, a credential
        # request): the module must not be configured twice
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        """tpm or development."""
        return self._config.kind

    def __call__(self) -> BoxIdentity:
        """The identity (opened now if it is not yet)."""
        with self._lock:
            if self._identity is None:
                self._identity = open_identity(self._config)
            return self._identity


PROBE_MESSAGE = b"sdbox box identity probe"


@dataclass(frozen=True)
class IdentityStatus:
    """A box identity that signs and matches its certificate (see :func:`probe`)."""

    box_id: str
    kind: str  # tpm or development
    valid_until: datetime
    days_left: int

    @property
    def summary(self) -> str:
        """One line for the journal."""
        key = "TPM key" if self.kind == "tpm" else "DEVELOPMENT software key"
        return (
            f"{self.box_id}, {key} signs and matches its certificate, valid until "
            f"{self.valid_until:%Y-%m-%d} ({self.days_left} days left)"
        )


def probe(source: IdentitySource, now: datetime) -> IdentityStatus:
    """Open the identity, sign with its key and check the signature with its certificate.

    What the agent says at start-up, so that a box whose TPM, token or
    certificate is unusable says so at once, not at the first session. Raises
    :class:`IdentityError` when it is not in order.
    """
    identity = source()
    signature = identity.sign(PROBE_MESSAGE)
    public = identity.certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise IdentityError("the box certificate does not hold an EC key")
    try:
        public.verify(signature, PROBE_MESSAGE, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise IdentityError(
            "the box key does not match the box certificate: re-enrol the box"
        ) from exc
    end = identity.certificate.not_valid_after_utc
    start = identity.certificate.not_valid_before_utc
    if now > end:
        raise IdentityError(
            f"the box certificate of {identity.box_id} expired on {end:%Y-%m-%d}: the centre "
            "refuses it; re-enrol the box"
        )
    if now < start:
        raise IdentityError(
            f"the box certificate of {identity.box_id} is valid only from {start:%Y-%m-%d}: "
            "check the box's clock"
        )
    return IdentityStatus(identity.box_id, source.kind, end, (end - now).days)
