"""The network and support screens as the researcher and the helpdesk see them (sdbox.ui.desk)."""

from __future__ import annotations

from sdbox.agent.api import DiagnosticsOutcome, NetworkStatus
from sdbox.ui.catalogue import translator
from sdbox.ui.desk import SENDING, DeskView, network_screen, parse_refusal, support_screen

EN, FR = translator("en"), translator("fr")


def test_the_kept_mode_is_shown_with_its_fields_and_the_passphrase_never_comes_back() -> None:
    kept = {"mode": "wifi", "ssid": "Maison 5G", "passphrase_set": "1"}
    screen = network_screen(DeskView(network=kept, status=NetworkStatus.LOCAL_ONLY), EN)
    assert screen.mode == "wifi"
    ssid, passphrase = screen.fields
    assert ssid.value == "Maison 5G"
    assert passphrase.secret
    assert passphrase.value == ""
    assert "keep the one saved" in passphrase.label
    static = network_screen(DeskView(network=kept, mode="static"), EN)
    assert [f.key for f in static.fields] == ["address", "gateway", "dns"]
    assert network_screen(DeskView(network=kept, mode="dhcp"), EN).fields == ()


def test_a_refusal_marks_its_field_in_the_researchers_language() -> None:
    refusal = "address overlaps_centre: the network 10.20.5.0/24 overlaps the centre's network"
    view = DeskView(network={"mode": "dhcp"}, mode="static", refusal=refusal,
                    typed={"address": "10.20.5.9/24", "gateway": "10.20.5.1"})  # fmt: skip
    screen = network_screen(view, FR)
    address, gateway, _dns = screen.fields
    assert address.value == "10.20.5.9/24"  # what was typed stays, to be corrected
    assert address.problem.startswith("Ce réseau chevauche les réseaux du centre")
    assert gateway.problem == ""
    assert screen.alert
    assert screen.body == "Non enregistré : vérifiez le champ signalé."
    assert "10.20.5.0/24 overlaps" not in repr(screen)  # never the agent's English words
    assert parse_refusal("not the agent's format") == ("", "")


def test_the_screen_says_where_the_problem_is() -> None:
    said = {
        status: network_screen(DeskView(status=status), EN).body for status in NetworkStatus
    }
    assert "network cable" in said[NetworkStatus.NO_LINK]
    assert "DHCP did not answer" in said[NetworkStatus.NO_ADDRESS]
    assert "no route to the centre's gateway" in said[NetworkStatus.NO_ROUTE]
    assert "UDP ports 500 and 4500" in said[NetworkStatus.UDP_BLOCKED]
    assert "refused this box" in said[NetworkStatus.GATEWAY_REFUSED]
    assert len(set(said.values())) == len(said)
    assert network_screen(DeskView(status=NetworkStatus.NO_LINK), EN).alert
    assert not network_screen(DeskView(status=NetworkStatus.CONNECTED), EN).alert


def test_the_support_screen_reads_out_what_the_helpdesk_asks() -> None:
    support = {
        "box": "CN=box-0042,O=Centre", "version": "0.1.0+1765000000", "slot": "B",
        "generation": "nuc-g1", "interface": "eth0", "addresses": "192.0.2.100/24",
        "tunnel": "udp_blocked", "card": "BIO SSO, on-card finger",
        "card_seen": "2026-12-07T14:05:09+00:00",
        "problems": "2026-12-07T14:06:00+00:00 wrong_finger\n2026-12-07T14:00:00+00:00 broker_unreachable",
    }  # fmt: skip
    lines = dict(support_screen(DeskView(support=support), EN).lines)
    assert lines["Box"] == "CN=box-0042,O=Centre"
    assert lines["Software"] == "0.1.0+1765000000, slot B"
    assert lines["Generation"] == "nuc-g1"
    assert lines["Addresses"] == "eth0: 192.0.2.100/24"
    assert "UDP ports 500 and 4500" in lines["Network"]
    assert lines["Last card"] == "BIO SSO, on-card finger, 2026-12-07 14:05 UTC"
    assert lines["Last problems"].splitlines() == [
        "2026-12-07 14:06 UTC  finger did not match (wrong_finger)",
        "2026-12-07 14:00 UTC  centre unreachable (broker_unreachable)",
    ]
    empty = dict(support_screen(DeskView(), FR).lines)
    assert empty["Dernière carte"] == "aucune depuis le démarrage du boîtier"


def test_the_support_screen_says_what_became_of_the_diagnostics() -> None:
    before = support_screen(DeskView(), EN)
    assert "Enter: send diagnostics" in before.hint
    assert not before.alert
    sending = support_screen(DeskView(diagnostics=SENDING), EN)
    assert sending.body == "Sending diagnostics to the service desk…"
    sent = support_screen(DeskView(diagnostics=DiagnosticsOutcome.SENT, diagnostics_text="12"), EN)
    assert "reference 12" in sent.body
    assert not sent.alert
    away = support_screen(DeskView(diagnostics=DiagnosticsOutcome.UNREACHABLE, diagnostics_text="x"), EN)
    assert "the centre cannot be reached" in away.body
    assert away.alert
    refused = support_screen(
        DeskView(diagnostics=DiagnosticsOutcome.FAILED, diagnostics_text="this box is not recognised"),
        translator("fr"),
    )
    assert refused.body == "Diagnostic non envoyé : this box is not recognised"  # the reason as data
    assert refused.alert
