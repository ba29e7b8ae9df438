"""The agent's watch on charon: what it reports from charon's pushes (no charon here).

``list-sas`` is a fake; alerts and up/down events are fed as the listener
threads would feed them.
"""

from __future__ import annotations

import time
from pathlib import Path

from sdbox.network.events import Alert, AlertMessage, Reason, TunnelEvent, TunnelState
from sdbox.network.tunnel import SaInfo
from sdbox.network.watch import TunnelWatch

GW1 = "192.0.2.1"
ESTABLISHED = SaInfo("centre-1", "ESTABLISHED", GW1, "gw1.centre.test", ("10.99.0.1",),
                     ("centre",))  # fmt: skip


class Charon:
    def __init__(self) -> None:
        self.sas: list[SaInfo] = []
        self.routes = True


def watch(charon: Charon) -> tuple[TunnelWatch, list[TunnelEvent]]:
    seen: list[TunnelEvent] = []
    port = TunnelWatch(Path("/nonexistent.vici"), Path("/nonexistent.enfy"),
                       route_probe=lambda _address: charon.routes,
                       list_sas=lambda: list(charon.sas))  # fmt: skip
    port.subscribe(seen.append)
    return port, seen


def alert(kind: Alert, text: str = "", connection: str = "centre-1") -> AlertMessage:
    return AlertMessage(kind, text, connection, "gw1.centre.test", f"{GW1}[500]")


def test_up_then_lost_with_the_alert_that_explains_it() -> None:
    charon = Charon()
    port, seen = watch(charon)
    assert port.current().state is TunnelState.CONNECTING  # nothing known yet
    charon.sas = [ESTABLISHED]
    port.on_charon_event("child-updown", True, "centre-1")
    assert seen[-1] == TunnelEvent(TunnelState.UP, GW1, inner_address="10.99.0.1", at=seen[-1].at)
    port.on_alert(alert(Alert.RETRANSMIT_SEND_TIMEOUT, "giving up after 3 retransmits"))
    assert seen[-1].state is TunnelState.UP  # an alert alone does not take it down
    charon.sas = []
    port.on_charon_event("ike-updown", False, "centre-1")
    assert (seen[-1].state, seen[-1].gateway, seen[-1].reason) == (
        TunnelState.DOWN, GW1, Reason.GATEWAY_UNREACHABLE
    )  # fmt: skip


def test_taken_down_without_an_alert_and_no_route_is_no_network() -> None:
    charon = Charon()
    port, seen = watch(charon)
    charon.sas = [ESTABLISHED]
    port.refresh()
    charon.sas, charon.routes = [], False
    port.on_charon_event("ike-updown", False, "centre-1")
    assert seen[-1].reason is Reason.NO_NETWORK
    charon.routes = True
    charon.sas = [ESTABLISHED]
    port.on_charon_event("child-updown", True, "centre-1")
    assert seen[-1].state is TunnelState.UP


def test_a_refusal_before_anything_is_up_is_reported_at_once() -> None:
    charon = Charon()
    port, seen = watch(charon)
    port.on_alert(alert(Alert.CERT_REVOKED, "certificate 'CN=gw1' revoked"))
    assert (seen[-1].state, seen[-1].reason, seen[-1].gateway) == (
        TunnelState.REFUSED, Reason.GATEWAY_CERTIFICATE_REVOKED, GW1
    )  # fmt: skip
    port.on_alert(alert(Alert.LOCAL_AUTH_FAILED))
    assert seen[-1].reason is Reason.GATEWAY_REFUSED_BOX
    port.on_alert(alert(Alert.RETRANSMIT_SEND))  # only informative: nothing new
    assert len(seen) == 2


def test_a_missing_charon_is_daemon_unavailable() -> None:
    port, seen = watch(Charon())
    port.start()
    try:
        for _ in range(50):
            if seen:
                break
            time.sleep(0.1)
    finally:
        port.stop()
    assert seen[0].state is TunnelState.DOWN
    assert seen[0].reason is Reason.DAEMON_UNAVAILABLE
