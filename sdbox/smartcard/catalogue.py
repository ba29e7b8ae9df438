"""The site's signed project catalogue: where a one-project card's project lives.

The earlier one-project-per-card card (docs/card-variants.md) has no
directory: its 9A certificate names its one project, and nothing on the card
says where that project's bubble is, which server certificate it presents or
whether the PIN may replace the finger. The box finds those in a catalogue
that the centre signs with the same directory-signing key (certified under
the project CA) that signs the cards' directories, and that flashing (or an
update) writes on the box's configuration partition.

The file is JSON::

    {"catalogue": "<base64 of the signed content>",
     "signature": "<base64 DER ECDSA over CONTEXT + content>",
     "signer": "<PEM>", "intermediates": ["<PEM>", ...]}

and the content, itself JSON: ``version`` (1), ``sequence``, ``issued``
(ISO 8601) and ``projects``, each with ``id``, ``name``, ``protocol``
(``rdp`` | ``spice``), ``endpoint`` (HOST:PORT), ``server_certificate``
(base64 DER), ``second_factor`` (``finger`` | ``finger_or_pin``) and
``audio``. The signature covers a context prefix, so a card directory's
signature can never pass for a catalogue's, nor the reverse.

Like :mod:`sdbox.smartcard.directory`, this module checks the signature with
the signer's key and leaves the signer's trust to the caller's validator;
every problem is a :class:`CatalogueError` naming it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.certificates import UnreadableCertificate, load_certificate, load_certificates
from sdbox.smartcard.directory import _ENDPOINT, _PROJECT_ID, Project, Protocol, SecondFactor
from sdbox.smartcard.errors import DirectoryError
from sdbox.smartcard.profile import Slot
from sdbox.smartcard.variants import CertificateFacts

VERSION = 1
CONTEXT = b"sdbox project catalogue v1\x00"
"""Prefix of what the catalogue's signature covers (domain separation from card directories)."""
MAX_BYTES = 1024 * 1024
_PROTOCOLS = {"rdp": Protocol.RDP, "spice": Protocol.SPICE}
_FACTORS = {"finger": SecondFactor.FINGER, "finger_or_pin": SecondFactor.FINGER_OR_PIN}


class CatalogueError(DirectoryError):
    """The catalogue is missing, malformed, not signed by a trusted signer, or lacks a project."""


@dataclass(frozen=True)
class CatalogueEntry:
    """What the catalogue says of one project (what a card directory says, minus the card)."""

    id: str
    name: str
    protocol: Protocol
    endpoint: str
    server_certificate: bytes  # DER
    second_factor: SecondFactor
    audio: bool

    def to_json(self) -> dict[str, Any]:
        """The entry in the catalogue's content."""
        return {
            "id": self.id, "name": self.name, "protocol": self.protocol.name.lower(),
            "endpoint": self.endpoint,
            "server_certificate": base64.b64encode(self.server_certificate).decode(),
            "second_factor": self.second_factor.name.lower(), "audio": self.audio,
        }  # fmt: skip


    def card_project(self, certificate: CertificateFacts) -> Project:
        """The project of a one-project card whose 9A certificate is ``certificate``.

        What the card says (its certificate's digest, subject and expiry) and
        what the catalogue says (the bubble, its certificate, the policy), as
        a directory would list it, so that the connection flow runs
        unchanged: it checks the certificate it reads against this digest,
        validates it as this project's and proves the 9A key on the card.
        """
        if certificate.project_id != self.id:
            raise CatalogueError(
                f"the card's certificate names project '{certificate.project_id}', "
                f"not '{self.id}'"
            )
        return Project(
            id=self.id,
            name=self.name,
            slot=Slot.AUTHENTICATION,  # the card's key is the project's
            certificate_sha256=bytes.fromhex(certificate.sha256),
            subject=certificate.subject,
            not_after=certificate.not_after,
            protocol=self.protocol,
            endpoint=self.endpoint,
            server_certificate=self.server_certificate,
            second_factor=self.second_factor,
            audio=self.audio,
        )


@dataclass(frozen=True)
class ProjectCatalogue:
    """The verified content of a catalogue."""

    sequence: int
    issued: datetime
    projects: tuple[CatalogueEntry, ...]

    def content(self) -> bytes:
        """The signed content (canonical JSON)."""
        return json.dumps(
            {
                "version": VERSION,
                "sequence": self.sequence,
                "issued": self.issued.astimezone(UTC).isoformat(),
                "projects": [p.to_json() for p in self.projects],
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def entry(self, project_id: str) -> CatalogueEntry:
        """The entry of ``project_id`` (:class:`CatalogueError` when the site does not list it)."""
        for entry in self.projects:
            if entry.id == project_id:
                return entry
        raise CatalogueError(
            f"project '{project_id}' is not in this box's project catalogue: this box does "
            "not serve it"
        )


def sign_catalogue(
    catalogue: ProjectCatalogue,
    key: ec.EllipticCurvePrivateKey,
    signer: x509.Certificate,
    intermediates: list[x509.Certificate],
) -> bytes:
    """The catalogue file, signed (at the centre, never on the box)."""
    content = catalogue.content()
    digest: hashes.HashAlgorithm = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    signature = key.sign(CONTEXT + content, ec.ECDSA(digest))
    pem = serialization.Encoding.PEM
    return json.dumps(
        {
            "catalogue": base64.b64encode(content).decode(),
            "signature": base64.b64encode(signature).decode(),
            "signer": signer.public_bytes(pem).decode(),
            "intermediates": [c.public_bytes(pem).decode() for c in intermediates],
        },
        indent=1,
    ).encode()


def verify_catalogue(
    data: bytes,
    validate_signer: Callable[[x509.Certificate, list[x509.Certificate]], None],
) -> ProjectCatalogue:
    """Check the file's signature and signer, then parse its content strictly.

    ``validate_signer(signer, intermediates)`` must raise unless the signer is
    a trusted directory signer (chain, purpose, revocation); what it raises
    propagates. Nothing of the content is believed before both checks pass.
    """
    if len(data) > MAX_BYTES:
        raise CatalogueError("the project catalogue is too large")
    try:
        outer = json.loads(data)
        if not isinstance(outer, dict):
            raise ValueError("not a JSON object")
        content = base64.b64decode(outer["catalogue"], validate=True)
        signature = base64.b64decode(outer["signature"], validate=True)
        signer = load_certificate(str(outer["signer"]).encode())
        chain = outer.get("intermediates", [])
        if not isinstance(chain, list):
            raise ValueError("intermediates is not a list")
        intermediates = [c for pem in chain for c in load_certificates(str(pem).encode())]
    except (ValueError, KeyError, TypeError, binascii.Error, UnreadableCertificate) as exc:
        raise CatalogueError(f"the project catalogue does not parse: {exc}") from exc
    try:
        key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CatalogueError(f"the catalogue signer's public key is unusable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CatalogueError("the catalogue signer's key is not an EC key")
    digest: hashes.HashAlgorithm = hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    try:
        key.verify(signature, CONTEXT + content, ec.ECDSA(digest))
    except InvalidSignature as exc:
        raise CatalogueError(
            "the project catalogue's signature does not verify: it was altered"
        ) from exc
    validate_signer(signer, intermediates)
    return _parse_content(content)


def _parse_content(content: bytes) -> ProjectCatalogue:
    try:
        body = json.loads(content)
        if not isinstance(body, dict) or body.get("version") != VERSION:
            raise CatalogueError("the project catalogue has an unsupported version")
        sequence = body["sequence"]
        if not isinstance(sequence, int) or sequence < 0:
            raise CatalogueError("the project catalogue's sequence is not a number")
        issued = datetime.fromisoformat(str(body["issued"]))
        if issued.tzinfo is None:
            raise CatalogueError("the project catalogue's issue time has no time zone")
        raw = body["projects"]
        if not isinstance(raw, list):
            raise CatalogueError("the project catalogue's projects are not a list")
        projects = tuple(_parse_entry(item) for item in raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise CatalogueError(f"the project catalogue's content does not parse: {exc}") from exc
    ids = [p.id for p in projects]
    if len(set(ids)) != len(ids):
        raise CatalogueError("the project catalogue names a project twice")
    return ProjectCatalogue(sequence, issued, projects)


def _parse_entry(item: object) -> CatalogueEntry:
    if not isinstance(item, dict):
        raise CatalogueError("a project in the catalogue is not an object")
    pid, name, endpoint = (str(item["id"]), str(item["name"]), str(item["endpoint"]))
    if not _PROJECT_ID.match(pid):
        raise CatalogueError(f"the catalogue has an invalid project id {pid!r}")
    if not _ENDPOINT.match(endpoint) or not 0 < int(endpoint.rsplit(":", 1)[1]) < 65536:
        raise CatalogueError(f"project '{pid}' has an invalid endpoint {endpoint!r}")
    protocol = _PROTOCOLS.get(str(item["protocol"]))
    factor = _FACTORS.get(str(item.get("second_factor", "finger")))
    if protocol is None or factor is None:
        raise CatalogueError(f"project '{pid}' has an unknown protocol or policy")
    audio = item.get("audio", False)
    if not isinstance(audio, bool):
        raise CatalogueError(f"project '{pid}' has an audio policy that is not true or false")
    try:
        server = base64.b64decode(str(item["server_certificate"]), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise CatalogueError(f"project '{pid}' has a server certificate that is not base64") from exc
    return CatalogueEntry(pid, name, protocol, endpoint, server, factor, audio)
