"""The earlier one-project card at insertion: its one project, from the site's signed catalogue.

Such a card has no directory (docs/card-variants.md): its 9A key and
certificate are the project's credential, and the certificate names the
project (``urn:sdbox:project:ID``). What the card cannot say (the bubble's
endpoint and server certificate, the protocol, whether the PIN may replace
the finger) comes from the project catalogue the centre signed with its
directory-signing key (:mod:`sdbox.smartcard.catalogue`), looked up by the
project id the card's certificate names. The result is a one-project
:class:`~sdbox.smartcard.directory.Directory`, so that the connection flow
runs unchanged: the project certificate is still validated (chain, project
binding, revocation), the card still proves the key by ECDH, the bubble's
certificate is still validated and pinned.

Every trust decision fails closed: no catalogue on the box, a catalogue that
does not parse, whose signature or signer does not verify (or whose signer
cannot be checked: a stale CRL), or that does not list the card's project,
and the card is refused with words that say which.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sdbox.agent.api import Detail, Problem
from sdbox.agent.card import CardHandle
from sdbox.agent.problems import Refusal, detail_for
from sdbox.errors import SdboxError
from sdbox.smartcard.biosso import SignerValidator
from sdbox.smartcard.catalogue import CatalogueError, ProjectCatalogue, verify_catalogue
from sdbox.smartcard.directory import Directory
from sdbox.smartcard.variants import CertificateFacts, one_project_certificate


async def one_project_listing(
    handle: CardHandle, guid: bytes, catalogue: Path | None, validate_signer: SignerValidator
) -> Directory | None:
    """The card's one project as a directory, None if the card is not a one-project card.

    One APDU (the 9A certificate). Raises :class:`Refusal` when the card is
    a one-project card whose project this box cannot open.
    """
    facts = await handle.run(one_project_certificate)
    if facts is None or facts.project_id is None:
        return None
    verified = await asyncio.to_thread(_load, catalogue, facts.project_id, validate_signer)
    return _directory(guid, facts, verified)


def _load(
    path: Path | None, project_id: str, validate_signer: SignerValidator
) -> ProjectCatalogue:
    what = f"this is a one-project card (project '{project_id}')"
    if path is None:
        raise Refusal(
            Problem.CARD_NOT_SUPPORTED,
            f"{what}, and this box has no project catalogue for such cards",
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise Refusal(
            Problem.CARD_NOT_SUPPORTED,
            f"{what}, and this box has no project catalogue for such cards ({path})",
        ) from exc
    except OSError as exc:
        raise Refusal(
            Problem.DIRECTORY_UNTRUSTED,
            f"{what}, and the box's project catalogue cannot be read: {exc.strerror}",
            Detail.DIRECTORY_UNTRUSTED,
        ) from exc
    try:
        catalogue = verify_catalogue(data, validate_signer)
    except CatalogueError as exc:
        raise Refusal(
            Problem.DIRECTORY_UNTRUSTED, f"{what}: {exc.message}", Detail.DIRECTORY_UNTRUSTED
        ) from exc
    except SdboxError as exc:  # the signer: untrusted, revoked, a stale CRL, a wrong clock
        detail, args = detail_for(exc)
        raise Refusal(
            Problem.DIRECTORY_UNTRUSTED,
            f"{what}: the project catalogue's signer is not trusted: {exc.message}",
            detail,
            args,
        ) from exc
    try:
        catalogue.entry(project_id)
    except CatalogueError as exc:
        raise Refusal(Problem.CARD_NOT_SUPPORTED, f"{what}: {exc.message}") from exc
    return catalogue


def _directory(guid: bytes, facts: CertificateFacts, catalogue: ProjectCatalogue) -> Directory:
    assert facts.project_id is not None
    project = catalogue.entry(facts.project_id).card_project(facts)
    return Directory(
        sequence=catalogue.sequence, issued=catalogue.issued, card_guid=guid, projects=(project,)
    )
