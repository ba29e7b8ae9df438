"""A gateway's name looked up through the site's resolvers: a minimal DNS stub (RFC 1035).

Why not the C library's resolver: it asks whatever /etc/resolv.conf names,
while the box's firewall lets DNS out only to the site profile's resolvers
(or the DHCP lease's), and the answer must go into the firewall's gateway
set before charon sends its first packet. So the box asks those resolvers
itself, for A (AAAA when there is no A), over UDP (TCP when the answer was
truncated), and uses what the first resolver that answers says.

What DNS cannot do here, and need not: the answer is not authenticated, but
the gateway is pinned by its IKE identity and CA (docs/tunnel.md), so a
forged answer sends the box to a peer it refuses; the outer network could
drop its packets anyway.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from sdbox.errors import SdboxError

DNS_PORT = 53
_HEADER = struct.Struct("!HHHHHH")
_FLAG_QR = 0x8000
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_CLASS_IN = 1
_MAX_UDP = 4096


class RecordType(enum.IntEnum):
    """The record types the box asks for (and follows)."""

    A = 1
    CNAME = 5
    AAAA = 28


class Rcode(enum.IntEnum):
    """Response codes a resolver may answer with (the ones worth naming)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    REFUSED = 5


class DnsError(SdboxError):
    """A name could not be resolved; the message says through which resolvers and why."""


@dataclass(frozen=True)
class Answer:
    """One resolver's answer for one name and type."""

    addresses: tuple[str, ...]
    rcode: int


def encode_name(name: str) -> bytes:
    """``name`` in wire form (labels, then the root)."""
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna")
        if not 0 < len(raw) < 64:
            raise DnsError(f"{name!r} is not a valid DNS name")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def query(name: str, rtype: RecordType, ident: int) -> bytes:
    """A recursive query for ``name``/``rtype`` with message id ``ident``."""
    return _HEADER.pack(ident, _FLAG_RD, 1, 0, 0, 0) + encode_name(name) + struct.pack(
        "!HH", rtype, _CLASS_IN
    )


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (compression followed) and the offset after it in place."""
    labels: list[str] = []
    end: int | None = None
    for _ in range(128):  # a pointer loop ends here
        if offset >= len(message):
            raise DnsError("truncated name in the answer")
        length = message[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(message):
                raise DnsError("truncated name in the answer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), end if end is not None else offset + 1
        labels.append(message[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise DnsError("a name in the answer points in a loop")


def parse_answer(message: bytes, name: str, rtype: RecordType, ident: int) -> Answer:
    """The addresses ``message`` gives for ``name`` (following CNAMEs); DnsError if it is not ours."""
    if len(message) < _HEADER.size:
        raise DnsError("the answer is shorter than a DNS header")
    got_id, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(message)
    if got_id != ident or not flags & _FLAG_QR:
        raise DnsError("the answer is not for this query")
    offset = _HEADER.size
    wanted = name.rstrip(".").lower()
    for _ in range(qdcount):
        asked, offset = _read_name(message, offset)
        if asked != wanted:
            raise DnsError("the answer is for another name")
        offset += 4
    owners = {wanted}
    addresses: list[str] = []
    for _ in range(ancount):
        owner, offset = _read_name(message, offset)
        if offset + 10 > len(message):
            raise DnsError("truncated record in the answer")
        kind, klass, _ttl, length = struct.unpack_from("!HHIH", message, offset)
        offset += 10
        data = message[offset : offset + length]
        if len(data) != length:
            raise DnsError("truncated record in the answer")
        if klass == _CLASS_IN and owner in owners:
            if kind == RecordType.CNAME:
                owners.add(_read_name(message, offset)[0])
            elif kind == rtype == RecordType.A and length == 4:
                addresses.append(str(ipaddress.IPv4Address(data)))
            elif kind == rtype == RecordType.AAAA and length == 16:
                addresses.append(str(ipaddress.IPv6Address(data)))
        offset += length
    return Answer(tuple(addresses), flags & 0x000F)


def _exchange(resolver: str, message: bytes, timeout_s: float) -> bytes:
    family = socket.AF_INET6 if ":" in resolver else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeout_s)
        udp.connect((resolver, DNS_PORT))  # connected: answers from elsewhere are not read
        udp.send(message)
        answer = udp.recv(_MAX_UDP)
    if len(answer) >= _HEADER.size and _HEADER.unpack_from(answer)[1] & _FLAG_TC:
        with socket.create_connection((resolver, DNS_PORT), timeout=timeout_s) as tcp:
            tcp.sendall(struct.pack("!H", len(message)) + message)
            size = struct.unpack("!H", _recv_exactly(tcp, 2))[0]
            answer = _recv_exactly(tcp, size)
    return answer


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise DnsError("the resolver closed the connection mid-answer")
        data += chunk
    return data


def _ask(resolver: str, name: str, rtype: RecordType, timeout_s: float) -> list[str]:
    ident = secrets.randbelow(0x10000)
    answer = parse_answer(
        _exchange(resolver, query(name, rtype, ident), timeout_s), name, rtype, ident
    )
    if answer.rcode == Rcode.NXDOMAIN:
        raise DnsError(f"{resolver} says {name} does not exist")
    if answer.rcode != Rcode.NOERROR:
        known = answer.rcode in {r.value for r in Rcode}
        raise DnsError(f"{resolver} answered {Rcode(answer.rcode).name if known else answer.rcode}")
    return list(answer.addresses)


def resolve(name: str, resolvers: Sequence[str], *, timeout_s: float = 2.0) -> list[str]:
    """``name``'s IPv4 addresses (IPv6 when it has none), from the first resolver that answers."""
    if not resolvers:
        raise DnsError(f"cannot resolve {name}: the site profile names no resolver")
    problems: list[str] = []
    for resolver in resolvers:
        try:
            found = _ask(resolver, name, RecordType.A, timeout_s) or _ask(
                resolver, name, RecordType.AAAA, timeout_s
            )
        except DnsError as exc:
            problems.append(exc.message)
            continue
        except OSError as exc:  # timeout, unreachable, refused by the firewall
            problems.append(f"{resolver} did not answer ({exc.strerror or exc})")
            continue
        if found:
            return found
        problems.append(f"{resolver} has no address for {name}")
    raise DnsError(f"cannot resolve {name}: " + "; ".join(problems))
