"""`sdbox trust check`: every certificate the box relies on, read from the inserted card.

The checks are the agent's own (:class:`sdbox.agent.adapters.TrustService`, bound
to the same configuration: anchors, intermediates, cached CRLs, time floor,
grace), run on everything at once instead of one project at connection time,
so that a card office or a support desk sees every problem a researcher would
meet, in one list:

- the holder's certificate (slot 9A), for holder authentication;
- the project directory: its signature and card binding, and its signer;
- each project's certificate, in the slot the directory names (and the
  certificate the directory hashes), for that project; and any other
  certificate in the retired slots the Key History counts (no project named);
- each project's bubble server certificate (held in the directory), for
  its endpoint's host.

Other PIV slots (9C, 9D, 9E) are left alone: sdbox does not use them, and a
real PIV card may hold certificates of another PKI there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sdbox.agent.adapters import TrustService
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Directory, Project, certificate_sha256
from sdbox.smartcard.errors import CardAccessError, DirectoryError
from sdbox.smartcard.profile import Slot
from sdbox.trust import Purpose, validate, validate_directory_signer
from sdbox.trust.loaders import load_certificate
from sdbox.trust.names import subject_of


@dataclass(frozen=True)
class CertificateCheck:
    """One certificate (or the directory itself) and what the box thinks of it."""

    what: str
    slot: int | None = None
    project: str | None = None
    subject: str | None = None
    not_after: datetime | None = None
    problem: str | None = None
    """None: valid for its use; otherwise why the box refuses it."""

    @property
    def valid(self) -> bool:
        """Whether the box accepts it."""
        return self.problem is None

    def to_json(self) -> dict[str, object]:
        """One entry of `sdbox trust check --json`."""
        return {
            "what": self.what,
            "slot": None if self.slot is None else f"{self.slot:02X}",
            "project": self.project,
            "subject": self.subject,
            "not_after": None if self.not_after is None else self.not_after.isoformat(),
            "valid": self.valid,
            "problem": self.problem,
        }


def _checked(
    what: str,
    read: Callable[[], x509.Certificate],
    check: Callable[[x509.Certificate], None],
    *,
    slot: int | None = None,
    project: str | None = None,
) -> CertificateCheck:
    """Read a certificate and check it; a refusal becomes the entry's problem.

    A card that is pulled or stops answering ends the whole check (exit 3):
    a partial list would look like a clean one.
    """
    try:
        cert = read()
    except CardAccessError:
        raise
    except SdboxError as exc:
        return CertificateCheck(what, slot, project, problem=exc.message)
    subject, not_after = subject_of(cert), cert.not_valid_after_utc
    try:
        check(cert)
    except CardAccessError:
        raise
    except SdboxError as exc:
        return CertificateCheck(what, slot, project, subject, not_after, exc.message)
    return CertificateCheck(what, slot, project, subject, not_after)


def check_card(
    session: BioSsoSession, trust: TrustService, *, at: datetime | None = None
) -> list[CertificateCheck]:
    """Every certificate on the card that sdbox uses, checked as the agent checks it.

    ``trust`` must be usable (its anchors loaded: ``trust.problem is None``).
    """
    now = at or datetime.now(UTC)
    crls = trust.store if trust.check_revocation else None

    def chain(cert: x509.Certificate, purpose: Purpose, project: str | None = None) -> None:
        validate(
            cert, trust.intermediates, trust.anchors, at=now, purpose=purpose, crls=crls,
            project=project, crl_grace=trust.grace,
        )  # fmt: skip

    def in_slot(slot: int) -> Callable[[], x509.Certificate]:
        return functools.partial(session.certificate, slot)

    session.piv.select()
    results = [
        _checked("holder", in_slot(Slot.AUTHENTICATION),
                 functools.partial(chain, purpose=Purpose.HOLDER), slot=Slot.AUTHENTICATION)
    ]  # fmt: skip
    directory, entries = _directory(session, trust, now)
    results += entries
    listed: set[int] = set()
    for project in directory.projects if directory is not None else ():
        listed.add(project.slot)

        def as_listed(cert: x509.Certificate, project: Project = project) -> None:
            if certificate_sha256(cert.public_bytes(Encoding.DER)) != project.certificate_sha256:
                raise DirectoryError(
                    "the certificate in this slot is not the one the project directory names"
                )
            chain(cert, Purpose.PROJECT, project.id)

        def server(project: Project = project) -> x509.Certificate:
            return load_certificate(project.server_certificate)  # malformed: a TrustError

        results.append(
            _checked("project", in_slot(project.slot), as_listed, slot=project.slot, project=project.id)
        )
        results.append(
            _checked("bubble server", server, functools.partial(trust.check_server, project=project),
                     project=project.id)
        )  # fmt: skip
    for slot in _retired_slots(session):
        if slot not in listed:
            # a certificate no project names (the directory is missing, or it is left over)
            results.append(_checked(
                "project", in_slot(slot),
                functools.partial(chain, purpose=Purpose.PROJECT), slot=slot,
            ))  # fmt: skip
    return results


def _directory(
    session: BioSsoSession, trust: TrustService, now: datetime
) -> tuple[Directory | None, list[CertificateCheck]]:
    """The directory (None unless its signature and card binding verify) and its entries."""
    try:
        signed = session.read_signed_directory()
    except CardAccessError:
        raise
    except SdboxError as exc:
        return None, [CertificateCheck("project directory", problem=exc.message)]

    def signer_check(cert: x509.Certificate) -> None:
        validate_directory_signer(
            cert, [*signed.intermediates, *trust.intermediates], trust.anchors, at=now,
            crls=trust.store if trust.check_revocation else None, crl_grace=trust.grace,
        )  # fmt: skip

    signer = _checked("directory signer", lambda: signed.signer, signer_check)
    try:
        # the signer is judged on its own line above; here: signature and card binding
        directory = signed.verify(card_guid=session.guid, validate_signer=lambda _c, _i: None)
    except CardAccessError:
        raise
    except SdboxError as exc:
        return None, [signer, CertificateCheck("project directory", problem=exc.message)]
    # with an untrusted signer the box refuses the card (the signer's line says
    # so), but the projects are still named so that each one's own state shows
    return directory, [signer, CertificateCheck("project directory")]


def _retired_slots(session: BioSsoSession) -> list[int]:
    """The retired slots the Key History says hold certificates (82 upwards)."""
    try:
        count = session.key_history_count()
    except CardAccessError:
        raise
    except SdboxError:
        return []
    return [Slot.retired(i) for i in range(1, count + 1)]
