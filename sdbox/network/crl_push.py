"""The box's CRLs, given to charon after each refresh: the tunnel judges revocation with them.

charon loads no fetching plugin (docs/tunnel.md: it never fetches on the
outer network), so the CRLs it checks the gateway's certificate against are
only those it was given over VICI. Without this step a refresh would update
the agent's cache and leave charon with the lists it had at start: a
gateway revoked since would still be accepted, and once those lists passed
their nextUpdate every gateway would be refused ("unchecked").

Every list the store holds is loaded each time (a handful, a few KiB): what
charon keeps per issuer is the newest it was given ("crl #02 is newer -
existing crl #01 replaced" in its log), so loading a list it already has
changes nothing, and nothing here needs to know what changed. The store has
already checked signature, issuer and CRL number.

Loading is not enough on its own (seen in test_tunnel_upkeep.py with
strongSwan 5.9.8): checking a certificate verifies the CRL's signature
through the credential manager, which caches the CRL it verified; the
revocation plugin then takes the *first* good, unexpired CRL it enumerates
for the issuer (``check_crl``: "using cached crl") without comparing it
with the others, and the cached old list comes first. A gateway revoked
since stayed accepted. So the cache's CRLs are flushed after loading
(VICI ``flush-certs`` of type ``X509_CRL``, what ``swanctl --flush-certs``
does); the lists loaded over VICI are not in that cache and stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from sdbox.network import strongswan
from sdbox.network.tunnel import Vici

DEFAULT_VICI_SOCKET = Path("/run/charon.vici")  # Debian's charon-systemd


@dataclass(frozen=True)
class Pushed:
    """What charon was given."""

    socket: Path
    issuers: tuple[str, ...]  # RFC 4514, in the order loaded

    def to_json(self) -> dict[str, object]:
        """JSON form (``sdbox trust refresh --json``, ``sdbox tunnel load-crls --json``)."""
        return {"socket": str(self.socket), "loaded": len(self.issuers),
                "issuers": list(self.issuers)}  # fmt: skip


def push_crls(vici_socket: Path, crls: Iterable[x509.CertificateRevocationList]) -> Pushed:
    """Load ``crls`` into the charon behind ``vici_socket`` (TunnelError when it cannot)."""
    issuers = []
    with Vici(vici_socket) as vici:
        for crl in crls:
            vici.load_crl(strongswan.pem(crl))
            issuers.append(crl.issuer.rfc4514_string())
        vici.flush_cached_crls()
    return Pushed(vici_socket, tuple(issuers))
