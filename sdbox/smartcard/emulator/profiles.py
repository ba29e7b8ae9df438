"""Card profiles: what an issuing station writes on a new BIO SSO card.

A profile is a TOML file (the built-in ``demo`` is
``demo-profile.toml`` beside this module) declaring the holder, the fingers
and the projects. :func:`issue_card` turns it into a card state under a PKI
(:class:`sdbox.trust.pki.Pki`): keys generated, certificates issued, the
project directory signed, and, for each project, the bubble server's key and
certificate written beside the PKI so that test and demo bubbles can serve
them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sdbox.certificates import load_certificate
from sdbox.errors import SdboxError
from sdbox.smartcard.directory import (
    Directory,
    Project,
    Protocol,
    SecondFactor,
    certificate_sha256,
    sign_directory,
)
from sdbox.smartcard.emulator.state import (
    DEFAULT_FINGER_TRIES,
    DEFAULT_PIN_TRIES,
    DEFAULT_PUK_TRIES,
    CardState,
    Counter,
)
from sdbox.smartcard.profile import (
    RETIRED_SLOTS,
    Discovery,
    FingerBit,
    KeyRef,
    ObjectTag,
    Slot,
    certificate_object,
    decode_certificate,
    encode_bit_group,
    encode_ccc,
    encode_certificate,
    encode_chuid,
    encode_key_history,
    pad_pin,
)
from sdbox.trust.pki import Pki

_CURVES: dict[str, ec.EllipticCurve] = {"p256": ec.SECP256R1(), "p384": ec.SECP384R1()}
MIN_MINUTIAE = 12
MAX_MINUTIAE = 60
MINUTIAE_ORDER_NONE = 0x00


class ProfileError(SdboxError):
    """A card profile file is invalid: the message names the file, key and problem."""


@dataclass(frozen=True)
class FingerSpec:
    """A finger to enrol."""

    reference: int
    subtype: int
    identity_seed: int


@dataclass(frozen=True)
class ProjectSpec:
    """A project compartment to create."""

    id: str
    name: str
    protocol: Protocol
    endpoint: str
    second_factor: SecondFactor
    audio: bool
    curve: str
    valid_days: int


@dataclass(frozen=True)
class ChipSpec:
    """How the card generation is built ([card] table; docs/card-variants.md)."""

    layout: str = "directory"  # or "one-project": the 9A key and certificate are the project
    transmission: str = "T=1"  # or "T=0"
    extended_length: bool = True
    compress_certificates: bool = False


@dataclass(frozen=True)
class CardProfile:
    """A parsed, validated card profile."""

    source: str
    label: str
    holder: str
    pin: str
    puk: str
    management_key: bytes
    holder_key: str
    fingers: tuple[FingerSpec, ...]
    projects: tuple[ProjectSpec, ...]
    chip: ChipSpec = ChipSpec()


PROFILE_DIR = "card-profiles"  # beside this module: one TOML file per card variant


def profile_names() -> list[str]:
    """The built-in profiles: ``demo``, then one per card variant (docs/card-variants.md)."""
    folder = resources.files("sdbox.smartcard.emulator").joinpath(PROFILE_DIR)
    names = sorted(
        item.name.removesuffix(".toml") for item in folder.iterdir() if item.name.endswith(".toml")
    )
    return ["demo", *names]


def load_profile(name_or_path: str) -> CardProfile:
    """Load a built-in profile by name (``demo``, a variant's) or a profile file."""
    package = resources.files("sdbox.smartcard.emulator")
    if name_or_path == "demo":
        text = package.joinpath("demo-profile.toml").read_text()
        return parse_profile(text, source="demo profile")
    if re.fullmatch(r"[a-z0-9-]+", name_or_path):
        builtin = package.joinpath(PROFILE_DIR, f"{name_or_path}.toml")
        if builtin.is_file():
            return parse_profile(builtin.read_text(), source=f"{name_or_path} profile")
        if not Path(name_or_path).exists():
            raise ProfileError(
                f"no card profile named '{name_or_path}' "
                f"(built in: {', '.join(profile_names())}; or a path to a TOML file)"
            )
    path = Path(name_or_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(f"card profile {path}: cannot be read ({exc.strerror})") from exc
    return parse_profile(text, source=str(path))


def _get(raw: dict[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        raise ProfileError(f"{where}: '{key}' is missing")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProfileError(f"{where}: '{key}' must be {kind.__name__}, not {type(value).__name__}")
    return value


def parse_profile(text: str, *, source: str) -> CardProfile:
    """Parse and validate a profile's TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{source}: not valid TOML ({exc})") from exc
    pin, puk = _get(raw, "pin", str, source), _get(raw, "puk", str, source)
    for key, value in (("pin", pin), ("puk", puk)):
        if not re.fullmatch(r"[0-9]{6,8}", value):
            raise ProfileError(f"{source}: '{key}' must be 6 to 8 digits")
    mgmt = _get(raw, "management_key", str, source)
    if not re.fullmatch(r"[0-9a-fA-F]{32}", mgmt):
        raise ProfileError(f"{source}: 'management_key' must be 32 hex digits (AES-128)")
    holder_key = _get(raw, "holder_key", str, source, "p256")
    if holder_key not in ("p256", "p384", "rsa2048"):
        raise ProfileError(f"{source}: 'holder_key' must be p256, p384 or rsa2048")
    fingers = []
    for i, f in enumerate(raw.get("fingers", [])):
        where = f"{source}: fingers[{i}]"
        try:
            ref = int(_get(f, "reference", str, where), 16)
        except ValueError:  # not hex at all (found by fuzzing)
            ref = -1
        if ref not in (KeyRef.FINGER_PRIMARY, KeyRef.FINGER_SECONDARY):
            raise ProfileError(f"{where}: 'reference' must be 96 or 97")
        fingers.append(
            FingerSpec(ref, _get(f, "subtype", int, where, 0), _get(f, "identity_seed", int, where))
        )
    projects = []
    for i, p in enumerate(raw.get("projects", [])):
        where = f"{source}: projects[{i}]"
        try:
            protocol = Protocol[_get(p, "protocol", str, where).upper()]
            factor = SecondFactor[_get(p, "second_factor", str, where, "finger").upper()]
        except KeyError as exc:
            raise ProfileError(
                f"{where}: protocol must be rdp|spice and second_factor finger|finger_or_pin"
            ) from exc
        curve = _get(p, "curve", str, where, "p256")
        if curve not in (*_CURVES, "rsa2048"):
            raise ProfileError(f"{where}: 'curve' must be p256, p384 or rsa2048")
        projects.append(
            ProjectSpec(
                id=_get(p, "id", str, where),
                name=_get(p, "name", str, where),
                protocol=protocol,
                endpoint=_get(p, "endpoint", str, where),
                second_factor=factor,
                audio=_get(p, "audio", bool, where, False),
                curve=curve,
                valid_days=_get(p, "valid_days", int, where, 365),
            )
        )
    if len(projects) > len(RETIRED_SLOTS):
        raise ProfileError(f"{source}: at most {len(RETIRED_SLOTS)} projects fit on a card")
    chip = _parse_chip(raw.get("card", {}), f"{source}: [card]")
    if chip.layout == "one-project" and len(projects) != 1:
        raise ProfileError(f"{source}: a one-project card holds exactly one project")
    return CardProfile(
        source=source,
        label=_get(raw, "label", str, source, "BIO SSO"),
        holder=_get(raw, "holder", str, source),
        pin=pin,
        puk=puk,
        management_key=bytes.fromhex(mgmt),
        holder_key=holder_key,
        fingers=tuple(fingers),
        projects=tuple(projects),
        chip=chip,
    )


def _parse_chip(raw: Any, where: str) -> ChipSpec:
    if not isinstance(raw, dict):
        raise ProfileError(f"{where}: must be a table")
    layout = _get(raw, "layout", str, where, "directory")
    if layout not in ("directory", "one-project"):
        raise ProfileError(f"{where}: 'layout' must be directory or one-project")
    transmission = _get(raw, "transmission", str, where, "T=1")
    if transmission not in ("T=0", "T=1"):
        raise ProfileError(f"{where}: 'transmission' must be T=0 or T=1")
    extended = _get(raw, "extended_length", bool, where, True)
    if transmission == "T=0" and extended:
        raise ProfileError(f"{where}: a T=0 chip has no extended length (set it false)")
    return ChipSpec(
        layout=layout,
        transmission=transmission,
        extended_length=extended,
        compress_certificates=_get(raw, "compress_certificates", bool, where, False),
    )


def seeded_template(identity_seed: int) -> bytes:
    """The reference an enrolment station takes for synthetic finger ``identity_seed``."""
    from sdbox.biometric.synth import enrolment_template  # noqa: PLC0415

    return enrolment_template(identity_seed)


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(data)


def _bubble_certificate(pki: Pki, spec: ProjectSpec) -> x509.Certificate:
    """The bubble's server certificate: the one already issued for it, or a new one.

    A bubble keeps its certificate whatever card is issued next, so cards
    issued one after the other under one PKI point at the same bubbles.
    """
    host = spec.endpoint.rsplit(":", 1)[0]
    where = bubble_dir(pki.path, spec.id)
    existing = where / "server.pem"
    if existing.exists() and (where / "server.key").exists():
        cert = load_certificate(existing.read_bytes())
        if cert.not_valid_after_utc > datetime.now(UTC) and host in _san_values(cert):
            return cert
    server_key = ec.generate_private_key(ec.SECP256R1())
    cert = pki.issue_server(host, server_key.public_key())
    _write_private(where / "server.key", _pem(server_key))
    existing.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _san_values(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(getattr(name, "value", "")) for name in san]


def bubble_dir(pki_dir: Path, project_id: str) -> Path:
    """Where the bubble server key and certificate of ``project_id`` are kept."""
    return pki_dir / "bubbles" / project_id


def issue_card(
    profile: CardProfile,
    pki: Pki,
    *,
    state_path: Path | None = None,
    now: datetime | None = None,
    keygen_seed: bytes | None = None,
    guid: bytes | None = None,
) -> CardState:
    """Issue a new card from ``profile`` under ``pki`` (the issuing station's job)."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    guid = guid or secrets.token_bytes(16)
    state = CardState(
        guid=guid,
        label=profile.label,
        pin=Counter(pad_pin(profile.pin), DEFAULT_PIN_TRIES, DEFAULT_PIN_TRIES),
        puk=Counter(pad_pin(profile.puk), DEFAULT_PUK_TRIES, DEFAULT_PUK_TRIES),
        fingers={},
        management_key=profile.management_key,
        keygen_seed=keygen_seed,
        path=state_path,
        transmission=profile.chip.transmission,
        extended_length=profile.chip.extended_length,
    )
    compressed = profile.chip.compress_certificates
    if profile.chip.layout == "one-project":
        _issue_one_project(profile, pki, state, now)
    else:
        _issue_directory_card(profile, pki, state, now, guid)
    _enrol_fingers(profile, state)
    state.objects[ObjectTag.CHUID] = encode_chuid(
        guid, (now + timedelta(days=5 * 365)).strftime("%Y%m%d")
    )
    state.objects[ObjectTag.CCC] = encode_ccc(guid)
    if compressed:
        for tag, value in list(state.objects.items()):
            if _is_certificate_object(tag):
                state.objects[tag] = _recompress(value)
    state.save()
    return state


def _is_certificate_object(tag: int) -> bool:
    return (
        tag == ObjectTag.AUTH_CERT or ObjectTag.RETIRED_CERT_1 <= tag <= ObjectTag.RETIRED_CERT_20
    )


def _recompress(container: bytes) -> bytes:
    return encode_certificate(decode_certificate(container), compressed=True)


def _new_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(_CURVES[kind])


def _project_credential(
    profile: CardProfile, spec: ProjectSpec, pki: Pki, now: datetime
) -> tuple[ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, x509.Certificate]:
    """A fresh key of the project's curve and its certificate from the project CA."""
    key = _new_key(spec.curve)
    cert = pki.issue_project(
        spec.id,
        key.public_key(),
        subject_cn=f"{profile.holder} ({spec.id})",
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(days=spec.valid_days),
    )
    return key, cert


def _issue_one_project(profile: CardProfile, pki: Pki, state: CardState, now: datetime) -> None:
    """The earlier one-project card: the 9A key and certificate are the project's credential."""
    spec = profile.projects[0]
    key, cert = _project_credential(profile, spec, pki, now)
    state.keys[Slot.AUTHENTICATION] = key
    state.objects[ObjectTag.AUTH_CERT] = encode_certificate(
        cert.public_bytes(serialization.Encoding.DER)
    )
    _bubble_certificate(pki, spec)


def _issue_directory_card(
    profile: CardProfile, pki: Pki, state: CardState, now: datetime, guid: bytes
) -> None:
    """The multi-project card: holder key in 9A, one retired slot per project, the directory."""
    der = serialization.Encoding.DER
    holder_key = _new_key(profile.holder_key)
    holder_cert = pki.issue_holder(holder_key.public_key(), subject_cn=profile.holder)
    state.keys[Slot.AUTHENTICATION] = holder_key
    state.objects[ObjectTag.AUTH_CERT] = encode_certificate(holder_cert.public_bytes(der))

    projects = []
    for index, spec in enumerate(profile.projects):
        slot = RETIRED_SLOTS[index]
        key, cert = _project_credential(profile, spec, pki, now)
        state.keys[slot] = key
        cert_der = cert.public_bytes(der)
        state.objects[certificate_object(slot)] = encode_certificate(cert_der)
        server_cert = _bubble_certificate(pki, spec)
        projects.append(
            Project(
                id=spec.id,
                name=spec.name,
                slot=slot,
                certificate_sha256=certificate_sha256(cert_der),
                subject=cert.subject.rfc4514_string(),
                not_after=cert.not_valid_after_utc,
                protocol=spec.protocol,
                endpoint=spec.endpoint,
                server_certificate=server_cert.public_bytes(der),
                second_factor=spec.second_factor,
                audio=spec.audio,
            )
        )
    state.objects[ObjectTag.KEY_HISTORY] = encode_key_history(len(projects))
    signer = pki.directory_signer
    if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
        raise ProfileError("the PKI's directory signer has no EC private key")
    directory = Directory(sequence=1, issued=now, card_guid=guid, projects=tuple(projects))
    signed = sign_directory(directory, signer.key, signer.cert, [pki.project_ca.cert])
    state.objects[ObjectTag.DIRECTORY] = signed.encode()


def _enrol_fingers(profile: CardProfile, state: CardState) -> None:
    bits = []
    for finger in profile.fingers:
        template = seeded_template(finger.identity_seed)
        state.fingers[finger.reference] = Counter(
            template, DEFAULT_FINGER_TRIES, DEFAULT_FINGER_TRIES
        )
        bits.append(
            FingerBit(
                finger.reference, finger.subtype, MIN_MINUTIAE, MAX_MINUTIAE, MINUTIAE_ORDER_NONE
            )
        )
    state.objects[ObjectTag.DISCOVERY] = Discovery(
        piv_pin=True, global_pin=False, occ=bool(bits)
    ).encode()
    if bits:
        state.objects[ObjectTag.BIT_GROUP] = encode_bit_group(bits)


def guid_for(seed: str) -> bytes:
    """A stable GUID for a named test card."""
    return hashlib.sha256(seed.encode()).digest()[:16]
