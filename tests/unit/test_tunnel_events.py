"""charon's error-notify alerts as the tunnel module reads them, and the reasons it gives."""

from __future__ import annotations

import struct

import pytest

from sdbox.network.events import (
    Alert,
    AlertMessage,
    Reason,
    TunnelEvent,
    TunnelState,
    explain,
    parse_alert,
)


def notify(kind: int, text: str, name: str = "centre-1", peer: str = "gw1.centre.test",
           address: str = "192.0.2.1[4500]") -> bytes:  # fmt: skip
    """One message as strongSwan 5.9.8's error-notify plugin writes it (packed, type in network order)."""
    return struct.pack("!i384s64s256s60s", kind, text.encode(), name.encode(), peer.encode(),
                       address.encode())  # fmt: skip


def test_a_message_is_768_bytes_and_decodes_to_its_fields() -> None:
    raw = notify(18, "certificate revoked: 'O=sdbox, CN=gw1.centre.test'")
    assert len(raw) == 768
    alert = parse_alert(raw)
    assert alert == AlertMessage(Alert.CERT_REVOKED, "certificate revoked: 'O=sdbox, CN=gw1.centre.test'",
                                 "centre-1", "gw1.centre.test", "192.0.2.1[4500]")  # fmt: skip


def test_an_alert_type_newer_than_5_9_8_is_kept_not_fatal() -> None:
    assert parse_alert(notify(99, "something new")).kind == 99


@pytest.mark.parametrize(
    ("kinds", "reason"),
    [
        # charon raises the certificate's own alert, then PEER_AUTH_FAILED: the specific one wins
        ([Alert.CERT_REVOKED, Alert.PEER_AUTH_FAILED], Reason.GATEWAY_CERTIFICATE_REVOKED),
        ([Alert.PEER_AUTH_FAILED, Alert.CERT_EXPIRED], Reason.GATEWAY_CERTIFICATE_EXPIRED),
        ([Alert.CERT_VALIDATION_FAILED, Alert.PEER_AUTH_FAILED], Reason.GATEWAY_CERTIFICATE_UNCHECKED),
        ([Alert.NO_ISSUER_CERT, Alert.PEER_AUTH_FAILED], Reason.GATEWAY_CERTIFICATE_REFUSED),
        ([Alert.PEER_AUTH_FAILED], Reason.GATEWAY_CERTIFICATE_REFUSED),
        ([Alert.LOCAL_AUTH_FAILED], Reason.GATEWAY_REFUSED_BOX),
        ([Alert.RETRANSMIT_SEND, Alert.RETRANSMIT_SEND_TIMEOUT], Reason.GATEWAY_UNREACHABLE),
        ([Alert.PROPOSAL_MISMATCH_CHILD], Reason.PROPOSAL_MISMATCH),
    ],
)  # fmt: skip
def test_the_most_specific_alert_gives_the_reason(kinds: list[Alert], reason: Reason) -> None:
    alerts = [parse_alert(notify(k, f"alert {k.name}")) for k in kinds]
    found = explain(alerts)
    assert found is not None
    assert found[0] is reason


def test_alerts_that_explain_nothing_give_no_reason() -> None:
    assert explain([parse_alert(notify(Alert.RETRANSMIT_SEND, "retransmit 1"))]) is None


def test_an_event_says_what_to_do_in_plain_words() -> None:
    refused = TunnelEvent(TunnelState.REFUSED, "192.0.2.1", Reason.GATEWAY_CERTIFICATE_REVOKED,
                          "certificate revoked: 'O=sdbox, CN=gw1.centre.test'")  # fmt: skip
    assert refused.refused
    assert refused.describe() == (
        "tunnel refused via 192.0.2.1: the gateway's certificate is revoked: tell the centre "
        "(certificate revoked: 'O=sdbox, CN=gw1.centre.test')"
    )
    up = TunnelEvent(TunnelState.UP, "192.0.2.1", inner_address="10.99.0.1")
    assert up.describe() == "tunnel up via 192.0.2.1, inner address 10.99.0.1"
