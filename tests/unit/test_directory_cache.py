"""The box's cache of verified directories: fewer APDUs on slow chips, the same trust decisions.

In process, on each chip the emulator makes: the APDUs of the picker's
listing with and without the cache, and what the cache is never allowed to
do (stand in for another card, for another directory, or unverified).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from sdbox.agent.dircache import DirectoryCache
from sdbox.smartcard.atr import parse_atr
from sdbox.smartcard.biosso import BioSsoSession, CardSummary
from sdbox.smartcard.emulator.applet import PivApplet
from sdbox.smartcard.emulator.profiles import issue_card, load_profile
from sdbox.smartcard.emulator.state import CardState
from sdbox.smartcard.emulator.vpcd import build_atr
from sdbox.smartcard.profile import ObjectTag
from sdbox.trust import validate_directory_signer
from sdbox.trust.pki import Pki
from tests.unit.test_applet import Direct

SLOW = ("biosso-chaining", "biosso-t0")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.init(tmp_path_factory.mktemp("pki"))


def _check(pki: Pki):  # type: ignore[no-untyped-def]
    def check(signer: x509.Certificate, intermediates: list[x509.Certificate]) -> None:
        validate_directory_signer(
            signer, [*intermediates, pki.project_ca.cert], [pki.root.cert], at=datetime.now(UTC)
        )

    return check


def _listing(pki: Pki, state: CardState, cache: dict[bytes, bytes] | None) -> tuple[CardSummary, int]:
    atr = build_atr(state.transmission, extended=state.extended_length)
    session = BioSsoSession(Direct(PivApplet(state)), extended=parse_atr(atr).extended_length)
    summary = session.read_summary(_check(pki), cache.get if cache is not None else None)
    return summary, session.stack.stats.apdus


@pytest.mark.parametrize("name", SLOW)
def test_a_cached_directory_brings_a_slow_chip_to_the_picker_in_few_apdus(
    pki: Pki, name: str
) -> None:
    state = issue_card(load_profile(name), pki)
    full, without = _listing(pki, state, None)
    assert full.directory is not None
    cache = {full.guid: full.directory_object}
    warm, with_cache = _listing(pki, state, cache)
    assert warm.directory == full.directory  # the same verified projects
    assert without >= 17
    # the picker target (at most 6 APDUs) from the second insertion on: the chaining chip
    # in 4 (as with extended length), the T=0 chip in 6 (CHUID and head cost two each)
    assert with_cache == (4 if name == "biosso-chaining" else 6)
    cold, first = _listing(pki, state, {})  # nothing cached yet: the head is read twice
    assert cold.directory == full.directory
    assert first == without  # a miss reads on from the head: nothing read twice


def test_a_card_with_extended_length_never_asks_the_cache(pki: Pki) -> None:
    state = issue_card(load_profile("biosso-p256"), pki)

    class Untouchable(dict[bytes, bytes]):
        def get(self, key: bytes, default: object = None) -> bytes | None:  # type: ignore[override]
            raise AssertionError("the cache was asked on a card that sends its directory at once")

    summary, apdus = _listing(pki, state, Untouchable())
    assert summary.directory is not None
    assert apdus == 4


def _tamper_tail(state: CardState) -> None:
    value = state.objects[ObjectTag.DIRECTORY]
    state.objects[ObjectTag.DIRECTORY] = value[:-8] + bytes(b ^ 0xFF for b in value[-8:])


def test_a_card_showing_the_head_but_another_tail_gets_the_centres_directory(pki: Pki) -> None:
    """A directory proves no card: the cached one the centre signed is used, not the card's."""
    state = issue_card(load_profile("biosso-chaining"), pki)
    authentic, _ = _listing(pki, state, None)
    _tamper_tail(state)
    alone, _ = _listing(pki, state, None)
    assert alone.directory is None  # read in full, the altered directory is refused
    cached, _ = _listing(pki, state, {authentic.guid: authentic.directory_object})
    assert cached.directory == authentic.directory
    assert cached.directory_object == authentic.directory_object


def test_a_renewed_directory_is_read_again(pki: Pki) -> None:
    """Another head (a new sequence and issue time) is a miss: the card's directory is read."""
    old = issue_card(load_profile("biosso-chaining"), pki)
    stale, _ = _listing(pki, old, None)
    new = issue_card(load_profile("biosso-chaining"), pki, guid=stale.guid)
    fresh, _ = _listing(pki, new, None)
    assert fresh.directory_object != stale.directory_object
    read, _ = _listing(pki, new, {stale.guid: stale.directory_object})
    assert read.directory_object == fresh.directory_object


def test_another_cards_directory_and_a_damaged_copy_are_not_used(pki: Pki) -> None:
    state = issue_card(load_profile("biosso-t0"), pki)
    own, _ = _listing(pki, state, None)
    other, _ = _listing(pki, issue_card(load_profile("biosso-t0"), pki), None)
    # another card's verified directory handed back for this card's GUID: its head differs
    read, _ = _listing(pki, state, {own.guid: other.directory_object})
    assert read.directory == own.directory
    damaged = own.directory_object[:-8] + bytes(8)  # same length, same head, broken signature
    read, apdus = _listing(pki, state, {own.guid: damaged})
    assert read.directory == own.directory
    assert apdus > 6  # the card was read


def test_the_agents_cache_keeps_each_cards_last_directory(tmp_path: Path) -> None:
    cache = DirectoryCache(tmp_path / "directories")
    guid = bytes(range(16))
    assert cache.get(guid) is None
    cache.put(guid, b"directory one")
    cache.put(guid, b"directory two")
    assert cache.get(guid) == b"directory two"
    assert cache.get(bytes(16)) is None
    assert DirectoryCache(None).get(guid) is None
    (tmp_path / "directories").chmod(0o500)  # unwritable: the card is still served
    try:
        cache.put(guid, b"directory three")
    finally:
        (tmp_path / "directories").chmod(0o700)
