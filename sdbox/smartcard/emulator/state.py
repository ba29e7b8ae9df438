"""Persistent state of an emulated card (keys, objects, reference data, counters).

Saved as JSON after every change, atomically (temporary file, fsync,
rename), so that what a renewal writes survives removal, reinsertion and a
killed emulator, and a crash never leaves a half-written card. The file holds
the card's private keys and reference data, like a real card's EEPROM: it is
created mode 0600 and belongs in a test or demo directory only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sdbox.errors import SdboxError
from sdbox.smartcard.profile import Algorithm

STATE_VERSION = 1
DEFAULT_PIN_TRIES = 3
DEFAULT_PUK_TRIES = 3
DEFAULT_FINGER_TRIES = 5

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CardStateError(SdboxError):
    """The card state file is missing, corrupt or of another version."""


@dataclass
class Counter:
    """A verification reference with its retry counter."""

    reference: bytes | None
    tries: int
    max_tries: int

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "reference": None if self.reference is None else self.reference.hex(),
            "tries": self.tries,
            "max_tries": self.max_tries,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Counter:
        """Parse the JSON form."""
        ref = raw.get("reference")
        return cls(
            reference=None if ref is None else bytes.fromhex(ref),
            tries=int(raw["tries"]),
            max_tries=int(raw["max_tries"]),
        )


@dataclass
class CardState:
    """Everything a card keeps across power cycles."""

    guid: bytes
    pin: Counter
    puk: Counter
    fingers: dict[int, Counter]
    management_key: bytes
    management_algorithm: int = Algorithm.AES128
    keys: dict[int, PrivateKey] = field(default_factory=dict)
    objects: dict[int, bytes] = field(default_factory=dict)
    keygen_seed: bytes | None = None
    keygen_counter: int = 0
    label: str = "BIO SSO (sdbox emulator)"
    path: Path | None = None
    # How the chip talks (its variant, docs/card-variants.md): stated in its ATR.
    transmission: str = "T=1"
    extended_length: bool = True

    # -- persistence --------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored in the state file."""
        return {
            "version": STATE_VERSION,
            "label": self.label,
            "guid": self.guid.hex(),
            "pin": self.pin.to_json(),
            "puk": self.puk.to_json(),
            "fingers": {f"{ref:02x}": c.to_json() for ref, c in sorted(self.fingers.items())},
            "management_key": self.management_key.hex(),
            "management_algorithm": self.management_algorithm,
            "keys": {
                f"{slot:02x}": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode()
                for slot, key in sorted(self.keys.items())
            },
            "objects": {f"{tag:x}": value.hex() for tag, value in sorted(self.objects.items())},
            "keygen_seed": None if self.keygen_seed is None else self.keygen_seed.hex(),
            "keygen_counter": self.keygen_counter,
            "transmission": self.transmission,
            "extended_length": self.extended_length,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], path: Path | None = None) -> CardState:
        """Rebuild a state from its JSON document."""
        if raw.get("version") != STATE_VERSION:
            raise CardStateError(f"card state {path}: unsupported version {raw.get('version')!r}")
        keys: dict[int, PrivateKey] = {}
        for slot, pem in raw.get("keys", {}).items():
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                raise CardStateError(f"card state {path}: slot {slot} holds an unsupported key")
            keys[int(slot, 16)] = key
        seed = raw.get("keygen_seed")
        return cls(
            label=str(raw.get("label", "BIO SSO")),
            guid=bytes.fromhex(raw["guid"]),
            pin=Counter.from_json(raw["pin"]),
            puk=Counter.from_json(raw["puk"]),
            fingers={int(k, 16): Counter.from_json(v) for k, v in raw.get("fingers", {}).items()},
            management_key=bytes.fromhex(raw["management_key"]),
            management_algorithm=int(raw.get("management_algorithm", Algorithm.AES128)),
            keys=keys,
            objects={int(k, 16): bytes.fromhex(v) for k, v in raw.get("objects", {}).items()},
            keygen_seed=None if seed is None else bytes.fromhex(seed),
            keygen_counter=int(raw.get("keygen_counter", 0)),
            path=path,
            transmission=str(raw.get("transmission", "T=1")),
            extended_length=bool(raw.get("extended_length", True)),
        )

    def save(self) -> None:
        """Write the state file atomically (no-op for an in-memory card)."""
        if self.path is None:
            return
        data = json.dumps(self.to_json(), indent=1).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".card-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> CardState:
        """Load a state file; a corrupt one is a clear error, never a guess."""
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError as exc:
            raise CardStateError(f"card state {path} does not exist") from exc
        except (OSError, ValueError) as exc:
            raise CardStateError(f"card state {path} is unreadable or not JSON: {exc}") from exc
        try:
            return cls.from_json(raw, path)
        except (KeyError, TypeError, ValueError) as exc:
            raise CardStateError(f"card state {path} is corrupt: {exc!r}") from exc


def deterministic_key(
    seed: bytes, counter: int, curve: ec.EllipticCurve
) -> ec.EllipticCurvePrivateKey:
    """The key the emulator generates for the ``counter``-th GENERATE with ``seed``.

    Lets a test prepare a certificate for the key the card will generate (the
    CMP mock server returns a canned certificate). Never used outside the
    emulator.
    """
    order = {256: 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
             384: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
                      "581A0DB248B0A77AECEC196ACCC52973", 16)}[curve.key_size]  # fmt: skip
    material = hashlib.sha512(seed + counter.to_bytes(4, "big") + curve.name.encode()).digest()
    scalar = int.from_bytes(material, "big") % (order - 1) + 1
    return ec.derive_private_key(scalar, curve)
