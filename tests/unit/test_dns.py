"""The gateway-name stub resolver's wire format (sdbox.network.dns) and the gateway-set update.

The answers are written out byte by byte here (a resolver's reply to the
box's query), not produced by the module under test.
"""

from __future__ import annotations

import pytest

from sdbox.network import firewall
from sdbox.network.dns import DnsError, RecordType, parse_answer, query

# gw.example A, id 0x1234, recursion desired
QUERY = bytes.fromhex("1234 0100 0001 0000 0000 0000 02677707 6578616d706c65 00 0001 0001")
QUESTION = bytes.fromhex("02677707 6578616d706c65 00 0001 0001")


def test_the_query_is_a_recursive_a_question_for_the_name() -> None:
    assert query("gw.example.", RecordType.A, 0x1234) == QUERY


def _answer(ident: int, *records: bytes, rcode: int = 0) -> bytes:
    header = ident.to_bytes(2, "big") + (0x8180 | rcode).to_bytes(2, "big")
    header += (1).to_bytes(2, "big") + len(records).to_bytes(2, "big") + bytes(4)
    return header + QUESTION + b"".join(records)


# gw.example CNAME gw1.centre.example (labels, then a pointer to "example" at offset 15);
# gw1.centre.example A 198.51.100.7 (its owner a pointer to the CNAME's target at offset 40)
CNAME = bytes.fromhex("c00c 0005 0001 0000003c 000d 03677731 0663656e747265 c00f")
A_RECORD = bytes.fromhex("c028 0001 0001 0000003c 0004 c6336407")
UNRELATED_A = bytes.fromhex("c00f 0001 0001 0000003c 0004 0a000001")  # "example." A 10.0.0.1


def test_an_answer_follows_the_cname_and_ignores_records_of_other_names() -> None:
    answer = parse_answer(_answer(0x1234, CNAME, A_RECORD, UNRELATED_A), "gw.example",
                          RecordType.A, 0x1234)  # fmt: skip
    assert answer.addresses == ("198.51.100.7",)
    assert answer.rcode == 0


def test_nxdomain_is_reported_as_such() -> None:
    assert parse_answer(_answer(7, rcode=3), "gw.example", RecordType.A, 7).rcode == 3


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (_answer(0x9999, A_RECORD), "not for this query"),
        (QUERY, "not for this query"),  # a query echoed back is not an answer (QR clear)
        (_answer(0x1234, A_RECORD)[:-3], "truncated"),
        (_answer(0x1234)[:20], "truncated"),  # the question's name cut short
    ],
)
def test_answers_that_are_not_ours_or_broken_are_refused(message: bytes, problem: str) -> None:
    with pytest.raises(DnsError, match=problem):
        parse_answer(message, "gw.example", RecordType.A, 0x1234)


def test_a_name_that_points_at_itself_is_refused() -> None:
    looping = bytes.fromhex("c028 0001 0001 0000003c 0004 0a000001")  # owner -> offset 40 -> itself
    message = _answer(1, looping)[:40] + bytes.fromhex("c028") + _answer(1, looping)[42:]
    with pytest.raises(DnsError):
        parse_answer(message, "gw.example", RecordType.A, 1)


def test_an_answer_for_another_name_is_refused() -> None:
    with pytest.raises(DnsError, match="another name"):
        parse_answer(_answer(3, A_RECORD), "gw2.example", RecordType.A, 3)


def test_the_gateway_sets_are_replaced_in_one_script() -> None:
    assert firewall.gateway_sets(["192.0.2.3", "2001:db8::1", "192.0.2.1", "192.0.2.3"]) == (
        "flush set inet sdbox gateways4\n"
        "flush set inet sdbox gateways6\n"
        "add element inet sdbox gateways4 { 192.0.2.1, 192.0.2.3 }\n"
        "add element inet sdbox gateways6 { 2001:db8::1 }\n"
    )
