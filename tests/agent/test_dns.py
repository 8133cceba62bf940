"""Tests for the DNS decoder: dnspython is the oracle, real captures are checked against tshark."""

from __future__ import annotations

import csv
import ipaddress
import struct
from collections import Counter, defaultdict
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.exceptions import DecodeError, TruncatedError
from agent.extract.dns import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    TYPE_HTTPS,
    TYPE_SVCB,
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    parse_dns,
    split_tcp_dns,
)
from agent.extract.dnscache import IpNameCache

# The shared test data sits beside the repository checkout (…/main and …/shared).
PCAPS = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "pcaps"
ECH_B64 = "AARhYmNk"  # smallest ECHConfigList dnspython accepts: length 4, then 4 bytes

# --------------------------------------------------------------------------- factories


def make_response(
    qname: str,
    qtype: str = "A",
    answers: tuple[tuple[str, int, str, str], ...] = (),
    *,
    use_edns: bool = False,
    rcode: int = 0,
) -> bytes:
    """Wire bytes of a response built by dnspython; answers are (owner, ttl, type, rdata text)."""
    query = dns.message.make_query(qname, qtype, use_edns=0 if use_edns else None)
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.Rcode(rcode))
    for owner, ttl, rtype, text in answers:
        response.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    return bytes(response.to_wire(want_shuffle=False))


def oracle_name(name: dns.name.Name) -> str:
    if name == dns.name.root:
        return ""
    return str(name.to_text(omit_final_dot=True)).lower()


def oracle_record(owner: dns.name.Name, ttl: int, rd: Any) -> DnsRecord:
    name = oracle_name(owner)
    rtype = int(rd.rdtype)
    if rtype in (TYPE_A, TYPE_AAAA):
        return DnsRecord(name, rtype, ttl, str(ipaddress.ip_address(rd.address)))
    if rtype in (dns.rdatatype.CNAME, dns.rdatatype.PTR, dns.rdatatype.NS, dns.rdatatype.DNAME):
        return DnsRecord(name, rtype, ttl, oracle_name(rd.target))
    if rtype in (TYPE_SVCB, TYPE_HTTPS):
        target = oracle_name(rd.target)
        value = target or (name if rd.priority else None)
        hints: list[str] = []
        for key in (4, 6):
            if key in rd.params:
                hints.extend(str(ipaddress.ip_address(a)) for a in rd.params[key].addresses)
        return DnsRecord(name, rtype, ttl, value, tuple(hints), 5 in rd.params)
    return DnsRecord(name, rtype, ttl, None)


def oracle_parse(wire: bytes) -> DnsMessage:
    msg = dns.message.from_wire(wire)
    return DnsMessage(
        id=msg.id,
        is_response=bool(msg.flags & 0x8000),
        opcode=msg.opcode(),
        rcode=msg.flags & 0xF,
        questions=tuple(DnsQuestion(oracle_name(q.name), int(q.rdtype)) for q in msg.question),
        answers=tuple(oracle_record(rs.name, rs.ttl, rd) for rs in msg.answer for rd in rs),
    )


# --------------------------------------------------------------------------- unit tests


def test_simple_a_response_decodes_header_question_and_answer() -> None:
    wire = make_response("www.example.com", answers=(("www.example.com.", 300, "A", "192.0.2.7"),))
    msg = parse_dns(wire)
    assert msg.id == int.from_bytes(wire[:2], "big")
    assert (msg.is_response, msg.opcode, msg.rcode) == (True, 0, 0)
    assert msg.questions == (DnsQuestion("www.example.com", TYPE_A),)
    assert msg.answers == (DnsRecord("www.example.com", TYPE_A, 300, "192.0.2.7"),)


def test_query_is_not_a_response() -> None:
    wire = dns.message.make_query("api.openai.com", "AAAA").to_wire()
    msg = parse_dns(wire)
    assert not msg.is_response
    assert msg.questions == (DnsQuestion("api.openai.com", TYPE_AAAA),)
    assert msg.answers == ()


def test_mixed_case_0x20_names_are_lower_cased() -> None:
    wire = make_response(
        "Us.V27.DiStRiBuTeD.NET",
        answers=(("uS.v27.distributed.net.", 60, "CNAME", "X.Example.ORG."),),
    )
    msg = parse_dns(wire)
    assert msg.questions[0].name == "us.v27.distributed.net"
    assert msg.answers[0].name == "us.v27.distributed.net"
    assert msg.answers[0].value == "x.example.org"


def test_cname_chain_with_compression_and_aaaa() -> None:
    wire = make_response(
        "chat.example.com",
        "AAAA",
        (
            ("chat.example.com.", 30, "CNAME", "edge.example.com."),
            ("edge.example.com.", 40, "CNAME", "a1.cdn.example.net."),
            ("a1.cdn.example.net.", 50, "AAAA", "2001:DB8:0:0:0:0:0:1"),
        ),
    )
    # dnspython compresses: the owners after the first point back into earlier names.
    assert wire.count(b"\xc0") >= 3
    assert parse_dns(wire).answers == (
        DnsRecord("chat.example.com", TYPE_CNAME, 30, "edge.example.com"),
        DnsRecord("edge.example.com", TYPE_CNAME, 40, "a1.cdn.example.net"),
        DnsRecord("a1.cdn.example.net", TYPE_AAAA, 50, "2001:db8::1"),
    )


def test_https_record_with_hints_and_ech_and_dot_target() -> None:
    text = f"1 . alpn=h2,h3 ipv4hint=192.0.2.1,192.0.2.2 ech={ECH_B64} ipv6hint=2001:db8::5"
    wire = make_response(
        "example.com", "HTTPS", (("example.com.", 300, "HTTPS", text),), use_edns=True
    )
    (record,) = parse_dns(wire).answers
    assert record == DnsRecord(
        "example.com",
        TYPE_HTTPS,
        300,
        "example.com",
        ("192.0.2.1", "192.0.2.2", "2001:db8::5"),
        True,
    )


def test_svcb_with_named_target_and_no_ech() -> None:
    wire = make_response(
        "_dns.resolver.arpa",
        "SVCB",
        (("_dns.resolver.arpa.", 60, "SVCB", "1 DoH.Example.net. alpn=h2"),),
    )
    (record,) = parse_dns(wire).answers
    assert record == DnsRecord("_dns.resolver.arpa", TYPE_SVCB, 60, "doh.example.net", (), False)


def test_https_alias_mode_dot_target_means_no_service() -> None:
    wire = make_response("example.com", "HTTPS", (("example.com.", 60, "HTTPS", "0 ."),))
    assert parse_dns(wire).answers[0].value is None


def test_other_types_have_no_value_and_nxdomain_rcode_survives() -> None:
    wire = make_response(
        "example.com",
        "MX",
        (
            ("example.com.", 60, "MX", "10 mail.example.com."),
            ("example.com.", 60, "TXT", '"v=spf1"'),
        ),
        rcode=dns.rcode.NXDOMAIN,
    )
    msg = parse_dns(wire)
    assert msg.rcode == 3
    assert [(r.rtype, r.value) for r in msg.answers] == [(15, None), (16, None)]


def test_ptr_ns_dname_carry_their_target() -> None:
    wire = make_response(
        "4.3.2.1.in-addr.arpa",
        "PTR",
        (
            ("4.3.2.1.in-addr.arpa.", 60, "PTR", "host.example."),
            ("example.", 60, "NS", "ns1.example."),
            ("old.example.", 60, "DNAME", "new.example."),
        ),
    )
    assert [r.value for r in parse_dns(wire).answers] == [
        "host.example",
        "ns1.example",
        "new.example",
    ]


def test_root_name_is_empty_string() -> None:
    msg = parse_dns(dns.message.make_query(".", "NS").to_wire())
    assert msg.questions == (DnsQuestion("", 2),)


def test_edns_and_authority_records_are_not_needed() -> None:
    query = dns.message.make_query("example.com", "A", use_edns=0, payload=1232)
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("example.com.", 60, "IN", "A", "192.0.2.9"))
    response.authority.append(
        dns.rrset.from_text("example.com.", 60, "IN", "NS", "ns.example.com.")
    )
    response.additional.append(dns.rrset.from_text("ns.example.com.", 60, "IN", "A", "192.0.2.53"))
    msg = parse_dns(response.to_wire())
    assert msg.answers == (DnsRecord("example.com", TYPE_A, 60, "192.0.2.9"),)


def test_binary_and_dot_bytes_in_labels_are_escaped_like_dnspython() -> None:
    name = dns.name.Name([b"a.b", b"\x00Q\xff", b"x y", b"com", b""])
    wire = dns.message.make_query(name, "A").to_wire()
    parsed = parse_dns(wire).questions[0].name
    assert parsed == oracle_name(name) == "a\\.b.\\000q\\255.x\\032y.com"


def test_ttl_with_top_bit_set_is_zero() -> None:
    wire = bytearray(make_response("a.example", answers=(("a.example.", 60, "A", "192.0.2.1"),)))
    ttl_at = len(wire) - 4 - 2 - 4  # rdata, rdlength, ttl from the end
    wire[ttl_at : ttl_at + 4] = b"\x80\x00\x00\x01"
    assert parse_dns(bytes(wire)).answers[0].ttl == 0


# --------------------------------------------------------------------------- malformed input

HEADER_1Q = struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0)
QUESTION = b"\x07example\x03com\x00\x00\x01\x00\x01"


def one_answer(rtype: int, rdata: bytes, rdlength: int | None = None) -> bytes:
    """A response to QUESTION with one answer owned by the question name (a pointer to it)."""
    header = struct.pack("!HHHHHH", 1, 0x8180, 1, 1, 0, 0)
    length = len(rdata) if rdlength is None else rdlength
    return header + QUESTION + struct.pack("!HHHIH", 0xC00C, rtype, 1, 60, length) + rdata


@pytest.mark.parametrize(
    ("wire", "error", "reason"),
    [
        pytest.param(b"", TruncatedError, "header", id="empty"),
        pytest.param(HEADER_1Q[:11], TruncatedError, "header", id="short-header"),
        pytest.param(HEADER_1Q, TruncatedError, "runs past", id="question-missing"),
        pytest.param(HEADER_1Q + QUESTION[:-1], TruncatedError, "question ends", id="question-cut"),
        pytest.param(HEADER_1Q + b"\x07exam", TruncatedError, "label runs past", id="label-cut"),
        pytest.param(HEADER_1Q + b"\xc0", TruncatedError, "cut in half", id="pointer-cut"),
        pytest.param(
            HEADER_1Q + b"\xc0\x0c\x00\x01\x00\x01", DecodeError, "backwards", id="pointer-to-self"
        ),
        pytest.param(
            HEADER_1Q + b"\xc0\x20\x00\x01\x00\x01", DecodeError, "backwards", id="pointer-forward"
        ),
        pytest.param(
            HEADER_1Q + b"\x41abc\x00\x00\x01\x00\x01",
            DecodeError,
            "label type 0x40",
            id="label-type-0x40",
        ),
        pytest.param(
            HEADER_1Q + b"\x81abc\x00\x00\x01\x00\x01",
            DecodeError,
            "label type 0x80",
            id="label-type-0x80",
        ),
        pytest.param(
            HEADER_1Q + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
            DecodeError,
            "longer than 255",
            id="name-over-255",
        ),
        pytest.param(one_answer(1, b"abcde"), DecodeError, "A record with 5", id="a-5-bytes"),
        pytest.param(one_answer(28, b"abcd"), DecodeError, "AAAA record with 4", id="aaaa-4-bytes"),
        pytest.param(
            one_answer(1, b"ab", rdlength=4), TruncatedError, "record data ends", id="rdata-cut"
        ),
        pytest.param(
            one_answer(1, b"")[:-4], TruncatedError, "record header ends", id="rr-header-cut"
        ),
        pytest.param(
            one_answer(5, b"\xc0\x0cX"), DecodeError, "does not fill", id="cname-trailing-junk"
        ),
        pytest.param(
            one_answer(5, b"\x01a\x00", rdlength=1),
            DecodeError,
            "does not fill",
            id="cname-overruns",
        ),
        pytest.param(one_answer(65, b"\x00\x01"), DecodeError, "too short", id="https-too-short"),
        pytest.param(
            one_answer(65, b"\x00\x01\x00" + b"\x00\x04\x00\x03abc"),
            DecodeError,
            "ipv4hint of 3",
            id="ipv4hint-3",
        ),
        pytest.param(
            one_answer(65, b"\x00\x01\x00" + b"\x00\x06\x00\x0f" + bytes(15)),
            DecodeError,
            "ipv6hint of 15",
            id="ipv6hint-15",
        ),
        pytest.param(
            one_answer(65, b"\x00\x01\x00" + b"\x00\x06\x00\x04"),
            DecodeError,
            "parameter overruns",
            id="svc-param-overruns",
        ),
        pytest.param(
            one_answer(65, b"\x00\x01\x00" + b"\x00\x06"),
            DecodeError,
            "parameter header overruns",
            id="svc-param-header-cut",
        ),
    ],
)
def test_malformed_messages_raise_decode_errors(
    wire: bytes, error: type[DecodeError], reason: str
) -> None:
    with pytest.raises(DecodeError, match=reason) as caught:
        parse_dns(wire)
    # TruncatedError tells a TCP caller to wait for more bytes, so the two must not be confused.
    assert caught.type is error


def pointer_chain_message(depth: int) -> bytes:
    """A response whose 2nd answer owner is ``depth`` pointers deep, each strictly backwards.

    The chain hides in the 1st answer's TXT data: a root label, then pointers that each point at
    the one before, so only the jump cap can stop a decoder.
    """
    rdata_at = 12 + 1 + 10
    chain = bytearray(b"\x00")
    for i in range(depth):
        chain += struct.pack("!H", 0xC000 | (rdata_at + (2 * i - 1 if i else 0)))
    last = rdata_at + len(chain) - 2
    header = struct.pack("!HHHHHH", 1, 0x8180, 0, 2, 0, 0)
    first = b"\x00" + struct.pack("!HHIH", 16, 1, 60, len(chain)) + chain
    second = struct.pack("!HHHIH", 0xC000 | last, 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
    return header + first + bytes(second)


def test_pointer_chain_deeper_than_any_real_name_is_rejected() -> None:
    assert parse_dns(pointer_chain_message(100)).answers[1] == DnsRecord(
        "", TYPE_A, 60, "192.0.2.1"
    )
    with pytest.raises(DecodeError, match="too many"):
        parse_dns(pointer_chain_message(200))


def test_split_tcp_dns_returns_complete_messages_and_bytes_used() -> None:
    one = make_response("a.example")
    two = make_response("b.example")
    stream = struct.pack("!H", len(one)) + one + struct.pack("!H", len(two)) + two
    assert split_tcp_dns(stream + b"\x00\x40abc") == ([one, two], len(stream))
    assert split_tcp_dns(stream[:5]) == ([], 0)
    assert split_tcp_dns(b"") == ([], 0)
    assert split_tcp_dns(b"\x00") == ([], 0)
    assert split_tcp_dns(b"\x00\x00") == ([b""], 2)
    assert split_tcp_dns(bytearray(stream)) == ([one, two], len(stream))


def test_bytearray_and_memoryview_decode_like_bytes() -> None:
    wire = make_response("v6.example", "AAAA", (("v6.example.", 60, "AAAA", "2001:db8::1"),))
    assert parse_dns(bytearray(wire)) == parse_dns(memoryview(wire)) == parse_dns(wire)


# --------------------------------------------------------------------------- hypothesis

LDH = ascii_letters + digits + "-_"
labels = st.one_of(
    st.text(alphabet=LDH, min_size=1, max_size=12).map(str.encode),
    st.binary(min_size=1, max_size=6),
)
names = st.lists(labels, min_size=0, max_size=4).map(lambda ls: dns.name.Name([*ls, b""]))
host_names = st.lists(labels, min_size=1, max_size=4).map(lambda ls: dns.name.Name([*ls, b""]))
ttls = st.integers(min_value=0, max_value=0x7FFFFFFF)


@st.composite
def svcb_text(draw: st.DrawFn) -> str:
    priority = draw(st.integers(0, 3))
    target = draw(st.one_of(st.just(dns.name.root), host_names)).to_text()
    if priority == 0:
        return f"0 {target}"
    params = []
    v4 = draw(st.lists(st.ip_addresses(v=4), max_size=3, unique=True))
    if v4:
        params.append("ipv4hint=" + ",".join(map(str, v4)))
    if draw(st.booleans()):
        params.append(f"ech={ECH_B64}")
    v6 = draw(st.lists(st.ip_addresses(v=6), max_size=2, unique=True))
    if v6:
        params.append("ipv6hint=" + ",".join(map(str, v6)))
    return " ".join([str(priority), target, *params])


def rdata_texts(rtype: str) -> st.SearchStrategy[list[str]]:
    one_name = host_names.map(lambda n: [n.to_text()])
    return {
        "A": st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=3, unique=True),
        "AAAA": st.lists(st.ip_addresses(v=6).map(str), min_size=1, max_size=3, unique=True),
        "CNAME": one_name,
        "PTR": one_name,
        "NS": one_name,
        "DNAME": one_name,
        "TXT": st.just(['"hello world"']),
        "MX": host_names.map(lambda n: [f"10 {n.to_text()}"]),
        "HTTPS": svcb_text().map(lambda t: [t]),
        "SVCB": svcb_text().map(lambda t: [t]),
    }[rtype]


RTYPES = ["A", "AAAA", "CNAME", "PTR", "NS", "DNAME", "TXT", "MX", "HTTPS", "SVCB"]


@st.composite
def dns_messages(draw: st.DrawFn) -> bytes:
    qname = draw(names)
    qtype = draw(st.sampled_from(RTYPES))
    edns = draw(st.sampled_from([None, 0]))
    query = dns.message.make_query(qname, qtype, use_edns=edns, id=draw(st.integers(0, 0xFFFF)))
    if not draw(st.booleans()):
        return bytes(query.to_wire(want_shuffle=False))
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.Rcode(draw(st.integers(0, 5))))
    seen: set[tuple[str, str]] = set()
    for _ in range(draw(st.integers(0, 5))):
        owner = draw(st.one_of(st.just(qname), names))
        rtype = draw(st.sampled_from(RTYPES))
        # dnspython merges records that share owner and type when it parses; keep them apart.
        key = (owner.to_text().lower(), rtype)
        if key in seen:
            continue
        seen.add(key)
        rrset = dns.rrset.from_text_list(owner, draw(ttls), "IN", rtype, draw(rdata_texts(rtype)))
        response.answer.append(rrset)
    return bytes(response.to_wire(want_shuffle=False))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(dns_messages())
def test_agrees_with_dnspython_on_valid_messages(wire: bytes) -> None:
    assert parse_dns(wire) == oracle_parse(wire)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    try:
        msg = parse_dns(data)
    except DecodeError:
        return
    assert len(msg.questions) == int.from_bytes(data[4:6], "big")


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(dns_messages(), st.data())
def test_mutated_messages_only_raise_decode_errors(wire: bytes, data: st.DataObject) -> None:
    mutated = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(mutated) - 1, 0)))
        if op == "flip" and mutated:
            mutated[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del mutated[at:]
        elif op == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif mutated:
            del mutated[at]
    try:
        msg = parse_dns(bytes(mutated))
    except DecodeError:
        return
    assert len(msg.answers) == int.from_bytes(mutated[6:8], "big")


# --------------------------------------------------------------------------- real captures


def _ip_payloads(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside one frame, for the link types the DNS captures use."""
    if linktype == 101:  # raw IP
        return frame
    if linktype != 1:  # Ethernet
        return None
    ethertype, at = struct.unpack_from("!H", frame, 12)[0], 14
    while ethertype in (0x8100, 0x88A8):
        ethertype, at = struct.unpack_from("!H", frame, at + 2)[0], at + 4
    return frame[at:] if ethertype in (0x0800, 0x86DD) else None


class _Defragmenter:
    """Just enough IPv4/IPv6 reassembly for test captures: in-memory, no timeouts."""

    def __init__(self) -> None:
        self._parts: dict[tuple[object, ...], dict[int, bytes]] = defaultdict(dict)
        self._total: dict[tuple[object, ...], int] = {}

    def add(self, key: tuple[object, ...], offset: int, more: bool, data: bytes) -> bytes | None:
        self._parts[key][offset] = data
        if not more:
            self._total[key] = offset + len(data)
        if key not in self._total:
            return None
        joined, expected = b"", 0
        for off in sorted(self._parts[key]):
            if off != expected:
                return None
            joined += self._parts[key][off]
            expected = off + len(self._parts[key][off])
        if expected != self._total[key]:
            return None
        del self._parts[key], self._total[key]
        return joined


def _transport(
    packet: bytes, defrag: _Defragmenter
) -> tuple[int, tuple[bytes, bytes], bytes] | None:
    """(protocol, (src, dst), transport bytes) of one IP packet, after reassembly."""
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0xF) * 4
        total, ident, frag = struct.unpack_from("!HHH", packet, 2)
        proto, src, dst = packet[9], packet[12:16], packet[16:20]
        body: bytes | None = packet[ihl:total]
        if frag & 0x3FFF:
            body = defrag.add(
                (src, dst, ident, proto),
                (frag & 0x1FFF) * 8,
                bool(frag & 0x2000),
                packet[ihl:total],
            )
        return None if body is None else (proto, (src, dst), body)
    if version == 6:
        src, dst = packet[8:24], packet[24:40]
        proto, at = packet[6], 40
        end = 40 + struct.unpack_from("!H", packet, 4)[0]
        while proto in (0, 43, 60, 44):
            if proto == 44:
                offset_flags, ident = struct.unpack_from("!HI", packet, at + 2)
                proto = packet[at]
                whole = defrag.add(
                    (src, dst, ident),
                    offset_flags & 0xFFF8,
                    bool(offset_flags & 1),
                    packet[at + 8 : end],
                )
                if whole is None:
                    return None
                return proto, (src, dst), whole
            proto, at = packet[at], at + (packet[at + 1] + 1) * 8
        return proto, (src, dst), packet[at:end]
    return None


def dns_payloads(path: Path) -> list[bytes]:
    """Every DNS message in a capture: UDP 53/5353 datagrams, then TCP 53 streams in seq order."""
    from scapy.utils import RawPcapReader

    messages: list[bytes] = []
    streams: dict[tuple[object, ...], dict[int, bytes]] = defaultdict(dict)
    defrag = _Defragmenter()
    reader = RawPcapReader(str(path))
    try:
        for frame, _meta in reader:
            packet = _ip_payloads(reader.linktype, frame)
            got = _transport(packet, defrag) if packet else None
            if got is None:
                continue
            proto, addrs, body = got
            sport, dport = struct.unpack_from("!HH", body)
            if proto == 17 and {sport, dport} & {53, 5353}:
                messages.append(body[8 : struct.unpack_from("!H", body, 4)[0]])
            elif proto == 6 and 53 in (sport, dport):
                seq = struct.unpack_from("!I", body, 4)[0]
                payload = body[(body[12] >> 4) * 4 :]
                if payload:
                    streams[(addrs, sport, dport)][seq] = payload
    finally:
        reader.close()
    for segments in streams.values():
        stream, next_seq = b"", min(segments)
        for seq in sorted(segments):
            if seq > next_seq:
                break  # a gap: keep what is contiguous
            stream += segments[seq][next_seq - seq :]
            next_seq = max(next_seq, seq + len(segments[seq]))
        messages.extend(split_tcp_dns(stream)[0])
    return messages


def tshark_expected() -> dict[str, dict[str, Counter[str]]]:
    expected: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    with (PCAPS / "tshark_expected.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["kind"].startswith("dns_"):
                expected[row["file"]][row["kind"]][row["name"].lower()] += int(row["count"])
    return expected


EXPECTED = tshark_expected()
# ndpi__malformed_dns: its 4 responses use a forward compression pointer (dnspython rejects them
# too); tshark shows a broken CNAME target "<Name" from them, we reject the messages instead.
MALFORMED_RESPONSES = {"ndpi__malformed_dns.pcap": 4}


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_capture_names_match_tshark(filename: str) -> None:
    queries: Counter[str] = Counter()
    cnames: Counter[str] = Counter()
    rejected = 0
    for payload in dns_payloads(PCAPS / filename):
        try:
            msg = parse_dns(payload)
        except DecodeError:
            rejected += 1
            continue
        if msg.is_response:
            cnames.update({r.value for r in msg.answers if r.rtype == TYPE_CNAME and r.value})
        else:
            queries.update({q.name for q in msg.questions})
    expected = EXPECTED[filename]
    assert rejected == MALFORMED_RESPONSES.get(filename, 0)
    # tshark counts packets per name; one DNS message per packet here, so the counts agree too.
    assert queries == expected["dns_query"]
    want_cnames = expected["dns_cname_target"].copy()
    if filename in MALFORMED_RESPONSES:
        del want_cnames["<name"]
    assert cnames == want_cnames


@pytest.mark.parametrize("filename", ["ndpi__teams.pcap", "zeek__dns-two-responses.pcap"])
def test_capture_answers_feed_the_ip_cache_like_dnspython_resolves_chains(filename: str) -> None:
    cache = IpNameCache()
    responses = []
    for payload in dns_payloads(PCAPS / filename):
        msg = parse_dns(payload)
        if msg.is_response:
            cache.on_response(0.0, msg)
            responses.append(payload)
    checked = 0
    for payload in responses:
        oracle = dns.message.from_wire(payload)
        assert isinstance(oracle, dns.message.QueryMessage)
        if not oracle.question or oracle.question[0].rdtype not in (TYPE_A, TYPE_AAAA):
            continue
        chain = oracle.resolve_chaining()
        if chain.answer is None:
            continue
        for rd in chain.answer:
            names = cache.lookup(str(ipaddress.ip_address(rd.address)), 0.0)
            assert oracle_name(oracle.question[0].name) in names
            assert oracle_name(chain.canonical_name) in names
            checked += 1
    assert checked > 0
