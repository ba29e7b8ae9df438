"""ISO/IEC 19794-2 codecs: round trips, conversion to the card, malformed input named precisely."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sdbox.biometric import compact, record
from sdbox.biometric.compact import Minutia, MinutiaType
from sdbox.biometric.errors import TemplateError

minutiae = st.lists(
    st.builds(Minutia, st.integers(0, 255), st.integers(0, 255), st.sampled_from(list(MinutiaType)), st.integers(0, 63)),
    min_size=1, max_size=80,
)  # fmt: skip


@given(minutiae)
def test_compact_round_trip(items: list[Minutia]) -> None:
    data = compact.encode(items)
    assert len(data) == 3 * len(items)
    assert compact.decode(data) == items


def test_compact_layout_is_the_standard_one() -> None:
    data = compact.encode([Minutia(12, 200, MinutiaType.BIFURCATION, 16)])
    assert data == bytes((12, 200, 0b10_010000))
    assert compact.decode(data)[0].degrees == 90.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x01\x02\x03\x04", "not a multiple of 3"),
        (b"\x01\x02\xc0", "type 11 is reserved"),
    ],
)
def test_compact_malformed(data: bytes, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        compact.decode(data)


def test_compact_refuses_values_off_the_grid() -> None:
    with pytest.raises(TemplateError, match="minutia 0: x = 256"):
        compact.encode([Minutia(256, 0, MinutiaType.RIDGE_ENDING, 0)])
    with pytest.raises(TemplateError, match="angle = 64"):
        compact.encode([Minutia(0, 0, MinutiaType.RIDGE_ENDING, 64)])
    with pytest.raises(TemplateError, match="at least one minutia"):
        compact.encode([])


def _record(n: int = 30) -> record.FingerRecord:
    items = tuple(
        record.RecordMinutia(
            MinutiaType.RIDGE_ENDING if i % 2 else MinutiaType.BIFURCATION,
            20 + 9 * i,
            30 + 7 * i,
            (i * 37) % 256,
            60,
        )
        for i in range(n)
    )
    return record.FingerRecord(400, 500, 197, 197, (record.FingerView(7, items),))


def test_record_round_trip() -> None:
    original = _record()
    data = original.encode()
    assert data[:8] == b"FMR\x00 20\x00"
    assert int.from_bytes(data[8:12], "big") == len(data)
    assert record.decode_record(data) == original


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"FIR\x00" + d[4:], "format identifier"),
        (lambda d: d[:4] + b" 30\x00" + d[8:], "version"),
        (lambda d: d[:-3], "record length"),
        (
            lambda d: d[:8] + (len(d) + 2).to_bytes(4, "big") + d[12:] + b"\x00\x00",
            "bytes after the last finger view",
        ),
        (lambda d: d[:10], "record header"),
    ],
)
def test_record_malformed_names_the_field(mutate: object, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        record.decode_record(mutate(_record().encode()))  # type: ignore[operator]


@given(st.binary(max_size=200))
def test_record_parser_only_raises_typed_errors(data: bytes) -> None:
    with contextlib.suppress(TemplateError):
        record.decode_record(b"FMR\x00 20\x00" + data)


def test_conversion_to_card_units_and_bit_limits() -> None:
    rec = _record(80)
    card = record.to_card(rec.views[0], rec, max_minutiae=60)
    assert len(card) <= 60
    first = rec.views[0].minutiae[0]
    assert (
        Minutia(
            round(first.x * 100 / 197),
            round(first.y * 100 / 197),
            first.kind,
            round(first.angle / 4) % 64,
        )
        in card
    )
    # the ones dropped are the farthest from the centre of mass
    all_card = record.to_card(rec.views[0], rec, max_minutiae=255)
    cx = sum(m.x for m in all_card) / len(all_card)
    cy = sum(m.y for m in all_card) / len(all_card)
    kept_far = max((m.x - cx) ** 2 + (m.y - cy) ** 2 for m in card)
    dropped = [m for m in all_card if m not in card]
    assert all((m.x - cx) ** 2 + (m.y - cy) ** 2 >= kept_far for m in dropped)
    with pytest.raises(TemplateError, match="at least 90"):
        record.to_card(rec.views[0], rec, min_minutiae=90)
    ordered = record.to_card(rec.views[0], rec, order=record.MinutiaeOrder.XY)
    assert ordered == sorted(ordered, key=lambda m: (m.x, m.y))


def _encode_2011(
    rec: record.FingerRecord,
    *,
    size: int = 6,
    quality_blocks: int = 1,
    certified: bool = False,
    xres: int | None = None,
) -> bytes:
    """A 2011-edition record of ``rec``'s views, laid out by hand from the standard."""
    reps = b""
    for view in rec.views:
        head = bytes(9) + b"\x02" + (0x1234).to_bytes(2, "big") + (7).to_bytes(2, "big")
        head += bytes([quality_blocks]) + b"\x50\x00\x0f\x00\x01" * quality_blocks
        if certified:
            head += b"\x01" + b"\x00\x0f\x01"
        body = bytes([view.position, view.view])
        body += (xres or rec.x_resolution).to_bytes(2, "big") + rec.y_resolution.to_bytes(2, "big")
        body += (
            bytes([view.impression]) + rec.width.to_bytes(2, "big") + rec.height.to_bytes(2, "big")
        )
        body += bytes([(size << 4) | 1, len(view.minutiae)])
        for m in view.minutiae:
            body += ((m.kind << 14) | m.x).to_bytes(2, "big") + m.y.to_bytes(2, "big")
            body += bytes([m.angle]) + (bytes([m.quality]) if size == 6 else b"")
        body += len(view.extended).to_bytes(2, "big") + view.extended
        rep = head + body
        reps += (len(rep) + 4).to_bytes(4, "big") + rep
    total = 15 + len(reps)
    flags = b"\x01" if certified else b"\x00"
    return (
        b"FMR\x00030\x00"
        + total.to_bytes(4, "big")
        + len(rec.views).to_bytes(2, "big")
        + flags
        + reps
    )


@pytest.mark.parametrize(("size", "certified"), [(6, False), (5, False), (6, True)])
def test_a_2011_record_gives_the_same_card_template(size: int, certified: bool) -> None:
    rec = _record()
    parsed = record.decode_record(_encode_2011(rec, size=size, certified=certified))
    assert len(parsed.views) == 1
    view = parsed.views[0]
    assert [(m.kind, m.x, m.y, m.angle) for m in view.minutiae] == [
        (m.kind, m.x, m.y, m.angle) for m in rec.views[0].minutiae
    ]
    assert record.to_card(view, parsed) == record.to_card(rec.views[0], rec)


def test_a_2011_representation_keeps_its_own_resolution() -> None:
    rec = _record()
    parsed = record.decode_record(_encode_2011(rec, xres=394))  # 1000 ppi across
    card = record.to_card(parsed.views[0], parsed)
    first = rec.views[0].minutiae[0]
    assert card[0].x == round(first.x * 100 / 394)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:-1], "record length"),
        (lambda d: d[:8] + (len(d) - 1).to_bytes(4, "big") + d[12:-1], "does not fit"),
        (lambda d: d[:13] + b"\x00\x00" + d[15:], "number of finger representations"),
        (lambda d: d[:14] + b"\x07" + d[15:], "certification flag"),
        (lambda d: d[:15] + (9999).to_bytes(4, "big") + d[19:], "does not fit"),
    ],
)
def test_a_malformed_2011_record_names_the_field(mutate: object, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        record.decode_record(mutate(_encode_2011(_record())))  # type: ignore[operator]


@given(st.binary(max_size=300))
def test_the_2011_parser_only_raises_typed_errors(data: bytes) -> None:
    with contextlib.suppress(TemplateError):
        record.decode_record(b"FMR\x00030\x00" + data)


def _encode_ansi_378(rec: record.FingerRecord, *, long_length: bool = False) -> bytes:
    """An ANSI/INCITS 378-2004 record of ``rec`` (angles in 2-degree units), by hand."""
    body = b""
    for view in rec.views:
        body += bytes([view.position, (view.view << 4) | view.impression, view.quality])
        body += bytes([len(view.minutiae)])
        for m in view.minutiae:
            body += ((m.kind << 14) | m.x).to_bytes(2, "big") + m.y.to_bytes(2, "big")
            body += bytes([round(m.angle * 360 / 256 / 2) % 180, m.quality])
        body += len(view.extended).to_bytes(2, "big") + view.extended
    rest = (0x0033_0001).to_bytes(4, "big")  # CBEFF product identifier
    rest += (0).to_bytes(2, "big") + rec.width.to_bytes(2, "big") + rec.height.to_bytes(2, "big")
    rest += rec.x_resolution.to_bytes(2, "big") + rec.y_resolution.to_bytes(2, "big")
    rest += bytes([len(rec.views), 0]) + body
    if long_length:
        total = 8 + 6 + len(rest)
        return b"FMR\x00 20\x00" + b"\x00\x00" + total.to_bytes(4, "big") + rest
    total = 8 + 2 + len(rest)
    return b"FMR\x00 20\x00" + total.to_bytes(2, "big") + rest


@pytest.mark.parametrize("long_length", [False, True])
def test_an_ansi_378_record_is_read_with_its_own_header_and_angles(long_length: bool) -> None:
    rec = _record()
    parsed = record.decode_record(_encode_ansi_378(rec, long_length=long_length))
    assert (parsed.width, parsed.height, parsed.x_resolution) == (400, 500, 197)
    iso = record.to_card(rec.views[0], rec)
    ansi = record.to_card(parsed.views[0], parsed)
    assert [(m.x, m.y, m.kind) for m in ansi] == [(m.x, m.y, m.kind) for m in iso]
    # 2-degree units against 360/256: the card's 360/64 steps agree within one
    assert all(
        min((a.angle - b.angle) % 64, (b.angle - a.angle) % 64) <= 1
        for a, b in zip(ansi, iso, strict=True)
    )
