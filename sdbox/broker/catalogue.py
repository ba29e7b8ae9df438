"""The centre's side of the project catalogue: what one-project cards' boxes need, signed.

``sdbox broker project-catalogue`` reads a TOML description of the site's
projects and signs it with the directory-signing key of a PKI directory
(the key that signs the cards' directories); the file goes onto the boxes
(`[card] project_catalogue`, docs/card-variants.md). The format and its
verification are :mod:`sdbox.smartcard.catalogue`'s::

    sequence = 3
    [projects."census-2021"]
    name = "Census microdata 2021"
    protocol = "rdp"
    endpoint = "bubble-census.example:3389"
    server_certificate = "/path/census-server.pem"
    second_factor = "finger"
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.config import ConfigError, load_file, setting
from sdbox.smartcard.catalogue import (
    CatalogueEntry,
    CatalogueError,
    ProjectCatalogue,
    sign_catalogue,
    verify_catalogue,
)
from sdbox.smartcard.directory import Protocol, SecondFactor
from sdbox.trust.pki import Pki


@dataclass(frozen=True)
class CatalogueProject:
    """One project of the catalogue's description."""

    name: str = setting(help="the name the picker shows")
    protocol: Literal["rdp", "spice"] = setting(help="how the bubble is reached")
    endpoint: str = setting(help="HOST:PORT of the bubble (must be on the boxes' allow-list)")
    server_certificate: Path = setting(help="the bubble's server certificate (PEM)")
    second_factor: Literal["finger", "finger_or_pin"] = setting(
        "finger", help="whether the PIN may replace the finger"
    )
    audio: bool = setting(False, help="sound from the bubble")


@dataclass(frozen=True)
class CatalogueDescription:
    """The file ``sdbox broker project-catalogue --projects`` reads."""

    sequence: int = setting(help="raise it with every new catalogue")
    projects: dict[str, CatalogueProject] = setting({}, help="project id -> its bubble and policy")


def build_catalogue(description: Path, pki_dir: Path) -> bytes:
    """The signed catalogue file for ``description``, signed by ``pki_dir``'s directory signer."""
    spec = load_file(CatalogueDescription, description)
    entries = []
    for pid, project in spec.projects.items():
        try:
            server = load_certificate(project.server_certificate.read_bytes(), "server certificate")
        except (OSError, UnreadableCertificate) as exc:
            raise ConfigError(f"{description}: projects.{pid}.server_certificate: {exc}") from exc
        entry = CatalogueEntry(
            pid, project.name, Protocol[project.protocol.upper()], project.endpoint,
            server.public_bytes(serialization.Encoding.DER),
            SecondFactor[project.second_factor.upper()], project.audio,
        )  # fmt: skip
        entries.append(entry)
    pki = Pki.open(pki_dir)
    signer = pki.directory_signer
    if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{pki_dir}: the directory signer's key is not an EC key")
    data = sign_catalogue(  # with the project CA, as a card's directory carries it
        ProjectCatalogue(spec.sequence, datetime.now(UTC), tuple(entries)), signer.key,
        signer.cert, [pki.project_ca.cert],
    )  # fmt: skip
    try:  # what a box will check of the content (ids, endpoints): refuse it here first
        verify_catalogue(data, lambda signer, chain: None)
    except CatalogueError as exc:
        raise ConfigError(f"{description}: {exc.message}") from exc
    return data
