"""The box's side of enrolment (docs/broker-protocol.md, "Enrolment"): token + CSR -> certificate.

Only the exchange with the centre; the TPM key, the request and the checks
of the answer are the box identity's (:mod:`sdbox.identity.enrol`).
"""

from __future__ import annotations

from cryptography import x509

from sdbox.centre.client import post_json, tls_context
from sdbox.centre.protocol import ProtocolError, b64
from sdbox.certificates import UnreadableCertificate, load_certificate


def request_certificate(
    url: str,
    *,
    token: str,
    csr_der: bytes,
    anchors: list[x509.Certificate],
    timeout_s: float,
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """Spend the one-time ``token`` on a certificate for ``csr_der``: (certificate, chain)."""
    if not url.startswith("https://"):
        raise ProtocolError("the broker URL must be https://")
    answer = post_json(
        f"{url}/v1/enrol", {"token": token, "csr": b64(csr_der)}, tls_context(anchors), timeout_s
    )
    try:
        certificate = load_certificate(str(answer["certificate"]).encode())
        chain = [load_certificate(str(c).encode()) for c in answer.get("chain", [])]
    except (KeyError, TypeError, UnreadableCertificate) as exc:
        raise ProtocolError("the centre's enrolment answer holds no usable certificate") from exc
    return certificate, chain
