"""The box identity in the TPM, through PKCS#11 (Debian's libtpm2-pkcs11).

The key is created in the TPM at first boot (``tpm2_ptool``) and is never
exportable; signing happens in the TPM. The token PIN comes from a root-only
file on the sealed data partition, never from argv or the environment.
"""

from __future__ import annotations

import logging

import pkcs11
import pkcs11.types
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Mechanism, ObjectClass
from pkcs11 import exceptions as p11err

from sdbox.identity import IdentityConfig, IdentityError, _box_id, _load_certificate

_log = logging.getLogger("sdbox.identity")


class TpmIdentity:
    """The TPM-held box key and its certificate."""

    def __init__(self, config: IdentityConfig) -> None:
        if config.pkcs11_module is None or config.pin_file is None:
            raise IdentityError("the TPM identity needs pkcs11_module and pin_file")
        self.certificate = _load_certificate(config.certificate)
        self.box_id = _box_id(self.certificate)
        self._config = config
        try:
            self._lib = pkcs11.lib(str(config.pkcs11_module))
            self._token = self._lib.get_token(token_label=config.token_label)
        except (RuntimeError, OSError, p11err.PKCS11Error) as exc:
            raise IdentityError(
                f"the TPM token '{config.token_label}' is not available: {type(exc).__name__}"
            ) from exc

    def _pin(self) -> str:
        assert self._config.pin_file is not None
        try:
            return self._config.pin_file.read_text().strip()
        except OSError as exc:
            raise IdentityError(
                f"the TPM token PIN file {self._config.pin_file} cannot be read"
            ) from exc

    def sign(self, message: bytes) -> bytes:
        """ECDSA-SHA256 in the TPM, DER encoded."""
        try:
            with self._token.open(user_pin=self._pin()) as session:
                key = session.get_key(
                    object_class=ObjectClass.PRIVATE_KEY, label=self._config.key_label
                )
                if not isinstance(key, pkcs11.types.SignMixin):
                    raise IdentityError("the TPM key cannot sign")
                raw = key.sign(message, mechanism=Mechanism.ECDSA_SHA256)
        except p11err.PKCS11Error as exc:
            raise IdentityError(f"the TPM refused to sign: {type(exc).__name__}") from exc
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
