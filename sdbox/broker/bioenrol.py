"""The reference centre's side of remote biometric enrolment (docs/remote-enrolment.md).

An operator opens an authorisation (``sdbox broker enrol open``) for one card,
one box, some fingers and a few minutes. The box asks for it with a fresh
challenge (``/v1/bio/begin``); the operator's key signs it bound to that
challenge, and the box shows a 6-digit code derived from it, which the
researcher reads to the operator and the operator confirms
(``sdbox broker enrol confirm``). Only then does card management
(``/v1/card/open`` with ``purpose: enrolment``) answer the card's 9B
challenge for that card and box; ``/v1/bio/finish`` closes the authorisation
once the box has written and verified the references on the card. It is
used at most once: ``done`` is final, and so is ``revoked``.

The register of authorisations is a JSON file (0600) shared by the broker's
threads and the operator's commands, under an advisory lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.audit import AuditEvent, audit
from sdbox.broker.errors import BrokerError
from sdbox.centre.bioauth import (
    CHALLENGE_BYTES,
    FINGERS,
    MAX_VALIDITY,
    Authorisation,
    finish_message,
    operator_name,
    short_code,
    sign,
)
from sdbox.centre.protocol import ProtocolError, Refused, certificate_field, text_field, unb64
from sdbox.certificates import UnreadableCertificate, load_certificate
from sdbox.errors import SdboxError
from sdbox.trust import Purpose, validate
from sdbox.trust.oids import BOX_URN_PREFIX
from sdbox.trust.store import RevocationStore

MAX_WRONG_CODES = 3  # then the authorisation is revoked: a guessed code must not get through
STATES = ("open", "bound", "confirmed", "writing", "done", "revoked", "expired")


class EnrolmentAuthorisationError(BrokerError):
    """An operator's command cannot be carried out (unknown id, wrong code, bad input)."""


@dataclass(frozen=True)
class Operator:
    """An enrolment operator's key and certificate, as the reference centre keeps them."""

    name: str
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate


def write_operator(directory: Path, name: str, key: ec.EllipticCurvePrivateKey,
                   certificate: x509.Certificate) -> None:  # fmt: skip
    """Keep an operator's key (0600) and certificate as ``<name>.key`` / ``<name>.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    key_path = directory / f"{name}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))  # fmt: skip
    (directory / f"{name}.pem").write_bytes(certificate.public_bytes(pem))


def box_id_of(certificate: x509.Certificate) -> str:
    """The box id in a box certificate's SAN (``urn:sdbox:box:<id>``), or ''."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ""
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(BOX_URN_PREFIX):
            return uri[len(BOX_URN_PREFIX):]
    return ""


class BioEnrolment:
    """Authorisations: the operator's commands and the box's requests (HTTP-free)."""

    def __init__(
        self,
        *,
        register: Path,
        operators: Path,
        anchors: list[x509.Certificate],
        intermediates: list[x509.Certificate],
        store: RevocationStore,
        card_proven: Callable[[str, bytes], bool] = lambda _session, _guid: False,
    ) -> None:
        self.register, self.operators = register, operators
        self.anchors, self.intermediates, self.store = anchors, intermediates, store
        self.card_proven = card_proven  # set by the broker: a card session proved 9B for a GUID

    # -- the register -------------------------------------------------------------

    @contextlib.contextmanager
    def _records(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The register, locked against the broker's threads and the operator's commands."""
        self.register.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.register.with_name(f".{self.register.name}.lock"),
                       os.O_RDWR | os.O_CREAT, 0o600)  # fmt: skip
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records = json.loads(self.register.read_text()) if self.register.exists() else {}
            except (OSError, ValueError) as exc:
                raise BrokerError(f"{self.register}: the enrolment register is damaged") from exc
            before = json.dumps(records, sort_keys=True)
            yield records
            if json.dumps(records, sort_keys=True) != before:
                _save(self.register, records)
        finally:
            os.close(lock)  # releases the lock

    def _operator(self, name: str) -> Operator:
        if not name or "/" in name or name.startswith("."):
            raise EnrolmentAuthorisationError(f"no enrolment operator named {name!r}")
        try:
            key = serialization.load_pem_private_key((self.operators / f"{name}.key").read_bytes(), None)
            certificate = load_certificate((self.operators / f"{name}.pem").read_bytes())
        except (OSError, ValueError, UnreadableCertificate) as exc:
            raise EnrolmentAuthorisationError(
                f"the enrolment operator {name!r} has no usable key and certificate in "
                f"{self.operators}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrolmentAuthorisationError(f"the enrolment operator {name!r} needs an EC key")
        return Operator(name, key, certificate)

    # -- the operator's commands --------------------------------------------------------

    def open(self, *, card_guid: bytes, box_id: str, fingers: tuple[str, ...],
             minutes: int, operator: str) -> dict[str, Any]:  # fmt: skip
        """Open an authorisation; its record (``id`` names it in later commands)."""
        if len(card_guid) != 16:
            raise EnrolmentAuthorisationError("a card GUID is 16 bytes (32 hex digits)")
        if not fingers or any(f not in FINGERS for f in fingers) or len(set(fingers)) != len(fingers):
            raise EnrolmentAuthorisationError("fingers: primary and/or secondary, once each")
        if not 0 < minutes <= MAX_VALIDITY.total_seconds() // 60:
            raise EnrolmentAuthorisationError(
                f"an authorisation lasts 1 to {MAX_VALIDITY.total_seconds() // 60:g} minutes"
            )
        signer = self._operator(operator)
        try:
            self._validate_operator(signer.certificate, [])
        except SdboxError as exc:
            raise EnrolmentAuthorisationError(
                f"{operator!r} is not an enrolment operator: {exc.message}"
            ) from exc
        now = datetime.now(UTC).replace(microsecond=0)
        record: dict[str, Any] = {
            "id": secrets.token_urlsafe(12), "card_guid": card_guid.hex(), "box_id": box_id,
            "fingers": list(fingers), "not_before": now.isoformat(),
            "not_after": (now + timedelta(minutes=minutes)).isoformat(),
            "operator_key": operator, "operator": operator_name(signer.certificate),
            "state": "open", "created": now.isoformat(), "wrong_codes": 0,
        }  # fmt: skip
        with self._records() as records:
            records[record["id"]] = record
        self._audit(AuditEvent.ENROLMENT_OPENED, "remote enrolment opened", record)
        return _shown(record)

    def show(self, auth_id: str) -> dict[str, Any]:
        """One authorisation's record as the operator sees it (the code once the box asked)."""
        with self._records() as records:
            return _shown(self._get(records, auth_id))

    def records(self) -> list[dict[str, Any]]:
        """Every authorisation, newest first."""
        with self._records() as records:
            ordered = sorted(records.values(), key=lambda r: str(r["created"]), reverse=True)
            return [_shown(r) for r in ordered]

    def confirm(self, auth_id: str, code: str) -> dict[str, Any]:
        """The operator types the code the researcher reads from the box's screen."""
        with self._records() as records:
            record = self._get(records, auth_id)
            if record["state"] != "bound":
                raise EnrolmentAuthorisationError(
                    f"authorisation {auth_id} is {record['state']}: nothing to confirm "
                    "(the box has not asked for it yet, or it is over)"
                )
            if not secrets.compare_digest(code.replace(" ", ""), str(record["code"])):
                record["wrong_codes"] = int(record["wrong_codes"]) + 1
                if record["wrong_codes"] >= MAX_WRONG_CODES:
                    record["state"] = "revoked"
                message = "the code does not match the box's"
                if record["state"] == "revoked":
                    message += f": {MAX_WRONG_CODES} wrong codes, the authorisation is revoked"
                wrong = dict(record)
            else:
                record["state"] = "confirmed"
                wrong = None
        if wrong is not None:
            self._audit(AuditEvent.ENROLMENT_REFUSED, "wrong code read back", wrong, reason="code")
            raise EnrolmentAuthorisationError(message)
        self._audit(AuditEvent.ENROLMENT_CONFIRMED, "code read back", record)
        return _shown(record)

    def revoke(self, auth_id: str) -> dict[str, Any]:
        """End an authorisation that is not done; card management refuses it from now on."""
        with self._records() as records:
            record = self._get(records, auth_id)
            if record["state"] == "done":
                raise EnrolmentAuthorisationError(f"authorisation {auth_id} is already done")
            record["state"] = "revoked"
        self._audit(AuditEvent.ENROLMENT_REVOKED, "remote enrolment revoked", record)
        return _shown(record)

    # -- the box's requests --------------------------------------------------------------

    def begin(self, request: dict[str, Any]) -> dict[str, Any]:
        """``/v1/bio/begin``: the authorisation for this card and box, signed over the challenge."""
        guid = _guid(request)
        box_der = unb64(request.get("box_certificate"), "box_certificate")
        box = certificate_field(box_der, "box")
        challenge = unb64(request.get("challenge"), "challenge")
        if len(challenge) != CHALLENGE_BYTES:
            raise ProtocolError(f"field 'challenge' must be {CHALLENGE_BYTES} bytes")
        now = datetime.now(UTC)
        try:
            validate(box, self.intermediates, self.anchors, at=now, purpose=Purpose.BOX,
                     crls=self.store)  # fmt: skip
        except SdboxError as exc:
            raise Refused("box_identity", f"this box is not recognised: {exc.message}") from exc
        box_id = box_id_of(box)
        with self._records() as records:
            record = _find(records, guid, box_id, now)
            auth = Authorisation(
                id=record["id"], card_guid=guid, box_id=box_id,
                box_certificate_sha256=hashlib.sha256(box_der).digest(),
                fingers=tuple(record["fingers"]),
                not_before=datetime.fromisoformat(record["not_before"]),
                not_after=datetime.fromisoformat(record["not_after"]),
                operator=record["operator"], box_challenge=challenge,
            )  # fmt: skip
            signer = self._operator(record["operator_key"])
            signed = sign(auth, signer.key, signer.certificate, self._chain_of(signer.certificate))
            # a new challenge binds anew and needs a new read-back: an interrupted attempt
            # (box restarted, card pulled) starts again from here
            record.update(state="bound", code=short_code(signed.tbs),
                          tbs_sha256=hashlib.sha256(signed.tbs).hexdigest(),
                          box_certificate=box_der.hex(), wrong_codes=0)  # fmt: skip
            bound = dict(record)
        self._audit(AuditEvent.ENROLMENT_AUTHORISED, "authorisation bound to the box", bound)
        return {**signed.to_json(), "expires": auth.not_after.isoformat()}

    def status(self, request: dict[str, Any]) -> dict[str, Any]:
        """``/v1/bio/status``: whether the operator has confirmed the code yet."""
        auth_id = text_field(request, "authorisation")
        with self._records() as records:
            record = records.get(auth_id)
            if record is None or record.get("tbs_sha256") != text_field(request, "tbs_sha256"):
                raise Refused("enrolment_authorisation", "no such enrolment authorisation")
            if _expired(record, datetime.now(UTC)):
                raise Refused("expired", "the enrolment authorisation has expired")
            return {"state": record["state"]}

    def admit(self, auth_id: str, guid: bytes, box_der: bytes) -> None:
        """Card management for enrolment: only for a confirmed authorisation of this card and box."""
        with self._records() as records:
            record = records.get(auth_id)
            if record is None or record["card_guid"] != guid.hex():
                raise Refused("enrolment_authorisation",
                              "no enrolment authorisation for this card")  # fmt: skip
            if record.get("box_certificate") != box_der.hex():
                raise Refused("other_box", "the enrolment authorisation is for another box")
            _refuse_over(record, datetime.now(UTC))
            if record["state"] not in ("confirmed", "writing"):
                raise Refused("not_confirmed",
                              "the operator has not confirmed the code shown on the box")  # fmt: skip
            record["state"] = "writing"
            writing = dict(record)
        self._audit(AuditEvent.ENROLMENT_WRITING, "card management opened for enrolment", writing)

    def finish(self, request: dict[str, Any]) -> dict[str, Any]:
        """``/v1/bio/finish``: the references are written and verified on the card; done, once."""
        auth_id = text_field(request, "authorisation")
        session = text_field(request, "session")
        fingers = request.get("fingers")
        if not isinstance(fingers, list) or not all(isinstance(f, str) for f in fingers):
            raise ProtocolError("field 'fingers' must be a list of finger names")
        signature = unb64(request.get("box_signature"), "box_signature")
        with self._records() as records:
            record = records.get(auth_id)
            if record is None:
                raise Refused("enrolment_authorisation", "no such enrolment authorisation")
            if record["state"] == "done":
                raise Refused("used", "the enrolment authorisation was already used")
            if record["state"] != "writing":
                raise Refused("not_confirmed", f"the authorisation is {record['state']}")
            if tuple(fingers) != tuple(record["fingers"]):
                raise Refused("finger", "the box did not enrol the authorised fingers")
            if not self.card_proven(session, bytes.fromhex(record["card_guid"])):
                raise Refused("card", "the card did not prove its management key for this enrolment")
            box = load_certificate(bytes.fromhex(record["box_certificate"]))
            key = box.public_key()
            message = finish_message(_tbs_marker(record), session, tuple(fingers))
            try:
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise InvalidSignature
                key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature as exc:
                raise Refused("box_identity", "the box did not prove its identity") from exc
            record.update(state="done", done=datetime.now(UTC).isoformat(timespec="seconds"))
            done = dict(record)
        self._audit(AuditEvent.ENROLMENT_COMPLETED, "remote enrolment completed", done)
        return {"state": "done"}

    # -- helpers ------------------------------------------------------------------------

    def _get(self, records: dict[str, dict[str, Any]], auth_id: str) -> dict[str, Any]:
        record = records.get(auth_id)
        if record is None:
            raise EnrolmentAuthorisationError(f"no enrolment authorisation {auth_id!r}")
        if record["state"] in ("open", "bound", "confirmed") and _expired(
            record, datetime.now(UTC)
        ):
            record["state"] = "expired"
        return record

    def _validate_operator(self, certificate: x509.Certificate, chain: list[x509.Certificate]) -> None:
        validate(certificate, [*chain, *self.intermediates], self.anchors, at=datetime.now(UTC),
                 purpose=Purpose.ENROLMENT_OPERATOR, crls=self.store)  # fmt: skip

    def _chain_of(self, certificate: x509.Certificate) -> list[x509.Certificate]:
        return [c for c in self.intermediates if c.subject == certificate.issuer]

    @staticmethod
    def _audit(event: AuditEvent, message: str, record: dict[str, Any], **extra: str) -> None:
        audit(event, message, side="centre", authorisation=str(record["id"]),
              operator=str(record["operator"]), card=str(record["card_guid"]),
              box=str(record["box_id"]), fingers=",".join(record["fingers"]),
              **extra)  # fmt: skip


def _tbs_marker(record: dict[str, Any]) -> bytes:
    """What the finish message names the authorisation by: the centre keeps its digest only."""
    return bytes.fromhex(str(record["tbs_sha256"]))


def _find(records: dict[str, dict[str, Any]], guid: bytes, box_id: str,
          now: datetime) -> dict[str, Any]:  # fmt: skip
    """The live authorisation for (card, box); else the refusal that says why not."""
    for_card = [r for r in records.values() if r["card_guid"] == guid.hex()]
    live = [r for r in for_card if r["state"] in ("open", "bound", "confirmed", "writing")]
    mine = [r for r in live if r["box_id"] == box_id]
    if mine:
        record = max(mine, key=lambda r: str(r["created"]))
        _refuse_over(record, now)
        return record
    if live:
        raise Refused("other_box", "the enrolment was authorised for another box")
    if any(r["box_id"] == box_id and r["state"] in ("open", "bound", "confirmed", "writing")
           for r in records.values()):  # fmt: skip
        raise Refused("other_card", "the enrolment was authorised for another card")
    mine_over = sorted((r for r in for_card if r["box_id"] == box_id),
                       key=lambda r: str(r["created"]))  # fmt: skip
    if mine_over and mine_over[-1]["state"] == "done":
        raise Refused("used", "the enrolment authorisation was already used")
    if mine_over and mine_over[-1]["state"] == "revoked":
        raise Refused("revoked", "the enrolment authorisation was revoked")
    if mine_over and mine_over[-1]["state"] == "expired":
        raise Refused("expired", "the enrolment authorisation has expired")
    raise Refused("enrolment_authorisation",
                  "no enrolment is authorised for this card at this box: call your card office")  # fmt: skip


def _expired(record: dict[str, Any], now: datetime) -> bool:
    return now > datetime.fromisoformat(record["not_after"])


def _refuse_over(record: dict[str, Any], now: datetime) -> None:
    if record["state"] == "done":
        raise Refused("used", "the enrolment authorisation was already used")
    if record["state"] == "revoked":
        raise Refused("revoked", "the enrolment authorisation was revoked")
    if _expired(record, now):
        raise Refused("expired", "the enrolment authorisation has expired")


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "card_guid", "box_id", "fingers", "not_before", "not_after", "operator",
            "state", "code", "done")  # fmt: skip
    return {k: record[k] for k in keys if k in record}


def _save(path: Path, records: dict[str, dict[str, Any]]) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(records, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _guid(request: dict[str, Any]) -> bytes:
    try:
        guid = bytes.fromhex(text_field(request, "card_guid"))
    except ValueError as exc:
        raise ProtocolError("field 'card_guid' must be hex") from exc
    if len(guid) != 16:
        raise ProtocolError("field 'card_guid' must be 16 bytes")
    return guid
