"""What renewal talks to besides the card: the centre and the CA's CMP endpoint.

The centre holds the card's management key (9B) and the directory-signing
key; the box relays the 9B challenge-response to it and never sees the key.
On a box the centre is the broker (:class:`sdbox.centre.cards.BrokerCentre`,
docs/broker-protocol.md "Card management"); :class:`LocalCentre` plays it from
a development PKI directory and a management key in memory (enrolment
station, tests, development boxes).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sdbox.centre.errors import CentreError
from sdbox.renewal.errors import CaUnreachable
from sdbox.smartcard.directory import Directory, SignedDirectory, sign_directory
from sdbox.smartcard.piv import LocalManagementKey, ManagementKeyHolder
from sdbox.trust.errors import TrustError
from sdbox.trust.revocation import CrlSource
from sdbox.trust.validate import Purpose, validate

CMP_CONTENT_TYPE = "application/pkixcmp"
_MAX_ANSWER = 1 << 20


class Centre(Protocol):
    """The centre's side of card management during renewal."""

    def management_key(self, card_guid: bytes) -> ManagementKeyHolder:
        """Who answers the card's 9B challenges (the centre, through the box)."""
        ...

    def sign_directory(
        self, directory: Directory, *, project: str, slot: int, certificate: x509.Certificate
    ) -> SignedDirectory:
        """The centre's signature over the card's next directory.

        ``directory`` moves ``project`` to ``certificate``, whose key is in
        ``slot`` (already written and confirmed); a centre may have the card
        prove that key before it signs.
        """
        ...


class CmpTransport(Protocol):
    """Carries one CMP request and returns the answer's DER."""

    def post(self, der: bytes) -> bytes:
        """Send ``der``; raise :class:`CaUnreachable` when there is no answer."""
        ...


class LocalCentre:
    """The centre played locally from a development PKI (tests, demo)."""

    def __init__(self, pki_dir: Path, management_key: bytes) -> None:
        from sdbox.trust.pki import Pki  # noqa: PLC0415  (development-only dependency)

        self._pki = Pki.open(pki_dir)
        self._key = LocalManagementKey(management_key)

    def management_key(self, card_guid: bytes) -> ManagementKeyHolder:
        """The one key this centre knows (a real centre diversifies per card GUID)."""
        del card_guid
        return self._key

    def sign_directory(
        self, directory: Directory, *, project: str, slot: int, certificate: x509.Certificate
    ) -> SignedDirectory:
        """Sign with the PKI's directory signer (no check: this centre trusts its caller)."""
        del project, slot, certificate
        signer = self._pki.directory_signer
        if not isinstance(signer.key, ec.EllipticCurvePrivateKey):
            raise CentreError("the development PKI's directory signer has no EC key")
        return sign_directory(directory, signer.key, signer.cert, [self._pki.project_ca.cert])


class HttpCmpTransport:
    """CMP over HTTP (RFC 6712): POST ``application/pkixcmp``, through the tunnel."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def post(self, der: bytes) -> bytes:
        """One request, one answer."""
        request = urllib.request.Request(  # noqa: S310  (the configured CA endpoint)
            self.url, data=der, method="POST", headers={"Content-Type": CMP_CONTENT_TYPE}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310
                kind = answer.headers.get("Content-Type", "")
                body: bytes = answer.read(_MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            raise CaUnreachable(
                f"the certificate authority at {self.url} answered HTTP {exc.code}; try again later"
            ) from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise CaUnreachable(
                f"the certificate authority at {self.url} cannot be reached ({exc}); "
                "the card keeps its current certificates"
            ) from exc
        if len(body) > _MAX_ANSWER:
            raise CaUnreachable(f"the certificate authority at {self.url} sent an oversized answer")
        if kind.split(";")[0].strip().lower() != CMP_CONTENT_TYPE:
            raise CaUnreachable(
                f"the certificate authority at {self.url} answered {kind or 'no content type'}, "
                f"not {CMP_CONTENT_TYPE}"
            )
        return body


@dataclass(frozen=True)
class RenewalTrust:
    """sdbox.trust bound to the box's anchors, CRLs and clock, for renewal answers.

    The CMP server's protection certificate is pinned (``cmp_server``) and must
    itself chain to the anchors and be unrevoked: a certificate the CA's own
    key signed is not enough to speak for the CA's renewal service.
    """

    anchors: list[x509.Certificate]
    intermediates: list[x509.Certificate]
    crls: CrlSource | None
    cmp_server: x509.Certificate
    now: Callable[[], datetime]

    def check_clock(self) -> datetime:
        """The current time, refused (ClockWrong) below the trust store's time floor."""
        from sdbox.trust.errors import ClockWrong  # noqa: PLC0415

        now = self.now()
        floor = self.crls.time_floor if self.crls is not None else None
        if floor is not None and now < floor:
            raise ClockWrong(now, floor)
        return now

    def check_server(self, certificate: x509.Certificate) -> None:
        """The protection certificate is the pinned one, and valid today."""
        if certificate != self.cmp_server:
            raise TrustError(
                "the renewal answer is protected by a certificate that is not the configured "
                "CMP server's"
            )
        validate(
            certificate, self.intermediates, self.anchors, at=self.check_clock(),
            purpose=Purpose.PATH, crls=self.crls,
        )  # fmt: skip

    def check_project(self, certificate: x509.Certificate, project: str) -> None:
        """A project credential for ``project``: chain, key usage, binding, revocation."""
        validate(
            certificate, self.intermediates, self.anchors, at=self.check_clock(),
            purpose=Purpose.PROJECT, crls=self.crls, project=project,
        )  # fmt: skip
