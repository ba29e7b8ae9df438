"""The box identity in the TPM, through PKCS#11 (Debian's libtpm2-pkcs11).

The key is created in the TPM at first boot (:mod:`sdbox.identity.provision`)
and is never exportable; signing happens in the TPM. The token PIN comes from
a root-only file on the sealed data partition, never from argv or the
environment.

libtpm2-pkcs11 reads its token store (``TPM2_PKCS11_STORE``) and the way to
the TPM (``TPM2_PKCS11_TCTI``) from the environment when the module is
initialised, so :func:`load_module` sets both from the configuration before
python-pkcs11 loads it, and refuses a second, different configuration in the
same process (the module cannot be re-initialised with another store).

The TPM counts wrong authorisations (dictionary-attack protection) and locks
every key out for a while after a few: a wrong PIN is reported at once and
never retried.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pkcs11
import pkcs11.types
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, Mechanism, ObjectClass
from pkcs11 import exceptions as p11err
from pkcs11.util.ec import encode_ec_public_key

from sdbox.identity import IdentityConfig, IdentityError, _box_id, _load_certificate, read_pin

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

_log = logging.getLogger("sdbox.identity")
_loaded: dict[str, str | None] = {}
_load_lock = threading.Lock()


def load_module(config: IdentityConfig) -> Pkcs11Lib:
    """The PKCS#11 module, initialised with this configuration's store and TCTI."""
    if config.pkcs11_module is None:
        raise IdentityError("the TPM identity needs [identity] pkcs11_module")
    wanted = {
        "module": str(config.pkcs11_module),
        "TPM2_PKCS11_STORE": str(config.tpm_store) if config.tpm_store else None,
        "TPM2_PKCS11_TCTI": config.tcti or None,
    }
    with _load_lock:
        if _loaded and _loaded != wanted:
            raise IdentityError(
                "the TPM PKCS#11 module is already in use with another token store or TCTI "
                "in this process: restart it with one [identity] configuration"
            )
        for name in ("TPM2_PKCS11_STORE", "TPM2_PKCS11_TCTI"):
            value = wanted[name]
            if value is not None:
                os.environ[name] = value
        if config.tpm_store is not None and not config.tpm_store.is_dir():
            raise IdentityError(
                f"the TPM token store {config.tpm_store} does not exist: "
                "run `sdbox identity provision` (first boot)"
            )
        try:
            lib = pkcs11.lib(str(config.pkcs11_module))
        except (RuntimeError, OSError, p11err.PKCS11Error) as exc:
            raise IdentityError(
                f"the TPM PKCS#11 module {config.pkcs11_module} cannot be loaded "
                f"({type(exc).__name__}): is libtpm2-pkcs11-1 installed?"
            ) from exc
        _loaded.update(wanted)
        return lib


def get_token(lib: Pkcs11Lib, config: IdentityConfig) -> pkcs11.Token:
    """The box's token; IdentityError when it was never created."""
    try:
        return lib.get_token(token_label=config.token_label)
    except p11err.NoSuchToken as exc:
        raise IdentityError(
            f"the TPM holds no token '{config.token_label}': the box identity was never "
            "created; run `sdbox identity provision` or `sdbox identity enrol` (first boot)"
        ) from exc
    except (p11err.PKCS11Error, RuntimeError) as exc:
        raise IdentityError(
            f"the TPM token '{config.token_label}' is not available ({type(exc).__name__}): "
            "is the TPM (or its resource manager) reachable?"
        ) from exc


def pkcs11_failure(exc: p11err.PKCS11Error, config: IdentityConfig, doing: str) -> IdentityError:
    """One translation of PKCS#11 errors into what an operator can act on."""
    if isinstance(exc, p11err.PinIncorrect):
        return IdentityError(
            f"the TPM refused the token PIN from {config.pin_file} while {doing}: the PIN file "
            "does not belong to this TPM's token (the TPM counts wrong PINs and locks out: "
            "do not retry; re-provision the box)"
        )
    if isinstance(exc, p11err.PinLocked):
        return IdentityError(
            f"the TPM is locked out after wrong PINs while {doing}: "
            "wait for its lockout to expire, then check the PIN file"
        )
    if isinstance(exc, p11err.NoSuchKey):
        return IdentityError(
            f"the TPM token '{config.token_label}' holds no key '{config.key_label}': "
            "run `sdbox identity provision` (first boot)"
        )
    return IdentityError(f"the TPM failed while {doing}: {type(exc).__name__}")


def find_private_key(session: pkcs11.Session, config: IdentityConfig) -> pkcs11.PrivateKey:
    """The box key's private half in an open session."""
    key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=config.key_label)
    if not isinstance(key, pkcs11.PrivateKey):
        raise IdentityError("the TPM box key is not a private key")
    return key


def public_key_of(session: pkcs11.Session, config: IdentityConfig) -> ec.EllipticCurvePublicKey:
    """The box key's public half (from the token's public object)."""
    public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=config.key_label)
    if not isinstance(public, pkcs11.PublicKey):
        raise IdentityError("the TPM box key has no public key object")
    key = serialization.load_der_public_key(bytes(encode_ec_public_key(public)))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise IdentityError("the TPM box key is not an EC key")
    return key


@dataclass(frozen=True)
class KeyProperties:
    """What `sdbox identity check` reports about the key (PKCS#11 attributes)."""

    extractable: bool
    never_extractable: bool
    sensitive: bool
    local: bool  # generated inside the token (the TPM), not imported

    @property
    def bound_to_tpm(self) -> bool:
        """Generated in the TPM and never extractable since."""
        return self.local and self.never_extractable and self.sensitive and not self.extractable


def key_properties(key: pkcs11.PrivateKey) -> KeyProperties:
    """The box key's protection attributes."""
    return KeyProperties(
        extractable=bool(key[Attribute.EXTRACTABLE]),
        never_extractable=bool(key[Attribute.NEVER_EXTRACTABLE]),
        sensitive=bool(key[Attribute.SENSITIVE]),
        local=bool(key[Attribute.LOCAL]),
    )


def raw_to_der(raw: bytes) -> bytes:
    """PKCS#11's r||s ECDSA signature as DER."""
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )


class TpmIdentity:
    """The TPM-held box key and its certificate."""

    def __init__(self, config: IdentityConfig) -> None:
        if config.pkcs11_module is None or config.pin_file is None:
            raise IdentityError("the TPM identity needs pkcs11_module and pin_file")
        self.certificate = _load_certificate(config.certificate)
        self.box_id = _box_id(self.certificate)
        self._config = config
        self._token = get_token(load_module(config), config)
        self._refused_pin: tuple[int, int, int] | None = None  # the PIN file the TPM refused

    def _pin_file_version(self) -> tuple[int, int, int] | None:
        assert self._config.pin_file is not None
        try:
            info = self._config.pin_file.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_size, info.st_mtime_ns)

    def sign(self, message: bytes) -> bytes:
        """ECDSA-SHA256 in the TPM, DER encoded.

        A PIN the TPM refused is not tried again until the PIN file changes:
        every wrong try counts towards the TPM's dictionary-attack lockout.
        """
        version = self._pin_file_version()
        if version is not None and version == self._refused_pin:
            raise IdentityError(
                f"the TPM refused the token PIN from {self._config.pin_file} before, and the "
                "file has not changed: not trying it again (the TPM would lock out)"
            )
        try:
            with self._token.open(user_pin=read_pin(self._config)) as session:
                key = find_private_key(session, self._config)
                if not isinstance(key, pkcs11.types.SignMixin):
                    raise IdentityError("the TPM key cannot sign")
                raw = key.sign(message, mechanism=Mechanism.ECDSA_SHA256)
        except p11err.PinIncorrect as exc:
            self._refused_pin = version
            raise pkcs11_failure(exc, self._config, "signing") from exc
        except p11err.PKCS11Error as exc:
            raise pkcs11_failure(exc, self._config, "signing") from exc
        return raw_to_der(raw)


@dataclass(frozen=True)
class KeyStatus:
    """The TPM key as `sdbox identity check` reports it."""

    public_key: ec.EllipticCurvePublicKey
    properties: KeyProperties


def key_status(config: IdentityConfig) -> KeyStatus:
    """The box key's public half and protection attributes, read through PKCS#11."""
    token = get_token(load_module(config), config)
    try:
        with token.open(user_pin=read_pin(config)) as session:
            key = find_private_key(session, config)
            return KeyStatus(public_key_of(session, config), key_properties(key))
    except p11err.PKCS11Error as exc:
        raise pkcs11_failure(exc, config, "reading the box key") from exc
