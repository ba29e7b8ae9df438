"""Card variants: every emulator profile is recognised from what the card says about itself."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sdbox.smartcard.atr import Transmission, parse_atr
from sdbox.smartcard.biosso import BioSsoSession
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import (
    ProfileError,
    issue_card,
    load_profile,
    profile_names,
)
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.smartcard.errors import CardProtocolError
from sdbox.smartcard.profile import Discovery, ObjectTag, certificate_object, encode_key_history
from sdbox.smartcard.variants import (
    VARIANTS,
    VARIANTS_BY_NAME,
    ContradictoryCard,
    PinPolicy,
    ProjectLayout,
    classify,
    gather,
    identify,
)
from sdbox.trust.pki import Pki
from tests.unit.test_applet import Direct

VARIANT_PROFILES = [name for name in profile_names() if name != "demo"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def _card(pki: Pki, name: str) -> CardState:
    return issue_card(load_profile(name), pki, keygen_seed=b"variants")


def _session(state: CardState) -> tuple[BioSsoSession, bytes]:
    atr = build_atr(state.transmission, extended=state.extended_length)
    extended = parse_atr(atr).extended_length
    return BioSsoSession(Direct(PivApplet(state)), extended=extended), atr


def test_there_is_one_profile_per_variant_and_the_demo() -> None:
    assert sorted(VARIANT_PROFILES) == sorted(v.name for v in VARIANTS)
    assert len(VARIANTS) >= 9
    assert profile_names()[0] == "demo"


@pytest.mark.parametrize("name", VARIANT_PROFILES)
def test_each_profile_is_identified_as_its_variant(pki: Pki, name: str) -> None:
    session, atr = _session(_card(pki, name))
    found = identify(session, atr)
    assert found.reason is None
    assert found.variant is VARIANTS_BY_NAME[name]
    assert found.capabilities == VARIANTS_BY_NAME[name].capabilities


def test_the_demo_card_is_todays_p256_generation(pki: Pki) -> None:
    # the demo mixes P-256 and P-384 projects: today's generation holds both
    session, atr = _session(_card(pki, "demo"))
    assert identify(session, atr).variant is VARIANTS_BY_NAME["biosso-p256"]


def test_capabilities_are_what_distinguishes_the_variants(pki: Pki) -> None:
    caps = {v.name: v.capabilities for v in VARIANTS}
    assert caps["legacy-one-project"].project_layout == ProjectLayout.CARD_IS_PROJECT
    assert not caps["legacy-one-project"].multi_project
    assert caps["biosso-pin-only"].pin_policy == PinPolicy.PIN_ONLY
    assert not caps["biosso-pin-only"].on_card_comparison
    assert caps["biosso-one-finger"].fingers == 1
    assert not caps["biosso-rsa2048"].possession_by_ecdh
    assert not caps["biosso-chaining"].extended_length
    assert caps["biosso-t0"].transmission == Transmission.T0
    assert caps["biosso-compressed"].compressed_certificates
    assert len({c for c in caps.values()}) == len(caps)  # no two variants alike


def test_a_card_without_piv_is_not_supported_and_says_so() -> None:
    class Plain:
        def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
            return b"", 0x6A82

        def close(self) -> None:
            pass

    found = identify(BioSsoSession(Plain()), bytes.fromhex("3B021480"))
    assert not found.supported
    assert "no PIV application" in (found.reason or "")


def test_an_unparseable_atr_is_reported_not_raised(pki: Pki) -> None:
    session, _atr = _session(_card(pki, "biosso-p256"))
    found = identify(session, b"\x00\x01")
    assert not found.supported
    assert "ATR" in (found.reason or "")


def test_a_directory_on_a_one_project_card_is_a_named_contradiction(pki: Pki) -> None:
    state = _card(pki, "legacy-one-project")
    state.objects[ObjectTag.DIRECTORY] = _card(pki, "biosso-p256").objects[ObjectTag.DIRECTORY]
    session, atr = _session(state)
    with pytest.raises(ContradictoryCard, match="directory on a card that claims one project"):
        identify(session, atr)


def test_a_discovery_object_announcing_occ_without_fingers_is_a_contradiction(pki: Pki) -> None:
    state = _card(pki, "biosso-pin-only")
    state.objects[ObjectTag.DISCOVERY] = Discovery(
        piv_pin=True, global_pin=False, occ=True
    ).encode()
    session, atr = _session(state)
    with pytest.raises(ContradictoryCard, match="discovery object does not match"):
        identify(session, atr)


def test_a_key_history_that_disagrees_with_the_certificates_is_a_contradiction(pki: Pki) -> None:
    state = _card(pki, "biosso-p256")
    state.objects[ObjectTag.KEY_HISTORY] = encode_key_history(1)
    session, atr = _session(state)
    with pytest.raises(ContradictoryCard, match="key history counts 1"):
        identify(session, atr)


def test_a_renewed_card_with_one_superseded_key_is_not_a_contradiction(pki: Pki) -> None:
    """After a renewal, P projects may use P + 1 retired slots (docs/renewal.md); not P + 2."""
    state = _card(pki, "biosso-p256")
    state.objects[certificate_object(0x85)] = state.objects[certificate_object(0x84)]
    state.objects[ObjectTag.KEY_HISTORY] = encode_key_history(4)
    session, atr = _session(state)
    assert identify(session, atr).variant == VARIANTS_BY_NAME["biosso-p256"]
    state.objects[certificate_object(0x86)] = state.objects[certificate_object(0x84)]
    state.objects[ObjectTag.KEY_HISTORY] = encode_key_history(5)
    session, atr = _session(state)
    with pytest.raises(ContradictoryCard, match="lists 3 project"):
        identify(session, atr)


def test_capabilities_no_variant_has_are_not_supported(pki: Pki) -> None:
    # a P-384 card on a T=0 chip: each alone is known, together they are not
    state = _card(pki, "biosso-p384")
    state.transmission, state.extended_length = "T=0", False
    session, atr = _session(state)
    found = identify(session, atr)
    assert not found.supported
    assert found.observed is not None
    assert found.observed.transmission == Transmission.T0
    assert "no variant" in (found.reason or "")


def test_classify_is_pure_and_needs_a_chuid(pki: Pki) -> None:
    session, atr = _session(_card(pki, "biosso-p256"))
    evidence = gather(session, atr)
    assert classify(evidence).supported
    assert not classify(replace(evidence, guid=None)).supported


def test_atr_capabilities_and_protocols() -> None:
    t1 = parse_atr(build_atr("T=1", extended=True))
    assert (t1.transmission, t1.extended_length, t1.command_chaining) == (
        Transmission.T1,
        True,
        True,
    )
    assert (
        t1.atr.hex().upper()
        == "3B88800180 73C021C0534442".replace(" ", "") + t1.atr[-1:].hex().upper()
    )
    chaining = parse_atr(build_atr("T=1", extended=False))
    assert (chaining.extended_length, chaining.command_chaining) == (False, True)
    t0 = parse_atr(build_atr("T=0", extended=False))
    assert t0.protocols == {Transmission.T0}
    # a YubiKey 5's ATR (T=1, capabilities 73 C0 21 C0)
    yubikey = parse_atr(bytes.fromhex("3BFD1300008131FE158073C021C057597562694B657940"))
    assert yubikey.protocols == {Transmission.T1}
    assert yubikey.extended_length


@pytest.mark.parametrize(
    "atr", ["", "3B", "3A00", "3B8F80", "3B88800180" + "73C021C0534442" + "00", "3B0280"]
)
def test_bad_atrs_are_protocol_errors(atr: str) -> None:
    with pytest.raises(CardProtocolError):
        parse_atr(bytes.fromhex(atr))


def test_profile_names_and_bad_names() -> None:
    assert "legacy-one-project" in profile_names()
    with pytest.raises(ProfileError, match="no card profile named 'nosuch'"):
        load_profile("nosuch")


def test_one_project_card_has_no_directory_and_its_9a_is_the_project(pki: Pki) -> None:
    state = _card(pki, "legacy-one-project")
    assert ObjectTag.DIRECTORY not in state.objects
    assert ObjectTag.KEY_HISTORY not in state.objects
    session, atr = _session(state)
    holder = gather(session, atr).holder
    assert holder is not None
    assert holder.project_id == "census-2021"


def test_compressed_certificates_read_back_whole(pki: Pki) -> None:
    state = _card(pki, "biosso-compressed")
    session, _atr = _session(state)
    plain = _card(pki, "biosso-p256")
    assert len(state.objects[ObjectTag.AUTH_CERT]) < len(plain.objects[ObjectTag.AUTH_CERT])
    session.piv.select()
    assert "(census-2021)" in session.certificate(0x82).subject.rfc4514_string()
