"""The holder key through PKCS#11 (python-pkcs11 on OpenSC's ``opensc-pkcs11.so``).

This is how other software on a workstation uses the same card (OpenSC
presents the BIO SSO card as a PIV token), and the path the TPM-held box
identity shares. Only this module imports python-pkcs11.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pkcs11
import pkcs11.types
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11err

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.smartcard.errors import CardAccessError, NoCard, VerificationError

OPENSC_MODULE = Path("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
HOLDER_KEY_ID = b"\x01"  # OpenSC's id for PIV slot 9A


class Pkcs11Error(CardAccessError):
    """The PKCS#11 module or token failed."""


@dataclass(frozen=True)
class TokenInfo:
    """What the PKCS#11 module says about the card."""

    reader: str
    label: str
    serial: str


class Pkcs11Card:
    """The card in ``reader`` (or the first token) through a PKCS#11 module."""

    def __init__(self, module: Path = OPENSC_MODULE, reader: str | None = None) -> None:
        try:
            lib = pkcs11.lib(str(module))
        except (RuntimeError, OSError) as exc:  # python-pkcs11 raises RuntimeError for a bad path
            raise Pkcs11Error(f"PKCS#11 module {module} cannot be loaded: {exc}") from exc
        slots = [
            s
            for s in lib.get_slots(token_present=True)
            if reader is None or s.slot_description.strip() == reader
        ]
        if not slots:
            raise NoCard(
                f"no PKCS#11 token{' in ' + repr(reader) if reader else ''}: insert your card"
            )
        self._slot = slots[0]
        self._token = self._slot.get_token()

    @property
    def info(self) -> TokenInfo:
        """Reader, label and serial of the token."""
        serial = self._token.serial
        return TokenInfo(
            reader=self._slot.slot_description.strip(),
            label=self._token.label,
            serial=serial.decode() if isinstance(serial, bytes) else str(serial),
        )

    def holder_certificate(self) -> x509.Certificate:
        """The holder's certificate (PIV slot 9A), read without login."""
        with self._token.open() as session:
            for obj in session.get_objects(
                {Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.ID: HOLDER_KEY_ID}
            ):
                try:
                    return load_certificate(bytes(obj[Attribute.VALUE]), "holder certificate")
                except UnreadableCertificate as exc:
                    raise Pkcs11Error(exc.message) from exc
        raise Pkcs11Error("the token has no holder certificate (PIV slot 9A)")

    def sign(self, message: bytes, pin: str) -> bytes:
        """Sign ``message`` with the holder key (ECDSA-SHA256 DER, or RSA PKCS#1 v1.5 SHA-256)."""
        try:
            with self._token.open(user_pin=pin) as session:
                key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=HOLDER_KEY_ID)
                if not isinstance(key, pkcs11.types.SignMixin):
                    raise Pkcs11Error("the token's holder key cannot sign")
                if key.key_type == KeyType.EC:
                    raw = key.sign(message, mechanism=Mechanism.ECDSA_SHA256)
                    half = len(raw) // 2
                    return encode_dss_signature(
                        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
                    )
                return bytes(key.sign(message, mechanism=Mechanism.SHA256_RSA_PKCS))
        except p11err.PinIncorrect as exc:
            raise VerificationError("wrong PIN (through PKCS#11)") from exc
        except p11err.PinLocked as exc:
            raise VerificationError(
                "the PIN is blocked: have it reset with the PUK at your card office"
            ) from exc
        except p11err.TokenNotPresent as exc:
            raise NoCard("the card was removed") from exc
        except p11err.PKCS11Error as exc:
            raise Pkcs11Error(f"PKCS#11 signing failed: {type(exc).__name__}") from exc
