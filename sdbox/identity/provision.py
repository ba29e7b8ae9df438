"""First boot: create the box's token and key in the TPM, and its certification request.

Everything goes through the PKCS#11 module itself (libtpm2-pkcs11), so the
PINs stay in this process's memory and their root-only files:

- ``tpm2_ptool addtoken`` takes ``--sopin``/``--userpin`` on its command
  line (visible in /proc to every user), and pkcs11-tool likewise; instead,
  the token is created with ``C_InitToken`` on the module's empty slot
  (python-pkcs11 0.9 does not expose it, so it is one ctypes call into the
  same, already initialised module), the user PIN set with ``C_InitPIN`` in
  an SO session, and the key generated with ``C_GenerateKeyPair``;
- the key is an ECC P-256 key generated in the TPM (``CKA_LOCAL``),
  ``CKA_SENSITIVE`` and not extractable: the TPM object is created with
  fixedTPM/fixedParent, so no PKCS#11 attribute can make it leave the TPM;
- the SO and user PINs are random (192 bits), written 0600 before the token
  exists: a crash then leaves PIN files without a token (the next run writes
  new ones) or a token without a user PIN (the next run sets it with the SO
  PIN from its file), never a token nobody can open.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pkcs11
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, TokenFlag
from pkcs11 import exceptions as p11err
from pkcs11.attributes import AttributeMapper
from pkcs11.types import SignMixin
from pkcs11.util.ec import encode_named_curve_parameters

from sdbox.identity import IdentityConfig, IdentityError, read_pin
from sdbox.identity.csr import build_csr
from sdbox.identity.tpm import (
    find_private_key,
    get_token,
    load_module,
    pkcs11_failure,
    public_key_of,
    raw_to_der,
)

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Lib

_log = logging.getLogger("sdbox.identity")
_CKR_OK = 0
_KEY_ID = b"\x01"


def so_pin_file(config: IdentityConfig) -> Path:
    """Where the token's SO PIN is kept (next to the user PIN file)."""
    assert config.pin_file is not None
    return config.pin_file.with_name(config.pin_file.name + ".so")


@dataclass(frozen=True)
class Provisioned:
    """What provisioning left in the TPM."""

    public_key: ec.EllipticCurvePublicKey
    created_token: bool
    created_key: bool


class _TpmKeyTemplates(AttributeMapper):
    """Exactly the attributes the TPM key needs.

    python-pkcs11's default templates set ENCRYPT/WRAP/DECRYPT/UNWRAP/DERIVE
    explicitly to false, which libtpm2-pkcs11 refuses for an ECC key ("User
    specified and TPM specified attr mismatch"): leave them to the module.
    """

    def public_key_template(
        self, *, capabilities: Any, id_: bytes | None, label: str | None, store: bool
    ) -> dict[Attribute, Any]:
        return {
            Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.VERIFY: True,
            Attribute.LABEL: label or "", Attribute.ID: id_ or b"",
        }  # fmt: skip

    def private_key_template(
        self, *, capabilities: Any, id_: bytes | None, label: str | None, store: bool
    ) -> dict[Attribute, Any]:
        return {
            Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC,
            Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.SIGN: True,
            Attribute.LABEL: label or "", Attribute.ID: id_ or b"",
        }  # fmt: skip


def _write_secret(path: Path, value: str) -> None:
    """Write ``value`` to a new 0600 file, atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(value + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _init_token(config: IdentityConfig, lib: Pkcs11Lib, so_pin: str) -> None:
    """C_InitToken on the module's empty slot (libtpm2-pkcs11 always offers one)."""
    empty = [
        slot
        for slot in lib.get_slots(token_present=True)
        if not slot.get_token().flags & TokenFlag.TOKEN_INITIALIZED
    ]
    if not empty:
        raise IdentityError("the TPM PKCS#11 module offers no free slot for a new token")
    assert config.pkcs11_module is not None
    # The same shared object python-pkcs11 has loaded and initialised: dlopen
    # returns the same instance, so this call sees the same state.
    module = ctypes.CDLL(str(config.pkcs11_module))
    init_token = module.C_InitToken
    init_token.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    init_token.restype = ctypes.c_ulong
    label = config.token_label.encode().ljust(32)[:32]
    pin = so_pin.encode()
    rv = init_token(empty[0].slot_id, pin, len(pin), label)
    if rv != _CKR_OK:
        raise IdentityError(f"the TPM refused to create the token (C_InitToken 0x{rv:x})")


def _init_pin(token: pkcs11.Token, config: IdentityConfig, so_pin: str, user_pin: str) -> None:
    try:
        with token.open(rw=True, so_pin=so_pin) as session:
            session.init_pin(user_pin)
    except p11err.PKCS11Error as exc:
        raise pkcs11_failure(exc, config, "setting the token PIN") from exc


def provision_tpm(config: IdentityConfig) -> Provisioned:
    """Create the token and the box key in the TPM if missing; return the public key.

    Idempotent: an existing token and key are kept (first boot may be
    interrupted and run again). A token whose PIN file is gone is an error,
    never silently replaced: it would change the box's identity.
    """
    if config.kind != "tpm" or config.pin_file is None:
        raise IdentityError('provisioning needs [identity] kind = "tpm" and a pin_file')
    if config.tpm_store is not None:
        config.tpm_store.mkdir(mode=0o700, parents=True, exist_ok=True)
    lib = load_module(config)
    created_token = created_key = False
    try:
        token = lib.get_token(token_label=config.token_label)
    except p11err.NoSuchToken:
        so_pin, user_pin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        _write_secret(so_pin_file(config), so_pin)
        _write_secret(config.pin_file, user_pin)
        _init_token(config, lib, so_pin)
        token = get_token(lib, config)
        _init_pin(token, config, so_pin, user_pin)
        created_token = True
        _log.info("TPM token '%s' created", config.token_label)
    else:
        try:
            # read-write: a failed login leaves its session open, and a read-only one
            # would stop the SO from logging in (CKR_SESSION_READ_ONLY_EXISTS)
            token.open(rw=True, user_pin=read_pin(config)).close()
        except p11err.UserPinNotInitialized:  # interrupted between C_InitToken and C_InitPIN
            so_file = replace(config, pin_file=so_pin_file(config))
            _init_pin(token, config, read_pin(so_file), read_pin(config))
        except p11err.PKCS11Error as exc:
            raise pkcs11_failure(exc, config, "opening the token") from exc
    try:
        with token.open(
            rw=True, user_pin=read_pin(config), attribute_mapper=_TpmKeyTemplates()
        ) as session:
            try:
                find_private_key(session, config)
            except p11err.NoSuchKey:
                parameters = session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
                    local=True,
                )
                parameters.generate_keypair(store=True, label=config.key_label, id=_KEY_ID)
                created_key = True
                _log.info("box key '%s' generated in the TPM", config.key_label)
            public = public_key_of(session, config)
    except p11err.PKCS11Error as exc:
        raise pkcs11_failure(exc, config, "creating the box key") from exc
    return Provisioned(public, created_token, created_key)


def tpm_csr(config: IdentityConfig, subject: x509.Name) -> x509.CertificateSigningRequest:
    """A certification request for the TPM key, signed in the TPM."""
    lib = load_module(config)
    token = get_token(lib, config)
    try:
        with token.open(user_pin=read_pin(config)) as session:
            key = find_private_key(session, config)
            public = public_key_of(session, config)

            def sign(data: bytes) -> bytes:
                assert isinstance(key, SignMixin)
                return raw_to_der(key.sign(data, mechanism=Mechanism.ECDSA_SHA256))

            return build_csr(public, subject, sign)
    except p11err.PKCS11Error as exc:
        raise pkcs11_failure(exc, config, "signing the certification request") from exc
