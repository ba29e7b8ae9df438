"""The signed project directory (data object 5FFF40).

One object lists every project compartment on the card, with what the
picker needs (so that listing needs no per-slot reads) and what the
connection needs (endpoint, the bubble server's certificate, policy). It is
signed by a directory-signing key certified under the project CA, the way
PIV signs its security object; the signature covers the card's GUID so a
directory copied onto another card does not verify. Layout: docs/card-profile.md.

This module checks the signature with the signer certificate's key; whether
the signer itself is trusted is decided by :mod:`sdbox.trust` (the caller
passes a validator), so that this layer stays free of trust policy.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.smartcard import tlv
from sdbox.smartcard.errors import DirectoryError, TlvError
from sdbox.smartcard.profile import RETIRED_SLOTS

VERSION = 1
TAG_TBS = 0x70
TAG_SIGNER = 0x71
TAG_INTERMEDIATE = 0x72
TAG_SIGNATURE = 0x73
TAG_PROJECT = 0xA0
# inside 70
T_VERSION = 0x80
T_SEQUENCE = 0x81
T_ISSUED = 0x82
T_GUID = 0x83
# inside A0
P_ID = 0x80
P_NAME = 0x81
P_SLOT = 0x82
P_CERT_HASH = 0x83
P_SUBJECT = 0x84
P_NOT_AFTER = 0x85
P_PROTOCOL = 0x86
P_ENDPOINT = 0x87
P_SERVER_CERT = 0x88
P_SECOND_FACTOR = 0x89
P_AUDIO = 0x8A

_TIME_FORMAT = "%Y%m%d%H%M%SZ"
_PROJECT_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_ENDPOINT = re.compile(r"^[A-Za-z0-9.-]{1,253}:[0-9]{1,5}$")
MAX_PROJECTS = len(RETIRED_SLOTS)


class Protocol(IntEnum):
    """How the bubble is reached."""

    RDP = 1
    SPICE = 2


class SecondFactor(IntEnum):
    """Which holder verification a project accepts."""

    FINGER = 1
    FINGER_OR_PIN = 2


@dataclass(frozen=True)
class Project:
    """One project compartment as the directory describes it."""

    id: str
    name: str
    slot: int
    certificate_sha256: bytes
    subject: str
    not_after: datetime
    protocol: Protocol
    endpoint: str
    server_certificate: bytes  # DER
    second_factor: SecondFactor = SecondFactor.FINGER
    audio: bool = False

    @property
    def host(self) -> str:
        """The bubble's host name."""
        return self.endpoint.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """The bubble's port."""
        return int(self.endpoint.rsplit(":", 1)[1])

    def encode(self) -> bytes:
        """The project's A0 element."""
        return tlv.tlv(
            TAG_PROJECT,
            tlv.tlv(P_ID, self.id.encode())
            + tlv.tlv(P_NAME, self.name.encode())
            + tlv.tlv(P_SLOT, bytes((self.slot,)))
            + tlv.tlv(P_CERT_HASH, self.certificate_sha256)
            + tlv.tlv(P_SUBJECT, self.subject.encode())
            + tlv.tlv(P_NOT_AFTER, _time(self.not_after))
            + tlv.tlv(P_PROTOCOL, bytes((self.protocol,)))
            + tlv.tlv(P_ENDPOINT, self.endpoint.encode())
            + tlv.tlv(P_SERVER_CERT, self.server_certificate)
            + tlv.tlv(P_SECOND_FACTOR, bytes((self.second_factor,)))
            + tlv.tlv(P_AUDIO, bytes((1 if self.audio else 0,))),
        )


@dataclass(frozen=True)
class Directory:
    """The signed content of the directory object."""

    sequence: int
    issued: datetime
    card_guid: bytes
    projects: tuple[Project, ...]

    def tbs(self) -> bytes:
        """The signed part (the 70 element, tag and length included)."""
        return tlv.tlv(
            TAG_TBS,
            tlv.tlv(T_VERSION, bytes((VERSION,)))
            + tlv.tlv(T_SEQUENCE, self.sequence.to_bytes(4, "big"))
            + tlv.tlv(T_ISSUED, _time(self.issued))
            + tlv.tlv(T_GUID, self.card_guid)
            + b"".join(p.encode() for p in self.projects),
        )

    def project(self, project_id: str) -> Project:
        """The project named ``project_id``."""
        for p in self.projects:
            if p.id == project_id:
                return p
        raise DirectoryError(f"this card has no project '{project_id}'")


@dataclass(frozen=True)
class SignedDirectory:
    """A directory as stored on the card, with its signer."""

    directory: Directory
    signer: x509.Certificate
    intermediates: tuple[x509.Certificate, ...]
    signature: bytes
    tbs: bytes

    def encode(self) -> bytes:
        """The object value (inside 53) as written to the card."""
        return (
            self.tbs
            + tlv.tlv(TAG_SIGNER, _der(self.signer))
            + b"".join(tlv.tlv(TAG_INTERMEDIATE, _der(c)) for c in self.intermediates)
            + tlv.tlv(TAG_SIGNATURE, self.signature)
        )

    def verify(
        self,
        *,
        card_guid: bytes,
        validate_signer: Callable[[x509.Certificate, list[x509.Certificate]], None],
    ) -> Directory:
        """Check signature, card binding and signer; return the directory.

        ``validate_signer(signer, intermediates)`` must raise if the signer is
        not a trusted directory signer (chain, purpose, revocation): that is
        the trust layer's decision, and every error it raises propagates.
        """
        try:
            key = self.signer.public_key()
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DirectoryError(f"the directory signer's public key is unusable: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise DirectoryError("the directory signer's key is not an EC key")
        digest: hashes.HashAlgorithm = (
            hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
        )
        try:
            key.verify(self.signature, self.tbs, ec.ECDSA(digest))
        except InvalidSignature as exc:
            raise DirectoryError(
                "the project directory's signature does not verify: the card was altered "
                "or damaged; take it to your card office"
            ) from exc
        if self.directory.card_guid != card_guid:
            raise DirectoryError(
                "the project directory belongs to another card (GUID mismatch); "
                "take the card to your card office"
            )
        validate_signer(self.signer, list(self.intermediates))
        return self.directory


def sign_directory(
    directory: Directory,
    key: ec.EllipticCurvePrivateKey,
    signer: x509.Certificate,
    intermediates: list[x509.Certificate],
) -> SignedDirectory:
    """Sign ``directory`` (at the enrolment station / centre, never on the box)."""
    digest: hashes.HashAlgorithm = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    tbs = directory.tbs()
    signature = key.sign(tbs, ec.ECDSA(digest))
    return SignedDirectory(directory, signer, tuple(intermediates), signature, tbs)


def parse_signed_directory(value: bytes) -> SignedDirectory:
    """Parse the directory object value; every malformation is a DirectoryError."""
    try:
        items = tlv.parse_list(value)
    except TlvError as exc:
        raise DirectoryError(f"the project directory does not parse: {exc}") from exc
    tbs_items = [i for i in items if i.tag == TAG_TBS]
    signers = [i for i in items if i.tag == TAG_SIGNER]
    signatures = [i for i in items if i.tag == TAG_SIGNATURE]
    if len(tbs_items) != 1 or len(signers) != 1 or len(signatures) != 1:
        raise DirectoryError(
            "the project directory lacks its content (70), signer (71) or signature (73)"
        )
    try:
        signer = load_certificate(signers[0].value)
        intermediates = tuple(
            load_certificate(i.value) for i in items if i.tag == TAG_INTERMEDIATE
        )
    except UnreadableCertificate as exc:
        raise DirectoryError(
            f"the project directory's signer certificate is malformed: {exc}"
        ) from exc
    tbs = tbs_items[0]
    return SignedDirectory(
        directory=_parse_tbs(tbs.value),
        signer=signer,
        intermediates=intermediates,
        signature=signatures[0].value,
        tbs=tbs.encode(),
    )


def _parse_tbs(value: bytes) -> Directory:
    try:
        items = tlv.parse_list(value)
        head: dict[int, bytes] = {}
        projects: list[Project] = []
        for item in items:
            if item.tag == TAG_PROJECT:
                projects.append(_parse_project(item.value))
            elif item.tag in head:
                raise DirectoryError(f"the project directory repeats field {item.tag:02X}")
            else:
                head[item.tag] = item.value
    except TlvError as exc:
        raise DirectoryError(f"the project directory does not parse: {exc}") from exc
    if head.get(T_VERSION) != bytes((VERSION,)):
        raise DirectoryError("the project directory has an unsupported version")
    for tag, name in ((T_SEQUENCE, "sequence"), (T_ISSUED, "issue time"), (T_GUID, "card GUID")):
        if tag not in head:
            raise DirectoryError(f"the project directory lacks its {name}")
    if len(projects) > MAX_PROJECTS:
        raise DirectoryError(f"the project directory lists more than {MAX_PROJECTS} projects")
    ids = [p.id for p in projects]
    slots = [p.slot for p in projects]
    if len(set(ids)) != len(ids) or len(set(slots)) != len(slots):
        raise DirectoryError("the project directory names a project or a slot twice")
    return Directory(
        sequence=int.from_bytes(head[T_SEQUENCE], "big"),
        issued=_parse_time(head[T_ISSUED], "issue time"),
        card_guid=head[T_GUID],
        projects=tuple(projects),
    )


def _parse_project(value: bytes) -> Project:
    fields = tlv.parse_dict(value)
    required = {
        P_ID: "id", P_NAME: "name", P_SLOT: "slot", P_CERT_HASH: "certificate hash",
        P_SUBJECT: "subject", P_NOT_AFTER: "expiry", P_PROTOCOL: "protocol",
        P_ENDPOINT: "endpoint", P_SERVER_CERT: "server certificate",
    }  # fmt: skip
    for tag, name in required.items():
        if tag not in fields:
            raise DirectoryError(f"a project in the directory lacks its {name}")
    try:
        pid = fields[P_ID].decode()
        name = fields[P_NAME].decode()
        subject = fields[P_SUBJECT].decode()
        endpoint = fields[P_ENDPOINT].decode()
    except UnicodeDecodeError as exc:
        raise DirectoryError("a project in the directory has text that is not UTF-8") from exc
    if not _PROJECT_ID.match(pid):
        raise DirectoryError(f"the directory has an invalid project id {pid!r}")
    if not _ENDPOINT.match(endpoint) or not 0 < int(endpoint.rsplit(":", 1)[1]) < 65536:
        raise DirectoryError(f"project '{pid}' has an invalid endpoint {endpoint!r}")
    slot = fields[P_SLOT]
    if len(slot) != 1 or slot[0] not in RETIRED_SLOTS:
        raise DirectoryError(f"project '{pid}' names a slot outside 82-95")
    if len(fields[P_CERT_HASH]) != 32:
        raise DirectoryError(f"project '{pid}' has a certificate hash that is not SHA-256")
    try:
        protocol = Protocol(_byte(fields[P_PROTOCOL]))
        factor = SecondFactor(_byte(fields.get(P_SECOND_FACTOR, b"\x01")))
    except ValueError as exc:
        raise DirectoryError(f"project '{pid}' has an unknown protocol or policy") from exc
    return Project(
        id=pid,
        name=name,
        slot=slot[0],
        certificate_sha256=fields[P_CERT_HASH],
        subject=subject,
        not_after=_parse_time(fields[P_NOT_AFTER], f"project '{pid}' expiry"),
        protocol=protocol,
        endpoint=endpoint,
        server_certificate=fields[P_SERVER_CERT],
        second_factor=factor,
        audio=_byte(fields.get(P_AUDIO, b"\x00")) == 1,
    )


def _byte(value: bytes) -> int:
    if len(value) != 1:
        raise ValueError("expected one byte")
    return value[0]


def _time(moment: datetime) -> bytes:
    return moment.astimezone(UTC).strftime(_TIME_FORMAT).encode()


def _parse_time(raw: bytes, what: str) -> datetime:
    try:
        return datetime.strptime(raw.decode("ascii"), _TIME_FORMAT).replace(tzinfo=UTC)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DirectoryError(f"the directory's {what} is not a valid time") from exc


def _der(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return cert.public_bytes(Encoding.DER)


def certificate_sha256(der: bytes) -> bytes:
    """The hash the directory records for a project certificate."""
    return hashlib.sha256(der).digest()


def parse_directory_tbs(encoded: bytes) -> Directory:
    """Parse a directory's signed part (the whole 70 element), e.g. one a centre is asked to sign."""
    try:
        element = tlv.parse_one(encoded, TAG_TBS)
    except TlvError as exc:
        raise DirectoryError(f"the proposed project directory does not parse: {exc}") from exc
    return _parse_tbs(element.value)
