"""The renewal of project certificates on a verified card (DESIGN "Renewal").

For each project due, one at a time, the :class:`Renewer`:

1. picks the new slot: the lowest retired slot the directory does not use
   inside the Key History range (a superseded key), else the first one after
   it;
2. journals, then has the centre authenticate with 9B (relayed) and GENERATEs
   the new key there;
3. sends a ``kur`` signed by the holder key (9A) and validates the answer:
   protection by the pinned CMP server, transaction and nonces, status, the
   certificate's public key equals the new key, same project binding and
   subject, chain and revocation with :mod:`sdbox.trust`;
4. writes the certificate, grows Key History if the slot is new, sends
   ``certConf`` and waits for ``pkiConf``;
5. proves possession of the new key (ECDH), then switches the signed
   directory (one PUT DATA: the switch is atomic on the card);
6. frees the old slot: a trailing slot loses its certificate and Key History
   shrinks; a slot in the middle keeps its superseded certificate as a
   retired key, so on-card certificates stay contiguous from 82 as Key
   History says, and the next renewal reuses it.

Every card write is announced in the journal first. Between any two APDUs the
directory names, for the project, a slot whose key and certificate match: the
old one until the directory write, the new one after. See docs/renewal.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.centre.errors import CentreError, CentreUnreachable
from sdbox.certificates import load_certificate
from sdbox.errors import SdboxError
from sdbox.renewal import cmp
from sdbox.renewal.capability import renewal_refusal
from sdbox.renewal.errors import CaUnreachable, CmpProtocolError, RenewalError
from sdbox.renewal.ports import Centre, CmpTransport, RenewalTrust
from sdbox.renewal.state import Entry, Journal, Phase
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.directory import Directory, Project, certificate_sha256
from sdbox.smartcard.errors import CardError, DirectoryMissing, SecurityStatusNotSatisfied
from sdbox.smartcard.piv import FileNotFoundOnCard
from sdbox.smartcard.profile import (
    RETIRED_SLOTS,
    Algorithm,
    ObjectTag,
    Slot,
    certificate_object,
    encode_certificate,
    encode_key_history,
)
from sdbox.smartcard.variants import one_project_of
from sdbox.trust.errors import (
    CertificateNotYetValid,
    ClockWrong,
    PossessionFailed,
    ProjectMismatch,
    TrustError,
)
from sdbox.trust.possession import prove_key_agreement

_log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What happened to one project (``sdbox renew --json``, audit events)."""

    RENEWED = "renewed"
    NOT_DUE = "not_due"
    REJECTED = "rejected"
    WAITING = "waiting"
    BAD_ANSWER = "bad_answer"
    WRONG_KEY = "wrong_key"
    WRONG_PROJECT = "wrong_project"
    CLOCK_PROBLEM = "clock_problem"
    INTERRUPTED_RESUMED = "interrupted_resumed"
    CA_UNREACHABLE = "ca_unreachable"
    CENTRE_UNREACHABLE = "centre_unreachable"
    CENTRE_REFUSED = "centre_refused"
    NO_FREE_SLOT = "no_free_slot"
    NOT_RENEWABLE = "not_renewable"  # the card's capabilities do not allow it (docs/renewal.md)
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    """One project's outcome."""

    project: str
    outcome: Outcome
    detail: str = ""
    old_slot: int | None = None
    new_slot: int | None = None
    not_after: datetime | None = None

    def to_json(self) -> dict[str, object]:
        """JSON form."""
        return {
            "project": self.project,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "old_slot": None if self.old_slot is None else f"{self.old_slot:02X}",
            "new_slot": None if self.new_slot is None else f"{self.new_slot:02X}",
            "not_after": None if self.not_after is None else self.not_after.isoformat(),
        }


class _Refused(Exception):
    """The CA's answer was refused; carries the outcome."""

    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


_CURVE_ALGORITHM = {256: Algorithm.ECCP256, 384: Algorithm.ECCP384}


@dataclass
class Renewer:
    """Renews the due project certificates of one verified card.

    ``session`` must be selected with the holder verified (9A signs, the new
    key's ECDH proves possession). Card errors propagate (the card was pulled
    or failed: the journal lets the next run finish or clean up); answers
    refused by the CA or by us become :class:`Result` outcomes.
    """

    session: BioSsoSession
    centre: Centre
    transport: CmpTransport
    trust: RenewalTrust
    journal: Journal
    validate_signer: Callable[[x509.Certificate, list[x509.Certificate]], None]
    window: timedelta = timedelta(days=30)
    max_polls: int = 3
    max_wait_s: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    # the card's ATR: given, the run first asks the card's capabilities whether the box may
    # renew it at all (sdbox.renewal.capability); the agent and `sdbox renew` give it
    atr: bytes | None = None

    _management_ok: bool = False
    _journal: Journal = field(init=False)

    # -- entry point ---------------------------------------------------------

    def run(self, *, force: Iterable[str] = ()) -> list[Result]:
        """Resume an interrupted renewal, then renew every project due (or forced)."""
        forced = set(force)
        self._management_ok = False
        limit = renewal_refusal(self.session, self.atr) if self.atr is not None else None
        try:
            if limit is not None:
                return self._not_renewable(limit, forced)
            return self._run(forced)
        except DirectoryMissing:  # a one-project card, met without its capabilities
            return self._not_renewable(
                "renewal: the card has no project directory to switch; the card office "
                "re-issues it",
                forced,
            )

    def _not_renewable(self, reason: str, forced: set[str]) -> list[Result]:
        """Every project due (or forced) refused with ``reason``; nothing is written."""
        try:
            directory = self._directory()
        except DirectoryMissing:
            return [Result(one_project_of(self.session) or "card", Outcome.NOT_RENEWABLE, reason)]
        try:
            now = self.trust.check_clock()
        except ClockWrong:
            now = None  # nothing can be said due: refuse them all
        return [
            Result(p.id, Outcome.NOT_DUE, old_slot=p.slot, not_after=p.not_after)
            if now is not None and p.id not in forced and p.not_after - now > self.window
            else Result(p.id, Outcome.NOT_RENEWABLE, reason, old_slot=p.slot)
            for p in directory.projects
        ]

    def _run(self, forced: set[str]) -> list[Result]:
        guid = self.session.guid
        self._journal = self.journal.for_card(guid)
        resumed: set[str] = set()
        entry = self._journal.read()
        if entry is not None and entry.card == guid.hex():
            resumed.add(entry.project)
            try:
                finished = self._resume(entry)
            except CentreError as exc:  # the journal stays: the next run tries again
                return [Result(entry.project, _centre_outcome(exc), detail=exc.message)]
            if finished is not None:
                return [
                    finished,
                    *self._renew_due(forced - {entry.project}, resumed, skip={entry.project}),
                ]
        return self._renew_due(forced, resumed, skip=set())

    def _renew_due(self, forced: set[str], resumed: set[str], *, skip: set[str]) -> list[Result]:
        results: list[Result] = []
        try:
            now = self.trust.check_clock()
        except ClockWrong as exc:
            directory = self._directory()
            return [Result(p.id, Outcome.CLOCK_PROBLEM, exc.message) for p in directory.projects]
        for project_id in [p.id for p in self._directory().projects]:
            if project_id in skip:
                continue
            project = self._directory().project(project_id)
            if project_id not in forced and project.not_after - now > self.window:
                results.append(
                    Result(
                        project_id,
                        Outcome.NOT_DUE,
                        old_slot=project.slot,
                        not_after=project.not_after,
                    )
                )
                continue
            result = self._renew(project)
            if project_id in resumed and result.outcome == Outcome.RENEWED:
                result = replace(result, outcome=Outcome.INTERRUPTED_RESUMED)
            results.append(result)
        return results

    # -- card reading ----------------------------------------------------------

    def _directory(self) -> Directory:
        return self.session.read_directory(self.validate_signer)

    def _authenticate(self) -> None:
        if not self._management_ok:
            holder = self.centre.management_key(self.session.guid)
            self.session.piv.authenticate_management(holder)
            self._management_ok = True

    def _put(self, tag: int, value: bytes) -> None:
        self._authenticate()
        self.session.piv.put_object(tag, value)

    # -- one project -----------------------------------------------------------

    def _new_slot(self, directory: Directory, on_card: int) -> int | None:
        used = {p.slot for p in directory.projects}
        for slot in RETIRED_SLOTS[: on_card + 1]:
            if slot not in used:
                return slot
        return None

    def _renew(self, project: Project) -> Result:
        directory = self._directory()
        on_card = self.session.key_history_count()
        new_slot = self._new_slot(directory, on_card)
        base = Result(project.id, Outcome.FAILED, old_slot=project.slot)
        if new_slot is None:
            return replace(
                base, outcome=Outcome.NO_FREE_SLOT, detail="every retired slot is in use"
            )
        old_cert = self.session.certificate(project.slot)
        holder_cert = self.session.certificate(Slot.AUTHENTICATION)
        old_key = old_cert.public_key()
        if not isinstance(old_key, ec.EllipticCurvePublicKey):  # checked before anything is written
            return replace(
                base, outcome=Outcome.NOT_RENEWABLE,
                detail="renewal: the project key is not an EC key, and the box generates EC "
                "keys only; the card office re-issues it",
            )  # fmt: skip
        entry = Entry(
            card=self.session.guid.hex(), project=project.id,
            old_slot=project.slot, new_slot=new_slot, phase=Phase.GENERATING,
        )  # fmt: skip
        base = replace(base, new_slot=new_slot)
        self._journal.write(entry)
        try:
            self._authenticate()
        except CentreError as exc:
            self._journal.clear()  # nothing was written
            return replace(base, outcome=_centre_outcome(exc), detail=exc.message)
        except SecurityStatusNotSatisfied as exc:  # the card or the centre refused the other
            self._journal.clear()
            return replace(
                base, outcome=Outcome.CENTRE_REFUSED,
                detail=f"{exc.message}: the centre's management key and the card disagree; "
                "call your card office",
            )  # fmt: skip
        new_key = self.session.piv.generate_key(new_slot, _CURVE_ALGORITHM[old_key.curve.key_size])
        entry = entry.advance(Phase.REQUESTED, public_key_pem=_pem_key(new_key))
        self._journal.write(entry)
        try:
            certificate, tx, server_nonce = self._request(project, new_key, old_cert, holder_cert)
        except _Refused as refused:
            self._journal.clear()  # nothing was written but an unreferenced key
            return replace(base, outcome=refused.outcome, detail=refused.detail)
        except (CaUnreachable, CmpProtocolError) as exc:
            self._journal.clear()
            outcome = (
                Outcome.CA_UNREACHABLE if isinstance(exc, CaUnreachable) else Outcome.BAD_ANSWER
            )
            return replace(base, outcome=outcome, detail=exc.message)
        entry = entry.advance(Phase.WRITING, certificate_pem=_pem_cert(certificate))
        self._journal.write(entry)
        self._write_certificate(new_slot, certificate, on_card)
        try:
            self._confirm(tx, certificate, server_nonce, holder_cert)
        except (CaUnreachable, CmpProtocolError) as exc:
            # Not confirmed: the CA may not stand behind the certificate. Take it
            # off the card again; the old credential stays in use.
            self._clean_up(entry)
            outcome = (
                Outcome.CA_UNREACHABLE if isinstance(exc, CaUnreachable) else Outcome.BAD_ANSWER
            )
            return replace(base, outcome=outcome, detail=exc.message)
        entry = entry.advance(Phase.CONFIRMED)
        self._journal.write(entry)
        try:
            self._switch(entry, certificate)
        except CentreError as exc:
            # Confirmed but not switched: the journal keeps the certificate, and
            # the next run (next insertion) asks the centre again.
            return replace(
                base, outcome=_centre_outcome(exc),
                detail=f"{exc.message}; the current certificate stays in use and the renewal "
                "finishes at the next insertion",
            )  # fmt: skip
        return replace(base, outcome=Outcome.RENEWED, not_after=certificate.not_valid_after_utc)

    def _request(
        self,
        project: Project,
        new_key: ec.EllipticCurvePublicKey,
        old_cert: x509.Certificate,
        holder_cert: x509.Certificate,
    ) -> tuple[x509.Certificate, cmp.Transaction, bytes]:
        tx = cmp.Transaction.new(holder_cert, self.trust.cmp_server.subject)
        sign = self._signer(holder_cert)
        sent = cmp.build_kur(tx, new_key, old_cert, sign)
        answer = self._exchange(tx, sent)
        polls, waited = 0, 0.0
        while answer.body == cmp.BodyType.POLLREP or answer.status == cmp.PkiStatus.WAITING:
            delay = float(answer.check_after_s or 0)
            if polls >= self.max_polls or waited + delay > self.max_wait_s:
                raise _Refused(
                    Outcome.WAITING,
                    f"the CA is still processing the request (asked to wait {delay:.0f} s more); "
                    "the current certificate stays in use and renewal is tried again later",
                )
            self.sleep(delay)
            waited += delay
            polls += 1
            sent = cmp.build_poll_req(tx, answer.sender_nonce, sign)
            answer = self._exchange(tx, sent)
        if answer.body == cmp.BodyType.ERROR or answer.status == cmp.PkiStatus.REJECTION:
            raise _Refused(
                Outcome.REJECTED,
                f"the CA rejected the renewal: {answer.status_text or 'no reason given'}",
            )
        if answer.body not in (cmp.BodyType.KUP, cmp.BodyType.IP, cmp.BodyType.CP):
            raise CmpProtocolError(f"the CA answered a key update with {answer.body.name}")
        if answer.status not in (cmp.PkiStatus.ACCEPTED, cmp.PkiStatus.GRANTED_WITH_MODS):
            raise CmpProtocolError(f"the CA answered with status {answer.status}")
        certificate = answer.certificate
        if certificate is None:
            raise CmpProtocolError("the CA accepted the request but sent no certificate")
        self._check_certificate(project, certificate, new_key, old_cert, tx, answer.sender_nonce)
        return certificate, tx, answer.sender_nonce

    def _check_certificate(
        self,
        project: Project,
        certificate: x509.Certificate,
        new_key: ec.EllipticCurvePublicKey,
        old_cert: x509.Certificate,
        tx: cmp.Transaction,
        server_nonce: bytes,
    ) -> None:
        refusal: _Refused | None = None
        if certificate.public_key() != new_key:
            refusal = _Refused(
                Outcome.WRONG_KEY,
                "the CA certified another key than the one the card generated; refused",
            )
        elif certificate.subject != old_cert.subject:
            refusal = _Refused(
                Outcome.WRONG_PROJECT,
                f"the new certificate names {certificate.subject.rfc4514_string()}, "
                f"not {old_cert.subject.rfc4514_string()}; refused",
            )
        else:
            try:
                self.trust.check_project(certificate, project.id)
            except ProjectMismatch as exc:
                refusal = _Refused(Outcome.WRONG_PROJECT, exc.message)
            except (ClockWrong, CertificateNotYetValid) as exc:
                refusal = _Refused(Outcome.CLOCK_PROBLEM, exc.message)
            except TrustError as exc:
                refusal = _Refused(Outcome.BAD_ANSWER, exc.message)
        if refusal is not None:
            self._reject(tx, certificate, server_nonce)
            raise refusal

    def _reject(
        self, tx: cmp.Transaction, certificate: x509.Certificate, server_nonce: bytes
    ) -> None:
        """Tell the CA we refuse the certificate (best effort: RFC 4210 certConf rejection)."""
        try:
            sent = cmp.build_cert_conf(
                tx, certificate, server_nonce, self._signer(tx.sender), accept=False
            )
            self.transport.post(sent.der)
        except (CaUnreachable, CmpProtocolError) as exc:
            _log.info("the CA was not told of the refusal: %s", exc)

    def _exchange(self, tx: cmp.Transaction, sent: cmp.Outgoing) -> cmp.Answer:
        answer = cmp.parse_answer(self.transport.post(sent.der))
        signer = next(
            (c for c in answer.extra_certs if c == self.trust.cmp_server), self.trust.cmp_server
        )
        answer.verify_protection(signer)
        try:
            self.trust.check_server(signer)
        except TrustError as exc:
            raise CmpProtocolError(
                f"the CMP server's certificate is not trusted: {exc.message}"
            ) from exc
        if answer.transaction_id != tx.transaction_id:
            raise CmpProtocolError("the CA's answer belongs to another transaction")
        if answer.recip_nonce != sent.sender_nonce:
            raise CmpProtocolError("the CA's answer does not echo our nonce (replayed?)")
        return answer

    def _signer(self, holder_cert: x509.Certificate) -> cmp.Signer:
        def sign(data: bytes) -> bytes:
            return self.session.sign(data, certificate=holder_cert)

        return sign

    def _confirm(
        self,
        tx: cmp.Transaction,
        certificate: x509.Certificate,
        server_nonce: bytes,
        holder_cert: x509.Certificate,
    ) -> None:
        sent = cmp.build_cert_conf(tx, certificate, server_nonce, self._signer(holder_cert))
        answer = self._exchange(tx, sent)
        if answer.body != cmp.BodyType.PKICONF:
            raise CmpProtocolError(f"the CA answered certConf with {answer.body.name}, not pkiConf")

    # -- card writes -------------------------------------------------------------

    def _write_certificate(self, slot: int, certificate: x509.Certificate, on_card: int) -> None:
        der = certificate.public_bytes(serialization.Encoding.DER)
        self._put(certificate_object(slot), encode_certificate(der))
        needed = RETIRED_SLOTS.index(slot) + 1
        if needed > on_card:  # a slot after the range: count it, keep the range contiguous
            self._put(ObjectTag.KEY_HISTORY, encode_key_history(needed))

    def _switch(self, entry: Entry, certificate: x509.Certificate) -> None:
        # The card must hold the certified key before the directory names it.
        try:
            prove_key_agreement(certificate, entry.new_slot, self.session.ecdh)
        except PossessionFailed as exc:
            self._clean_up(entry)
            raise RenewalError(
                f"slot {entry.new_slot:02X} does not hold the certified key; the renewal was undone"
            ) from exc
        self._journal.write(entry.advance(Phase.SWITCHING))
        directory = self._directory()
        der = certificate.public_bytes(serialization.Encoding.DER)
        projects = tuple(
            replace(
                p, slot=entry.new_slot, certificate_sha256=certificate_sha256(der),
                subject=certificate.subject.rfc4514_string(), not_after=certificate.not_valid_after_utc,
            )
            if p.id == entry.project else p
            for p in directory.projects
        )  # fmt: skip
        if any(p.slot == entry.new_slot and p.id != entry.project for p in directory.projects):
            raise RenewalError(f"slot {entry.new_slot:02X} became another project's; stopping")
        new_directory = Directory(
            sequence=directory.sequence + 1,
            issued=self.trust.check_clock(),
            card_guid=directory.card_guid,
            projects=projects,
        )
        signed = self.centre.sign_directory(
            new_directory, project=entry.project, slot=entry.new_slot, certificate=certificate
        )
        # Fail closed: never write a directory this box would not accept itself.
        if signed.tbs != new_directory.tbs():
            raise CentreError("the centre signed another directory than the one asked for")
        try:
            signed.verify(card_guid=self.session.guid, validate_signer=self.validate_signer)
        except SdboxError as exc:
            raise CentreError(
                f"the centre's directory signature is not trusted: {exc.message}"
            ) from exc
        self._put(ObjectTag.DIRECTORY, signed.encode())  # the switch
        self._journal.write(entry.advance(Phase.SWITCHED))
        self._tidy(new_directory, extra=entry.old_slot)
        self._journal.clear()

    def _tidy(self, directory: Directory, *, extra: int | None = None) -> None:
        """Trailing unused slots lose their certificate; Key History covers the rest."""
        used = [RETIRED_SLOTS.index(p.slot) for p in directory.projects]
        span = max(used) + 1 if used else 0
        on_card = self.session.key_history_count()
        last = max(on_card, RETIRED_SLOTS.index(extra) + 1 if extra is not None else 0)
        if span < on_card:
            self._put(ObjectTag.KEY_HISTORY, encode_key_history(span))
        for index in range(span, min(last + 1, len(RETIRED_SLOTS))):
            slot = RETIRED_SLOTS[index]
            try:
                self.session.piv.get_object(certificate_object(slot))
            except FileNotFoundOnCard:
                continue
            self._put(certificate_object(slot), b"")
        if span > on_card:
            self._put(ObjectTag.KEY_HISTORY, encode_key_history(span))

    def _clean_up(self, entry: Entry) -> None:
        """Undo an unconfirmed attempt: the directory still names the old slot."""
        self._tidy(self._directory(), extra=entry.new_slot)
        self._journal.clear()

    # -- resuming -----------------------------------------------------------------

    def _resume(self, entry: Entry) -> Result | None:
        """Finish or clean up after an interruption; a Result when finished."""
        directory = self._directory()
        try:
            project = directory.project(entry.project)
        except SdboxError:
            self._journal.clear()
            return None
        base = Result(
            entry.project,
            Outcome.INTERRUPTED_RESUMED,
            old_slot=entry.old_slot,
            new_slot=entry.new_slot,
        )
        if project.slot == entry.new_slot:  # past the switch: free the old slot
            _log.info("renewal of %s was interrupted after the switch: finishing", entry.project)
            self._tidy(directory, extra=entry.old_slot)
            self._journal.clear()
            return replace(
                base, not_after=project.not_after, detail="finished after an interruption"
            )
        if entry.phase in (Phase.CONFIRMED, Phase.SWITCHING) and entry.certificate_pem:
            _log.info("renewal of %s was interrupted after pkiConf: finishing", entry.project)
            certificate = load_certificate(entry.certificate_pem.encode(), "journaled certificate")
            self._write_certificate(entry.new_slot, certificate, self.session.key_history_count())
            self._switch(entry, certificate)
            return replace(
                base,
                not_after=certificate.not_valid_after_utc,
                detail="finished after an interruption",
            )
        _log.info("renewal of %s was interrupted before confirmation: cleaning up", entry.project)
        self._clean_up(entry)
        return None


def _centre_outcome(exc: CentreError) -> Outcome:
    return (
        Outcome.CENTRE_UNREACHABLE if isinstance(exc, CentreUnreachable) else Outcome.CENTRE_REFUSED
    )


def _pem_key(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _pem_cert(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


__all__ = ["CardError", "Outcome", "Renewer", "Result"]
