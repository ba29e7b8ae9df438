"""The site's signed project catalogue (one-project cards): verified before anything is believed."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.smartcard.catalogue import (
    CatalogueEntry,
    CatalogueError,
    ProjectCatalogue,
    sign_catalogue,
    verify_catalogue,
)
from sdbox.smartcard.directory import Protocol, SecondFactor
from sdbox.smartcard.variants import CertificateFacts
from sdbox.trust import validate_directory_signer
from sdbox.trust.errors import TrustError
from sdbox.trust.pki import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def _entry(pki: Pki, project: str = "census-2021") -> CatalogueEntry:
    server = pki.issue_server("bubble.example", ec.generate_private_key(ec.SECP256R1()).public_key())
    return CatalogueEntry(
        project, "Census microdata 2021", Protocol.RDP, "bubble.example:3389",
        server.public_bytes(serialization.Encoding.DER), SecondFactor.FINGER_OR_PIN, False,
    )  # fmt: skip


def _signed(pki: Pki, *entries: CatalogueEntry) -> bytes:
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    return sign_catalogue(ProjectCatalogue(3, datetime.now(UTC), entries), signer.key, signer.cert, [])


def _validator(pki: Pki):  # type: ignore[no-untyped-def]
    def check(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        validate_directory_signer(
            signer, [*intermediates, pki.project_ca.cert], [pki.root.cert], at=datetime.now(UTC)
        )

    return check


def test_a_catalogue_signed_by_the_directory_signer_verifies(pki: Pki) -> None:
    entry = _entry(pki)
    catalogue = verify_catalogue(_signed(pki, entry), _validator(pki))
    assert catalogue.sequence == 3
    assert catalogue.entry("census-2021") == entry
    with pytest.raises(CatalogueError, match="not in this box's project catalogue"):
        catalogue.entry("genomics-lab")


def test_an_altered_catalogue_is_refused(pki: Pki) -> None:
    outer = json.loads(_signed(pki, _entry(pki)))
    content = base64.b64decode(outer["catalogue"]).replace(b"finger_or_pin", b"finger")
    outer["catalogue"] = base64.b64encode(content).decode()
    with pytest.raises(CatalogueError, match="signature does not verify"):
        verify_catalogue(json.dumps(outer).encode(), _validator(pki))


def test_a_catalogue_signed_by_another_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    """A key the project CA did not certify as directory signer (here: another PKI's)."""
    other = Pki.init(tmp_path / "other")
    with pytest.raises(TrustError):
        verify_catalogue(_signed(other, _entry(other)), _validator(pki))


def test_a_card_directory_signature_is_not_a_catalogue_signature(pki: Pki) -> None:
    """The signed bytes carry their own context: a signature over the bare content fails."""
    outer = json.loads(_signed(pki, _entry(pki)))
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    from cryptography.hazmat.primitives import hashes

    bare = signer.key.sign(base64.b64decode(outer["catalogue"]), ec.ECDSA(hashes.SHA256()))
    outer["signature"] = base64.b64encode(bare).decode()
    with pytest.raises(CatalogueError, match="signature does not verify"):
        verify_catalogue(json.dumps(outer).encode(), _validator(pki))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("endpoint", "bubble.example", "invalid endpoint"),
        ("id", "Census 2021", "invalid project id"),
        ("protocol", "vnc", "unknown protocol or policy"),
        ("second_factor", "none", "unknown protocol or policy"),
    ],
)
def test_a_signed_but_malformed_entry_is_refused(
    pki: Pki, field: str, value: str, words: str
) -> None:
    entry = _entry(pki)
    signer = pki.directory_signer
    assert isinstance(signer.key, ec.EllipticCurvePrivateKey)
    body = json.loads(ProjectCatalogue(1, datetime.now(UTC), (entry,)).content())
    body["projects"][0][field] = value
    content = json.dumps(body).encode()
    from cryptography.hazmat.primitives import hashes

    from sdbox.smartcard.catalogue import CONTEXT

    signature = signer.key.sign(CONTEXT + content, ec.ECDSA(hashes.SHA256()))
    pem = serialization.Encoding.PEM
    data = json.dumps({
        "catalogue": base64.b64encode(content).decode(),
        "signature": base64.b64encode(signature).decode(),
        "signer": signer.cert.public_bytes(pem).decode(), "intermediates": [],
    }).encode()  # fmt: skip
    with pytest.raises(CatalogueError, match=words):
        verify_catalogue(data, _validator(pki))


@pytest.mark.parametrize("data", [b"", b"[]", b'{"catalogue": "!!"}', b"\xff" * 10])
def test_garbage_is_a_catalogue_error_never_a_traceback(pki: Pki, data: bytes) -> None:
    with pytest.raises(CatalogueError):
        verify_catalogue(data, _validator(pki))


def test_the_centre_signs_a_catalogue_the_box_accepts(pki: Pki, tmp_path: Path) -> None:
    """`sdbox broker project-catalogue`: TOML in, a catalogue the box verifies out."""
    from click.testing import CliRunner

    from sdbox._cli import cli

    server = pki.issue_server("bubble.example", ec.generate_private_key(ec.SECP256R1()).public_key())
    (tmp_path / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    spec = tmp_path / "projects.toml"
    spec.write_text(
        'sequence = 7\n[projects."census-2021"]\nname = "Census microdata 2021"\n'
        'protocol = "rdp"\nendpoint = "bubble.example:3389"\n'
        f'server_certificate = "{tmp_path / "server.pem"}"\nsecond_factor = "finger_or_pin"\n'
    )
    out = tmp_path / "project-catalogue.json"
    result = CliRunner().invoke(
        cli, ["broker", "project-catalogue", "--projects", str(spec), "--pki", str(pki.path),
              "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    catalogue = verify_catalogue(out.read_bytes(), _validator(pki))
    entry = catalogue.entry("census-2021")
    assert (catalogue.sequence, entry.endpoint, entry.second_factor) == (
        7, "bubble.example:3389", SecondFactor.FINGER_OR_PIN,
    )  # fmt: skip
    assert entry.server_certificate == server.public_bytes(serialization.Encoding.DER)

    spec.write_text(spec.read_text().replace("bubble.example:3389", "bubble.example"))
    result = CliRunner().invoke(
        cli, ["broker", "project-catalogue", "--projects", str(spec), "--pki", str(pki.path),
              "--out", str(tmp_path / "bad.json")],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "invalid endpoint" in str(result.exception)  # ConfigError: the CLI maps it to its exit code
    assert not (tmp_path / "bad.json").exists()


def _facts(project: str | None) -> CertificateFacts:
    return CertificateFacts(
        slot=0x9A, subject="CN=Ada Lovelace", not_after=datetime(2030, 1, 1, tzinfo=UTC),
        algorithm=None, compressed=False, project_id=project, sha256="ab" * 32,
    )  # fmt: skip


def test_a_one_project_cards_project_joins_the_card_and_the_catalogue(pki: Pki) -> None:
    entry = _entry(pki)
    project = entry.card_project(_facts("census-2021"))
    # the card's key and certificate (the flow checks the certificate it reads against this)
    assert (project.slot, project.certificate_sha256) == (0x9A, bytes.fromhex("ab" * 32))
    # the catalogue's bubble and policy
    assert (project.endpoint, project.second_factor) == (entry.endpoint, SecondFactor.FINGER_OR_PIN)
    assert project.server_certificate == entry.server_certificate


def test_a_card_naming_another_project_does_not_take_this_entry(pki: Pki) -> None:
    with pytest.raises(CatalogueError, match="names project 'genomics-lab', not 'census-2021'"):
        _entry(pki).card_project(_facts("genomics-lab"))
