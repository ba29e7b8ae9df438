"""Typed trust failures, each with a message a researcher or operator can act on.

The CLI maps :class:`TrustError` (and so every subclass) to exit code 5. The
agent and the greeter show ``message`` as it is; callers that need to decide
(retry after a CRL refresh, tell the operator the clock is wrong) match on the
type and read the attributes.
"""

from __future__ import annotations

from datetime import datetime

from sdbox.errors import SdboxError


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


class TrustError(SdboxError):
    """A certificate, CRL or signature could not be trusted."""


class MalformedCertificate(TrustError):
    """A certificate or CRL could not be parsed or breaks the profile."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"The {what} is damaged or not in the expected format ({detail}).")
        self.what = what
        self.detail = detail


class CertificateExpired(TrustError):
    """A certificate in the path is past its notAfter."""

    def __init__(self, subject: str, not_after: datetime) -> None:
        super().__init__(
            f"The certificate of {subject} expired on {_when(not_after)}; "
            "it must be renewed before it can be used."
        )
        self.subject = subject
        self.not_after = not_after


class CertificateNotYetValid(TrustError):
    """A certificate in the path is before its notBefore."""

    def __init__(self, subject: str, not_before: datetime) -> None:
        super().__init__(
            f"The certificate of {subject} is not valid before {_when(not_before)}; "
            "check this box's clock, or wait until then."
        )
        self.subject = subject
        self.not_before = not_before


class CertificateRevoked(TrustError):
    """A certificate in the path is listed on its issuer's CRL."""

    def __init__(self, subject: str, revoked_at: datetime, reason: str | None) -> None:
        why = f" (reason: {reason})" if reason else ""
        super().__init__(
            f"The certificate of {subject} was revoked on {_when(revoked_at)}{why}; "
            "it can no longer be used. Contact your project's data manager."
        )
        self.subject = subject
        self.revoked_at = revoked_at
        self.reason = reason


class UnknownIssuer(TrustError):
    """No path from the certificate to a trusted root could be built."""

    def __init__(self, subject: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"The certificate of {subject} was not issued by an authority this box trusts{extra}."
        )
        self.subject = subject
        self.detail = detail


class BadSignature(TrustError):
    """A signature on a certificate, CRL or directory does not verify."""

    def __init__(self, what: str) -> None:
        super().__init__(f"The signature on {what} does not verify: it was altered or forged.")
        self.what = what


class WrongPurpose(TrustError):
    """A certificate is not meant for this use (key usage, EKU, CA constraints)."""

    def __init__(self, subject: str, detail: str) -> None:
        super().__init__(f"The certificate of {subject} may not be used here: {detail}.")
        self.subject = subject
        self.detail = detail


class ProjectMismatch(TrustError):
    """A project certificate names another project (or none)."""

    def __init__(self, expected: str, found: list[str]) -> None:
        named = ", ".join(found) if found else "no project"
        super().__init__(
            f"The certificate is for {named}, not for project {expected!r}; "
            "the card's project directory does not match its certificates."
        )
        self.expected = expected
        self.found = found


class ServerNameMismatch(TrustError):
    """A server certificate does not name the server that was dialled."""

    def __init__(self, hostname: str) -> None:
        super().__init__(
            f"The server's certificate is not for {hostname}; "
            "the connection was refused to protect your session."
        )
        self.hostname = hostname


class CrlMissing(TrustError):
    """There is no CRL for an issuer whose certificates must be checked."""

    def __init__(self, issuer: str) -> None:
        super().__init__(
            f"This box has no revocation list for {issuer}, so it cannot tell whether "
            "the certificate was revoked; connect the box to the network to refresh it."
        )
        self.issuer = issuer


class CrlStale(TrustError):
    """The CRL for an issuer is past its nextUpdate (plus grace)."""

    def __init__(self, issuer: str, next_update: datetime) -> None:
        super().__init__(
            f"The revocation list for {issuer} is out of date (it should have been replaced "
            f"by {_when(next_update)}); connect the box to the network to refresh it."
        )
        self.issuer = issuer
        self.next_update = next_update


class CrlRollback(TrustError):
    """A CRL older than the one already accepted was offered."""

    def __init__(self, issuer: str, offered: int, held: int | None) -> None:
        if held is None:
            # The held list was damaged and no number was recorded for it: only
            # the time floor can tell a replay from a newer list.
            why = (
                "the list this box held was damaged and its number was not recorded, so only "
                "a list issued after the box's time floor can replace it; fetch the current list"
            )
        else:
            why = f"this box already holds number {held}, and lists never go backwards"
        super().__init__(f"Refused a revocation list for {issuer} numbered {offered}: {why}.")
        self.issuer = issuer
        self.offered = offered
        self.held = held


class CrlNumberInvalid(MalformedCertificate):
    """A CRL has no CRL number, or marks it critical (RFC 5280 5.2.3).

    The number is what lets the box refuse an older list in place of a newer
    one (:class:`CrlRollback`), so a list without a usable number is refused,
    never read as "number zero". A subclass of :class:`MalformedCertificate`:
    callers that treat a damaged list one way treat this one the same.
    """

    def __init__(self, issuer: str, problem: str) -> None:
        TrustError.__init__(
            self,
            f"Refused the revocation list of {issuer}: it {problem}. RFC 5280 requires every "
            "list to carry a non-critical CRL number, and this box needs it to refuse older "
            f"lists. Ask the operator of {issuer} to reissue the list with a non-critical "
            "CRL number, then refresh the box's revocation lists.",
        )
        self.what = "revocation list"
        self.detail = problem
        self.issuer = issuer
        self.problem = problem


class ClockWrong(TrustError):
    """The validation time is below the persisted time floor."""

    def __init__(self, now: datetime, floor: datetime) -> None:
        super().__init__(
            f"This box's clock says {_when(now)}, but it has already seen {_when(floor)}: "
            "the clock is wrong, so no certificate can be checked. Ask IT to fix the time."
        )
        self.now = now
        self.floor = floor


class PkiError(TrustError):
    """The development PKI directory is missing, incomplete or misused."""


class PossessionFailed(TrustError):
    """The card answered, but not with the key its certificate names."""

    def __init__(self, subject: str) -> None:
        super().__init__(
            f"The card does not hold the key of the certificate of {subject}: "
            "the certificate may have been copied from another card."
        )
        self.subject = subject
