"""Hard cases for name extraction, each a pcap written to tmp_path and read by the real Scanner."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from scapy.layers.inet import IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    fragment6,
)
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap, wrpcapng

from agent.exceptions import CaptureError
from agent.extract.tls import parse_client_hello
from agent.pipeline import PipelineLimits
from agent.scan import Scanner, Sighting
from lantern.cli import main
from signatures.matcher import Matcher
from tests.factories import (
    CLIENT4,
    CLIENT6,
    LINKS,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    MSS,
    RESOLVER4,
    RESOLVER6,
    SERVER4,
    SERVER6,
    aioquic_datagrams,
    client_hello_message,
    crypto_stream,
    dns_exchange,
    dns_tcp_payload,
    ether,
    make_client_hello,
    make_dns_query,
    make_dns_response,
    make_packet,
    make_quic_initials,
    pcap_bytes,
    pcapng_bytes,
    quic_initial_payloads,
    split_payload,
    tcp_flow_packets,
    udp_packets,
    write_capture,
    write_pcap,
    write_pcapng,
)

T0 = 1_700_000_000.0
Seen = tuple[str, str, str | None]  # (proto, name, service id)


def scan(matcher: Matcher, path: Path, limits: PipelineLimits | None = None) -> list[Sighting]:
    return list(Scanner(matcher, limits).scan_file(path))


def seen(sightings: list[Sighting]) -> list[Seen]:
    return [
        (s.observation.proto, s.observation.name, s.match.service.id if s.match else None)
        for s in sightings
    ]


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["scan", *map(str, args)])


def json_lines(result: Result) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------- factory sanity


def test_pq_hello_puts_the_sni_in_the_second_segment() -> None:
    hello = make_client_hello("chatgpt.com")
    first, second = split_payload(hello, None)
    assert len(first) == MSS
    assert b"chatgpt.com" not in first
    assert b"chatgpt.com" in second


def test_quic_factory_initials_decrypt_to_the_aioquic_hello() -> None:
    hello = crypto_stream(aioquic_datagrams("gemini.google.com"))
    initials = make_quic_initials(hello=hello, split_at=[50, 400], packets=[[2, 0], [1]])
    payloads = quic_initial_payloads(initials)
    assert [pn for _, pn, _ in payloads] == [0, 1]
    assert crypto_stream(initials) == hello
    # the shuffle is real: the first frame of the first packet is not at offset 0
    assert payloads[0][2][:2] != b"\x06\x00"
    assert parse_client_hello(hello).sni == "gemini.google.com"


# --------------------------------------------------------------------------- TCP reassembly


def test_hello_split_with_sni_in_second_segment(matcher: Matcher, tmp_path: Path) -> None:
    pkts = tcp_flow_packets((CLIENT4, 50123), (SERVER4, 443), make_client_hello("chatgpt.com"))
    found = scan(matcher, write_capture(tmp_path / "split.pcap", pkts))
    assert [(o.src, o.sport, o.dst, o.dport) for o in (s.observation for s in found)] == [
        (CLIENT4, 50123, SERVER4, 443)
    ]
    assert seen(found) == [("tls", "chatgpt.com", "openai-chatgpt")]


def test_hello_segments_out_of_order(matcher: Matcher, tmp_path: Path) -> None:
    hello = make_client_hello("claude.ai")
    pkts = tcp_flow_packets(payload=hello, split_at=[400, 1000], order=[2, 0, 1])
    found = scan(matcher, write_capture(tmp_path / "ooo.pcap", pkts))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]


HELLO_LEN = len(make_client_hello("api.anthropic.com"))


@pytest.mark.parametrize(
    "order",
    [
        # in order, each retransmission reaching further than what is held
        [0, (300, 900), 1, (0, 1400), 2, (1100, HELLO_LEN)],
        # overlapping retransmissions held ahead of a hole, the first segment last
        [(700, 1300), 2, (900, HELLO_LEN), (650, 1000), 1, 0],
    ],
    ids=["in-order", "ahead-of-hole"],
)
def test_duplicated_and_overlapping_retransmissions(
    matcher: Matcher, tmp_path: Path, order: list[int | tuple[int, int]]
) -> None:
    hello = make_client_hello("api.anthropic.com")
    pkts = tcp_flow_packets(payload=hello, split_at=[600, 1200], order=order, duplicate=[0, 1, 2])
    found = scan(matcher, write_capture(tmp_path / "retx.pcap", pkts))
    assert seen(found) == [("tls", "api.anthropic.com", "anthropic-api")]


def test_hello_split_into_several_tls_records(matcher: Matcher, tmp_path: Path) -> None:
    hello = make_client_hello("api.mistral.ai", record_size=200)
    pkts = tcp_flow_packets(payload=hello, split_at=[7, 203, 700])
    found = scan(matcher, write_capture(tmp_path / "records.pcap", pkts))
    assert seen(found) == [("tls", "api.mistral.ai", "mistral-api")]


# DPI-evasion tools send a 1-byte first segment so that no single segment holds a record header
def test_first_segment_of_one_byte(matcher: Matcher, tmp_path: Path) -> None:
    pkts = tcp_flow_packets(payload=make_client_hello("claude.ai"), split_at=[1, 517])
    found = scan(matcher, write_capture(tmp_path / "one-byte.pcap", pkts))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]


def test_capture_starting_mid_flow_without_syn(matcher: Matcher, tmp_path: Path) -> None:
    pkts = tcp_flow_packets(payload=make_client_hello("huggingface.co"), syn=False)
    found = scan(matcher, write_capture(tmp_path / "nosyn.pcap", pkts))
    assert seen(found) == [("tls", "huggingface.co", "huggingface-hub")]


def test_second_segment_before_first_without_syn(matcher: Matcher, tmp_path: Path) -> None:
    pkts = tcp_flow_packets(payload=make_client_hello("chatgpt.com"), syn=False, order=[1, 0])
    found = scan(matcher, write_capture(tmp_path / "nosyn-ooo.pcap", pkts))
    assert seen(found) == [("tls", "chatgpt.com", "openai-chatgpt")]


def test_tcp_sequence_numbers_wrapping_past_zero(matcher: Matcher, tmp_path: Path) -> None:
    pkts = tcp_flow_packets(
        payload=make_client_hello("claude.ai"), isn=0xFFFFFFFF - 700, order=[1, 0]
    )
    found = scan(matcher, write_capture(tmp_path / "wrap.pcap", pkts))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]


def test_hello_in_a_tcp_fast_open_syn(matcher: Matcher, tmp_path: Path) -> None:
    # TCP Fast Open: the SYN itself carries the ClientHello (its data starts at ISN + 1)
    hello = make_client_hello("claude.ai", pq_key_share=False)
    syn, synack, ack = tcp_flow_packets(payload=b"")
    syn = syn / Raw(hello)
    found = scan(matcher, write_capture(tmp_path / "tfo.pcap", [syn, synack, ack]))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]


def test_fast_open_syn_on_a_reused_port(matcher: Matcher, tmp_path: Path) -> None:
    first = tcp_flow_packets(payload=make_client_hello("chatgpt.com"), start=T0)
    syn, synack, ack = tcp_flow_packets(payload=b"", isn=9_000_000, start=T0 + 5)
    syn = syn / Raw(make_client_hello("claude.ai", pq_key_share=False))
    found = scan(matcher, write_capture(tmp_path / "tfo-reuse.pcap", [*first, syn, synack, ack]))
    assert seen(found) == [
        ("tls", "chatgpt.com", "openai-chatgpt"),
        ("tls", "claude.ai", "anthropic-claude"),
    ]


def test_hello_in_ip_fragments(matcher: Matcher, tmp_path: Path) -> None:
    # a tunnel with a small MTU: the segment carrying the SNI is cut into IP fragments
    pkts = tcp_flow_packets(payload=make_client_hello("api.anthropic.com"))
    out: list[Packet] = []
    for p in pkts:
        if len(p[TCP].payload) > 0:
            frags = fragment(p, fragsize=576)
            for f in frags:
                f.time = p.time
            out += frags[::-1]
        else:
            out.append(p)
    assert len(out) > len(pkts)
    found = scan(matcher, write_capture(tmp_path / "tcpfrag.pcap", out))
    assert seen(found) == [("tls", "api.anthropic.com", "anthropic-api")]


def test_snaplen_truncated_capture(matcher: Matcher, tmp_path: Path) -> None:
    # tcpdump -s 128: queries fit, hellos and long answers do not; nothing false comes out
    pkts = [
        *dns_exchange("claude.ai", a=[SERVER4], cname=long_names(3, "example.net"), ts=T0),
        *tcp_flow_packets(payload=make_client_hello("chatgpt.com"), start=T0 + 1),
    ]
    frames = [(float(p.time), bytes(ether(p))) for p in pkts]
    path = write_pcap(tmp_path / "snap.pcap", frames, snaplen=128)
    scanner = Scanner(matcher)
    found = list(scanner.scan_file(path))
    assert seen(found) == [("dns", "claude.ai", "anthropic-claude")]
    assert scanner.stats.counters["dns.malformed"] == 1


def test_new_connection_on_a_reused_port(matcher: Matcher, tmp_path: Path) -> None:
    pkts = [
        *tcp_flow_packets(payload=make_client_hello("claude.ai"), start=T0),
        *tcp_flow_packets(payload=make_client_hello("chatgpt.com"), isn=5_000_000, start=T0 + 5),
    ]
    found = scan(matcher, write_capture(tmp_path / "reuse.pcap", pkts))
    assert seen(found) == [
        ("tls", "claude.ai", "anthropic-claude"),
        ("tls", "chatgpt.com", "openai-chatgpt"),
    ]


def test_lost_first_segment_times_out(matcher: Matcher, tmp_path: Path) -> None:
    # the capture dropped the hello's first segment: the second waits behind a hole, then goes
    flow = tcp_flow_packets(payload=make_client_hello("claude.ai"), start=T0)
    late = make_packet(
        CLIENT4, RESOLVER4, 53000, 53, make_dns_query("claude.ai"), proto="udp", ts=T0 + 20
    )
    scanner = Scanner(matcher)
    found = list(
        scanner.scan_file(write_capture(tmp_path / "lost.pcap", [*flow[:3], flow[4], late]))
    )
    assert seen(found) == [("dns", "claude.ai", "anthropic-claude")]
    assert scanner.stats.counters["tcp.hello_timeout"] == 1


def test_ethernet_padding_after_tiny_segments(matcher: Matcher, tmp_path: Path) -> None:
    # NICs pad frames to 60 bytes; the padding must not join the stream
    request = b"GET / HTTP/1.1\r\nHost: huggingface.co\r\n\r\n"
    pkts = tcp_flow_packets(payload=request, split_at=range(1, len(request)))
    frames = [(float(p.time), bytes(ether(p)).ljust(60, b"\xee")) for p in pkts]
    assert any(len(bytes(ether(p))) < 60 for p in pkts)
    found = scan(matcher, write_pcap(tmp_path / "padded.pcap", frames))
    assert seen(found) == [("http", "huggingface.co", "huggingface-hub")]


def test_ipv4_header_with_options(matcher: Matcher, tmp_path: Path) -> None:
    pkts = tcp_flow_packets(payload=make_client_hello("api.mistral.ai"))
    for p in pkts:
        p[IP].options = [IPOption_RR(routers=["192.0.2.1"])]
    assert all(IP(bytes(p)).ihl > 5 for p in pkts)
    found = scan(matcher, write_capture(tmp_path / "ipopts.pcap", pkts))
    assert seen(found) == [("tls", "api.mistral.ai", "mistral-api")]


# --------------------------------------------------------------------------- QUIC


def test_quic_aioquic_hello_over_two_initials_reordered(matcher: Matcher, tmp_path: Path) -> None:
    alpn = ["h3", *(f"x-filler-{i:03d}" for i in range(120))]
    datagrams = aioquic_datagrams("gemini.google.com", alpn=alpn)
    assert len(quic_initial_payloads(datagrams)) == 2  # the hello really spans two Initials
    pkts = udp_packets(datagrams[::-1], (CLIENT4, 51000), (SERVER4, 443))
    found = scan(matcher, write_capture(tmp_path / "quic2.pcap", pkts))
    assert seen(found) == [("quic", "gemini.google.com", "google-gemini")]
    assert (found[0].observation.sport, found[0].observation.dport) == (51000, 443)


def test_quic_crypto_frames_shuffled_across_packets(matcher: Matcher, tmp_path: Path) -> None:
    # three Initials, arriving last-first; inside each the CRYPTO frames are out of order too
    initials = make_quic_initials(
        "gemini.google.com", split_at=[20, 150, 260, 400], packets=[[3, 0], [4, 2], [1]]
    )
    pkts = udp_packets([initials[2], initials[0], initials[1]])
    found = scan(matcher, write_capture(tmp_path / "quic-shuffle.pcap", pkts))
    assert seen(found) == [("quic", "gemini.google.com", "google-gemini")]


def test_quic_v2_initial(matcher: Matcher, tmp_path: Path) -> None:
    initials = make_quic_initials("claude.ai", version=0x6B3343CF, split_at=[200], packets=[[1, 0]])
    found = scan(matcher, write_capture(tmp_path / "quic-v2.pcap", udp_packets(initials)))
    assert seen(found) == [("quic", "claude.ai", "anthropic-claude")]


def test_quic_post_quantum_hello_over_two_initials(matcher: Matcher, tmp_path: Path) -> None:
    # Chrome's QUIC hello with an X25519MLKEM768 share does not fit one Initial
    hello = client_hello_message("chatgpt.com", alpn=("h3",))
    assert len(hello) > 1200
    initials = make_quic_initials(hello=hello, split_at=[1100], packets=[[1], [0]])
    found = scan(matcher, write_capture(tmp_path / "quic-pq.pcap", udp_packets(initials)))
    assert seen(found) == [("quic", "chatgpt.com", "openai-chatgpt")]


def test_quic_ech_hello_after_dns_answer(matcher: Matcher, tmp_path: Path) -> None:
    hello = client_hello_message("cloudflare-ech.com", ech=True, alpn=("h3",), pq_key_share=False)
    pkts = [
        *dns_exchange("chatgpt.com", a=[SERVER4], ts=T0 - 1),
        *udp_packets(make_quic_initials(hello=hello), (CLIENT4, 51500), (SERVER4, 443)),
    ]
    found = scan(matcher, write_capture(tmp_path / "quic-ech.pcap", pkts))
    assert seen(found) == [
        ("dns", "chatgpt.com", "openai-chatgpt"),
        ("quic", "cloudflare-ech.com", None),
        ("ip", "chatgpt.com", "openai-chatgpt"),
    ]


def test_incomplete_quic_hellos_are_evicted_and_time_out(matcher: Matcher, tmp_path: Path) -> None:
    hello = client_hello_message("claude.ai", alpn=("h3",))
    halves = [
        udp_packets(
            make_quic_initials(hello=hello, split_at=[900], packets=[[0]], dcid=bytes([i]) * 8),
            (CLIENT4, 52000 + i),
            start=T0 + i * 0.01,
        )[0]
        for i in range(10)
    ]
    late = make_packet(
        CLIENT4, RESOLVER4, 53000, 53, make_dns_query("claude.ai"), proto="udp", ts=T0 + 30
    )
    scanner = Scanner(matcher, PipelineLimits(max_quic_flows=4))
    found = list(scanner.scan_file(write_capture(tmp_path / "quic-bounds.pcap", [*halves, late])))
    assert seen(found) == [("dns", "claude.ai", "anthropic-claude")]
    assert scanner.stats.counters["quic.flows_evicted"] == 6
    assert scanner.stats.counters["quic.hello_timeout"] == 4


# --------------------------------------------------------------------------- hidden names


def test_ech_hello_after_dns_answer_names_the_real_service(
    matcher: Matcher, tmp_path: Path
) -> None:
    pkts = [
        *dns_exchange("chatgpt.com", a=[SERVER4], ts=T0 - 1),
        *tcp_flow_packets(
            (CLIENT4, 50200), (SERVER4, 443), make_client_hello("cloudflare-ech.com", ech=True)
        ),
    ]
    path = write_capture(tmp_path / "ech.pcap", pkts)
    assert seen(scan(matcher, path)) == [
        ("dns", "chatgpt.com", "openai-chatgpt"),
        ("tls", "cloudflare-ech.com", None),
        ("ip", "chatgpt.com", "openai-chatgpt"),
    ]
    result = cli("--json", "--all", path)
    assert result.exit_code == 0, result.output
    rows = json_lines(result)
    assert [(r["proto"], r["name"], r["service"]) for r in rows] == [
        ("dns", "chatgpt.com", "openai-chatgpt"),
        ("tls", "cloudflare-ech.com", None),
        ("ip", "chatgpt.com", "openai-chatgpt"),
    ]
    assert (rows[2]["src"], rows[2]["sport"], rows[2]["dst"], rows[2]["dport"]) == (
        CLIENT4,
        50200,
        SERVER4,
        443,
    )


def test_ech_hello_to_an_https_record_address_hint(matcher: Matcher, tmp_path: Path) -> None:
    pkts = [
        *dns_exchange("chatgpt.com", "HTTPS", https_hints=[SERVER4], ech=True, ts=T0 - 1),
        *tcp_flow_packets(payload=make_client_hello("cloudflare-ech.com", ech=True)),
    ]
    found = scan(matcher, write_capture(tmp_path / "ech-https.pcap", pkts))
    assert seen(found) == [
        ("dns", "chatgpt.com", "openai-chatgpt"),
        ("tls", "cloudflare-ech.com", None),
        ("ip", "chatgpt.com", "openai-chatgpt"),
    ]


def test_hello_without_sni_after_dns_answer(matcher: Matcher, tmp_path: Path) -> None:
    pkts = [
        *dns_exchange("api.openai.com", a=[SERVER4], ts=T0 - 1),
        *tcp_flow_packets(payload=make_client_hello(None, pq_key_share=False)),
    ]
    found = scan(matcher, write_capture(tmp_path / "nosni.pcap", pkts))
    assert seen(found) == [
        ("dns", "api.openai.com", "openai-api"),
        ("ip", "api.openai.com", "openai-api"),
    ]


def test_hello_without_sni_and_no_dns_answer_names_nothing(
    matcher: Matcher, tmp_path: Path
) -> None:
    pkts = [
        *dns_exchange("api.openai.com", a=["198.51.100.99"], ts=T0 - 1),
        *tcp_flow_packets(payload=make_client_hello(None)),
    ]
    found = scan(matcher, write_capture(tmp_path / "nosni-other.pcap", pkts))
    assert seen(found) == [("dns", "api.openai.com", "openai-api")]


@pytest.mark.parametrize("transport", ["tls", "quic"])
def test_grease_ech_with_real_sni_on_a_shared_address(
    matcher: Matcher, tmp_path: Path, transport: str
) -> None:
    # chatgpt.com and example.org share a CDN address; the user opens only example.org, with a
    # hello that carries GREASE ECH (indistinguishable on the wire from a real outer ECH)
    pkts = [
        *dns_exchange("chatgpt.com", a=[SERVER4], ts=T0 - 2, ident=1),
        *dns_exchange("example.org", a=[SERVER4], ts=T0 - 1, ident=2),
    ]
    if transport == "tls":
        pkts += tcp_flow_packets(payload=make_client_hello("example.org", ech=True))
    else:
        hello = client_hello_message("example.org", ech=True, alpn=("h3",), pq_key_share=False)
        pkts += udp_packets(make_quic_initials(hello=hello))
    found = scan(matcher, write_capture(tmp_path / "grease.pcap", pkts))
    assert seen(found) == [
        ("dns", "chatgpt.com", "openai-chatgpt"),
        ("dns", "example.org", None),
        (transport, "example.org", None),
    ]


# --------------------------------------------------------------------------- link layers

LINK_CASES = [(name, ip) for name in LINKS for ip in ("v4", "v6")]


@pytest.mark.parametrize(("link", "ip"), LINK_CASES, ids=[f"{n}-{v}" for n, v in LINK_CASES])
def test_every_link_type(matcher: Matcher, tmp_path: Path, link: str, ip: str) -> None:
    client, resolver, server = (
        (CLIENT4, RESOLVER4, SERVER4) if ip == "v4" else (CLIENT6, RESOLVER6, SERVER6)
    )
    pkts = [
        *dns_exchange("claude.ai", client=(client, 53001), resolver=resolver, ts=T0 - 1),
        *tcp_flow_packets((client, 50001), (server, 443), make_client_hello("api.openai.com")),
    ]
    found = scan(matcher, write_capture(tmp_path / f"{link}-{ip}.pcap", pkts, link))
    assert seen(found) == [
        ("dns", "claude.ai", "anthropic-claude"),
        ("tls", "api.openai.com", "openai-api"),
    ]
    assert found[1].observation.src == client
    assert found[1].observation.dst == server


@pytest.mark.parametrize(
    ("linktype", "client", "server"),
    [(LINKTYPE_IPV4, CLIENT4, SERVER4), (LINKTYPE_IPV6, CLIENT6, SERVER6)],
)
def test_raw_ipv4_and_ipv6_link_types(
    matcher: Matcher, tmp_path: Path, linktype: int, client: str, server: str
) -> None:
    pkts = tcp_flow_packets((client, 50001), (server, 443), make_client_hello("claude.ai"))
    found = scan(matcher, write_pcap(tmp_path / "raw.pcap", pkts, linktype))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]


def test_pcapng_and_nanosecond_pcap_keep_exact_timestamps(matcher: Matcher, tmp_path: Path) -> None:
    # a small epoch, so that a float can tell nanoseconds apart
    ts = 1000.123456789
    query = make_packet(CLIENT4, RESOLVER4, 53000, 53, make_dns_query("claude.ai"), proto="udp")
    frames = [(ts, bytes(ether(query)))]
    ng = write_pcapng(tmp_path / "ns.pcapng", frames, tsresol=9)
    ns = write_pcap(tmp_path / "ns.pcap", frames, nanosecond=True)
    us = write_pcapng(tmp_path / "us.pcapng", frames)
    for path, expected in ((ng, ts), (ns, ts), (us, 1000.123457)):
        assert [s.observation.ts for s in scan(matcher, path)] == [
            pytest.approx(expected, abs=1e-10)
        ]


def test_pcap_and_pcapng_in_big_endian(matcher: Matcher, tmp_path: Path) -> None:
    pkts = [ether(p) for p in dns_exchange("claude.ai", a=[SERVER4], ts=T0)]
    be_pcap = write_pcap(tmp_path / "be.pcap", pkts, big_endian=True)
    be_ng = write_pcapng(tmp_path / "be.pcapng", pkts, big_endian=True)
    for path in (be_pcap, be_ng):
        found = scan(matcher, path)
        assert seen(found) == [("dns", "claude.ai", "anthropic-claude")]
        assert found[0].observation.ts == pytest.approx(T0, abs=1e-6)


@pytest.mark.parametrize("writer", [wrpcap, wrpcapng], ids=["wrpcap", "wrpcapng"])
@pytest.mark.parametrize("link", ["ether", "sll"])
def test_captures_written_by_scapy(
    matcher: Matcher, tmp_path: Path, writer: Callable[[str, list[Packet]], None], link: str
) -> None:
    # another writer's layout (its own header options, its link type per frame)
    pkts = [
        *dns_exchange("claude.ai", a=[SERVER4], ts=T0),
        *tcp_flow_packets(payload=make_client_hello("api.openai.com"), start=T0 + 1),
    ]
    path = tmp_path / "scapy.cap"
    writer(str(path), [LINKS[link][0](p) for p in pkts])
    found = scan(matcher, path)
    assert seen(found) == [
        ("dns", "claude.ai", "anthropic-claude"),
        ("tls", "api.openai.com", "openai-api"),
    ]
    assert [s.observation.ts for s in found] == pytest.approx([T0, float(pkts[6].time)], abs=2e-6)


def test_pcapng_with_several_interfaces_and_sections(matcher: Matcher, tmp_path: Path) -> None:
    # dumpcap on two interfaces (Ethernet and Linux cooked), then a second section appended
    dns = dns_exchange("claude.ai", a=[SERVER4], ts=T0)
    hello = tcp_flow_packets(payload=make_client_hello("api.openai.com"), start=T0 + 1)
    first = pcapng_bytes(
        [
            *((float(p.time), bytes(ether(p)), 0) for p in dns),
            *((float(p.time), bytes(LINKS["sll"][0](p)), 1) for p in hello),
        ],
        [LINKTYPE_ETHERNET, LINKS["sll"][1]],
    )
    quic = udp_packets(make_quic_initials("gemini.google.com"), start=T0 + 2)
    second = pcapng_bytes(quic, LINKTYPE_IPV4, big_endian=True)
    path = tmp_path / "multi.pcapng"
    path.write_bytes(first + second)
    found = scan(matcher, path)
    assert seen(found) == [
        ("dns", "claude.ai", "anthropic-claude"),
        ("tls", "api.openai.com", "openai-api"),
        ("quic", "gemini.google.com", "google-gemini"),
    ]


# --------------------------------------------------------------------------- IP layer


def long_names(n: int, suffix: str) -> list[str]:
    """CNAME targets that DNS compression cannot shrink: a long label of their own each."""
    return [f"{chr(97 + i) * 60}.{chr(98 + i) * 60}.{chr(99 + i) * 40}.{suffix}" for i in range(n)]


def test_ipv6_extension_headers_and_fragmented_dns_response(
    matcher: Matcher, tmp_path: Path
) -> None:
    # The query crosses hop-by-hop and destination options headers; the response is big enough
    # to be fragmented (a long CNAME chain) and its fragments arrive out of order.
    chain = long_names(7, "claude-ai.cdn.example.net")
    query = (
        IPv6(src=CLIENT6, dst=RESOLVER6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=53002, dport=53)
        / Raw(make_dns_query("claude.ai", "AAAA"))
    )
    query.time = T0
    response = make_dns_response("claude.ai", "AAAA", cname=chain, aaaa=[SERVER6])
    assert len(response) > 1280  # more than the IPv6 minimum MTU: it must be fragmented
    whole = (
        IPv6(src=RESOLVER6, dst=CLIENT6)
        / IPv6ExtHdrFragment(id=0xABCD)
        / UDP(sport=53, dport=53002)
        / Raw(response)
    )
    frags = fragment6(whole, 600)
    assert len(frags) == 3
    for i, f in enumerate(frags):
        f.time = T0 + 0.01 * (i + 1)
    hello = tcp_flow_packets(
        (CLIENT6, 50003), (SERVER6, 443), make_client_hello(None), start=T0 + 1
    )
    pkts = [query, frags[2], frags[0], frags[1], *hello]
    found = scan(matcher, write_capture(tmp_path / "v6frag.pcap", pkts))
    assert seen(found) == [
        ("dns", "claude.ai", "anthropic-claude"),
        *(("dns", name, None) for name in chain),
        ("ip", "claude.ai", "anthropic-claude"),
        *(("ip", name, None) for name in chain),
    ]


def test_ipv6_fragment_followed_by_destination_options(matcher: Matcher, tmp_path: Path) -> None:
    chain = long_names(6, "mistral.example.net")
    response = make_dns_response("api.mistral.ai", cname=chain, a=[SERVER4])
    whole = (
        IPv6(src=RESOLVER6, dst=CLIENT6)
        / IPv6ExtHdrFragment(id=0x5151)
        / IPv6ExtHdrDestOpt()
        / UDP(sport=53, dport=53005)
        / Raw(response)
    )
    frags = fragment6(whole, 700)
    assert len(frags) >= 2
    for f in frags:
        f.time = T0
    found = scan(matcher, write_capture(tmp_path / "v6frag-dst.pcap", frags[::-1]))
    assert seen(found) == [
        ("dns", "api.mistral.ai", "mistral-api"),
        *(("dns", name, None) for name in chain),
    ]


def test_ipv4_fragmented_dns_response_without_its_query(matcher: Matcher, tmp_path: Path) -> None:
    # Only the response was captured (asymmetric routing): its question name is reported.
    chain = long_names(7, "openai.example.net")
    response = make_dns_response("api.openai.com", cname=chain, a=[SERVER4])
    whole = IP(src=RESOLVER4, dst=CLIENT4, id=0x77) / UDP(sport=53, dport=53004) / Raw(response)
    frags = fragment(whole, fragsize=600)
    assert len(frags) == 3
    for f in frags:
        f.time = T0
    found = scan(matcher, write_capture(tmp_path / "v4frag.pcap", frags[::-1]))
    assert seen(found)[0] == ("dns", "api.openai.com", "openai-api")
    assert [name for _, name, _ in seen(found)[1:]] == chain
    o = found[0].observation
    assert (o.src, o.sport, o.dst, o.dport) == (CLIENT4, 53004, RESOLVER4, 53)


# --------------------------------------------------------------------------- DNS and HTTP


def test_dns_over_tcp(matcher: Matcher, tmp_path: Path) -> None:
    query = make_dns_query("api.anthropic.com", ident=7)
    response = make_dns_response(
        "api.anthropic.com", cname=["anthropic.map.fastly.net"], a=[SERVER4], ident=7
    )
    pkts = [
        *tcp_flow_packets(
            (CLIENT4, 40000),
            (RESOLVER4, 53),
            dns_tcp_payload(query),
            split_at=[1, 20],  # cut inside the length prefix and inside the message
            reply=dns_tcp_payload(response),
            start=T0,
        ),
        *tcp_flow_packets(payload=make_client_hello(None), start=T0 + 1),
    ]
    found = scan(matcher, write_capture(tmp_path / "dnstcp.pcap", pkts))
    assert seen(found) == [
        ("dns", "api.anthropic.com", "anthropic-api"),
        ("dns", "anthropic.map.fastly.net", None),
        ("ip", "api.anthropic.com", "anthropic-api"),
        ("ip", "anthropic.map.fastly.net", None),
    ]


def test_http_host_and_connect(matcher: Matcher, tmp_path: Path) -> None:
    get = b"GET /v1/models HTTP/1.1\r\nHost: API.OpenAI.com\r\nAccept: */*\r\n\r\n"
    connect = (
        b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n"
        b"Proxy-Connection: keep-alive\r\n\r\n"
    )
    pkts = [
        *tcp_flow_packets((CLIENT4, 41000), (SERVER4, 80), get, split_at=[10, 30]),
        *tcp_flow_packets((CLIENT4, 41001), ("198.51.100.8", 3128), connect, start=T0 + 1),
    ]
    found = scan(matcher, write_capture(tmp_path / "http.pcap", pkts))
    assert seen(found) == [
        ("http", "api.openai.com", "openai-api"),
        ("http", "api.anthropic.com", "anthropic-api"),
    ]
    assert [s.observation.dport for s in found] == [80, 3128]


def test_mixed_case_names_are_normalised(matcher: Matcher, tmp_path: Path) -> None:
    # resolvers randomise the case of queries (DNS 0x20); hellos may carry a trailing dot
    pkts = [
        *dns_exchange("ChAtGpT.CoM", a=[SERVER4], ts=T0 - 1),
        *tcp_flow_packets((CLIENT4, 50001), payload=make_client_hello("Api.OpenAI.COM.")),
        *tcp_flow_packets((CLIENT4, 50002), payload=make_client_hello(None), start=T0 + 1),
    ]
    found = scan(matcher, write_capture(tmp_path / "0x20.pcap", pkts))
    assert seen(found) == [
        ("dns", "chatgpt.com", "openai-chatgpt"),
        ("tls", "api.openai.com", "openai-api"),
        ("ip", "chatgpt.com", "openai-chatgpt"),
    ]


# --------------------------------------------------------------------------- CLI: negatives


def _lookalikes(tmp_path: Path) -> Path:
    pkts = [
        *dns_exchange("notopenai.com", a=["198.51.100.20"], ts=T0),
        *tcp_flow_packets(payload=make_client_hello("openai.com.evil.net"), start=T0 + 1),
    ]
    return write_capture(tmp_path / "lookalikes.pcap", pkts)


def test_lookalike_names_are_not_ai_services_with_all(tmp_path: Path) -> None:
    result = cli("--json", "--all", _lookalikes(tmp_path))
    assert result.exit_code == 0, result.output
    assert [(r["proto"], r["name"], r["service"]) for r in json_lines(result)] == [
        ("dns", "notopenai.com", None),
        ("tls", "openai.com.evil.net", None),
    ]
    assert result.stderr == ""


def test_lookalike_names_print_nothing_without_all(tmp_path: Path) -> None:
    path = _lookalikes(tmp_path)
    result = cli("--json", path)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    table = cli(path)
    assert table.exit_code == 0
    assert "No AI services seen." in table.stdout
    assert "openai" not in table.stdout


def test_table_output_lists_services(tmp_path: Path) -> None:
    pkts = [
        *dns_exchange("claude.ai", a=[SERVER4], ts=T0 - 1),
        *tcp_flow_packets(payload=make_client_hello("claude.ai")),
    ]
    result = cli(write_capture(tmp_path / "table.pcap", pkts))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "TOOL", "VENDOR", "NAME", "SEEN", "AS", "COUNT"]
    assert lines[1].split() == [
        "anthropic-claude",
        "Claude",
        "Anthropic",
        "claude.ai",
        "dns:1",
        "tls:1",
        "2",
    ]


def test_jobs_give_the_same_answers(tmp_path: Path) -> None:
    # a shared scan splits flows between processes by address pair, yet an `ip` name comes from
    # a DNS answer on another pair: the split must not lose it
    hello = client_hello_message("cloudflare-ech.com", ech=True, alpn=("h3",), pq_key_share=False)
    pkts = [
        *dns_exchange("chatgpt.com", a=[SERVER4], ts=T0, ident=1),
        *dns_exchange("claude.ai", "AAAA", aaaa=[SERVER6], ts=T0 + 0.1, ident=2),
        *tcp_flow_packets(payload=make_client_hello("cloudflare-ech.com", ech=True), start=T0 + 1),
        *tcp_flow_packets((CLIENT6, 50009), (SERVER6, 443), make_client_hello(None), start=T0 + 2),
        *udp_packets(
            make_quic_initials(hello=hello, split_at=[300], packets=[[1], [0]]), start=T0 + 3
        ),
    ]
    path = write_capture(tmp_path / "jobs.pcap", pkts)
    runs = [cli("--json", "--all", "--jobs", str(jobs), path) for jobs in (1, 2, 3)]
    assert [r.exit_code for r in runs] == [0, 0, 0]
    assert runs[0].stdout == runs[1].stdout == runs[2].stdout
    assert [(r["proto"], r["name"]) for r in json_lines(runs[0])] == [
        ("dns", "chatgpt.com"),
        ("dns", "claude.ai"),
        ("tls", "cloudflare-ech.com"),
        ("ip", "chatgpt.com"),
        ("ip", "claude.ai"),
        ("quic", "cloudflare-ech.com"),
        ("ip", "chatgpt.com"),
    ]


# --------------------------------------------------------------------------- memory bounds


def _first_segments(n: int, *, start: float, step: float) -> list[Packet]:
    """``n`` flows that send only the first segment of their hello."""
    out = []
    for i in range(n):
        flow = tcp_flow_packets(
            (CLIENT4, 30000 + i),
            (SERVER4, 443),
            make_client_hello(f"h{i}.example.com"),
            start=start + i * step,
        )
        out += flow[:4]  # handshake + first segment; the SNI is in the second
    return out


def test_incomplete_hellos_are_evicted_when_flows_run_out(matcher: Matcher, tmp_path: Path) -> None:
    pkts = [
        *_first_segments(20, start=T0, step=0.001),
        *tcp_flow_packets(
            (CLIENT4, 40000), (SERVER4, 443), make_client_hello("claude.ai"), start=T0 + 0.5
        ),
    ]
    scanner = Scanner(matcher, PipelineLimits(max_tcp_flows=8))
    found = list(scanner.scan_file(write_capture(tmp_path / "evict.pcap", pkts)))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]
    # 21 connections take 42 slots (the SYN-ACK marks the server side as ignored), 8 are kept
    assert scanner.stats.counters["tcp.flows_evicted"] == 34


def test_incomplete_hellos_time_out(matcher: Matcher, tmp_path: Path) -> None:
    late = make_packet(
        CLIENT4, RESOLVER4, 53000, 53, make_dns_query("claude.ai"), proto="udp", ts=T0 + 30
    )
    pkts = [*_first_segments(12, start=T0, step=0.01), late]
    scanner = Scanner(matcher, PipelineLimits(hello_timeout=10.0))
    found = list(scanner.scan_file(write_capture(tmp_path / "timeout.pcap", pkts)))
    assert seen(found) == [("dns", "claude.ai", "anthropic-claude")]
    assert scanner.stats.counters["tcp.hello_timeout"] == 12


def test_buffered_bytes_over_budget_are_shed(matcher: Matcher, tmp_path: Path) -> None:
    late = make_packet(
        CLIENT4, RESOLVER4, 53000, 53, make_dns_query("claude.ai"), proto="udp", ts=T0 + 2
    )
    pkts = [*_first_segments(10, start=T0, step=0.01), late]
    scanner = Scanner(matcher, PipelineLimits(max_buffered_bytes=4 * MSS))
    list(scanner.scan_file(write_capture(tmp_path / "shed.pcap", pkts)))
    # 10 x 1460 buffered, budget 5840: shed oldest-first until at most half the budget is left
    assert scanner.stats.counters["tcp.shed"] == 8


def test_hello_larger_than_flow_limit_is_dropped_and_counted(
    matcher: Matcher, tmp_path: Path
) -> None:
    limit = PipelineLimits().max_flow_bytes
    big = make_client_hello("claude.ai", padding=limit + 2000, record_size=16000)
    fits = make_client_hello("api.mistral.ai", padding=limit - 4000, record_size=8000)
    assert len(big) > limit > len(fits)
    pkts = [
        *tcp_flow_packets((CLIENT4, 42000), (SERVER4, 443), big, start=T0),
        *tcp_flow_packets((CLIENT4, 42001), (SERVER4, 443), fits, start=T0 + 1),
    ]
    scanner = Scanner(matcher)
    found = list(scanner.scan_file(write_capture(tmp_path / "huge.pcap", pkts)))
    assert seen(found) == [("tls", "api.mistral.ai", "mistral-api")]
    assert scanner.stats.counters["tcp.flow_overflow"] == 1


def test_oversized_hello_with_its_last_segment_first_is_counted(
    matcher: Matcher, tmp_path: Path
) -> None:
    limit = PipelineLimits().max_flow_bytes
    big = make_client_hello("claude.ai", pq_key_share=False, record_size=16000)
    big = make_client_hello(
        "claude.ai", pq_key_share=False, record_size=16000, padding=limit + 100 - len(big) - 4
    )
    segments = len(split_payload(big, None))
    assert limit < len(big) < (segments - 1) * MSS + MSS  # only the last segment crosses
    order = [segments - 1, *range(segments - 1)]
    pkts = tcp_flow_packets((CLIENT4, 42000), (SERVER4, 443), big, order=order, start=T0)
    scanner = Scanner(matcher)
    found = list(scanner.scan_file(write_capture(tmp_path / "huge-ooo.pcap", pkts)))
    assert found == []
    assert scanner.stats.counters.get("tcp.flow_overflow") == 1


def test_repacketized_retransmissions_ahead_of_a_lost_segment(
    matcher: Matcher, tmp_path: Path
) -> None:
    # a 10 KB hello on a lossy path: the first segment is late, and the rest is sent twice with
    # different segment boundaries (retransmissions are repacketized)
    hello = make_client_hello("claude.ai", padding=8500)
    n = len(hello)
    again = [(lo, min(n, lo + 1000)) for lo in range(MSS + 100, n, 1000)]
    order: list[int | tuple[int, int]] = [*range(1, len(split_payload(hello, None))), *again, 0]
    pkts = tcp_flow_packets(payload=hello, order=order)
    held = (n - MSS) + sum(hi - lo for lo, hi in again)  # bytes waiting for the first segment
    assert held > PipelineLimits().max_flow_bytes > n
    scanner = Scanner(matcher)
    found = list(scanner.scan_file(write_capture(tmp_path / "repacketized.pcap", pkts)))
    assert seen(found) == [("tls", "claude.ai", "anthropic-claude")]


# --------------------------------------------------------------------------- bad files


def _cut_capture(tmp_path: Path) -> Path:
    pkts = [
        *tcp_flow_packets(payload=make_client_hello("claude.ai"), start=T0),
        *dns_exchange("api.mistral.ai", a=["198.51.100.30"], ts=T0 + 1),
        *tcp_flow_packets(
            (CLIENT4, 50999), payload=make_client_hello("api.openai.com"), start=T0 + 2
        ),
    ]
    data = pcap_bytes([ether(p) for p in pkts], LINKTYPE_ETHERNET)
    cut = len(data) - 100  # inside the last record: the second segment of the last hello
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:cut])
    return path


def test_truncated_pcap_gives_results_up_to_the_cut(matcher: Matcher, tmp_path: Path) -> None:
    path = _cut_capture(tmp_path)
    scanner = Scanner(matcher)
    found: list[Sighting] = []
    with pytest.raises(CaptureError, match="cut short"):
        found.extend(scanner.scan_file(path))
    assert seen(found) == [
        ("tls", "claude.ai", "anthropic-claude"),
        ("dns", "api.mistral.ai", "mistral-api"),
    ]
    assert scanner.stats.counters["pcap.truncated"] == 1


@pytest.mark.parametrize("jobs", [1, 3])
def test_truncated_pcap_on_the_cli(tmp_path: Path, jobs: int) -> None:
    path = _cut_capture(tmp_path)
    result = cli("--json", "--all", "--jobs", str(jobs), path)
    assert result.exit_code == 2
    assert [(r["proto"], r["name"]) for r in json_lines(result)] == [
        ("tls", "claude.ai"),
        ("dns", "api.mistral.ai"),
    ]
    assert result.stderr == f"lantern: {path}: capture is cut short in the middle of a packet\n"


def test_truncated_pcapng_gives_results_up_to_the_cut(matcher: Matcher, tmp_path: Path) -> None:
    pkts = [
        *dns_exchange("claude.ai", a=[SERVER4], ts=T0),
        *tcp_flow_packets(payload=make_client_hello("api.openai.com"), start=T0 + 1),
    ]
    path = write_pcapng(tmp_path / "cut.pcapng", [ether(p) for p in pkts])
    path.write_bytes(path.read_bytes()[:-30])
    found: list[Sighting] = []
    with pytest.raises(CaptureError, match="cut short"):
        found.extend(Scanner(matcher).scan_file(path))
    assert seen(found) == [("dns", "claude.ai", "anthropic-claude")]


def test_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.pcap"
    result = cli(path)
    assert result.exit_code == 2
    assert result.stderr == f"lantern: {path}: no such file\n"


@pytest.mark.parametrize(
    "content",
    [b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" * 3, b"\x00" * 10],
    ids=["text", "short"],
)
def test_non_pcap_file_is_a_one_line_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    result = cli("--json", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"lantern: {path}: not a pcap or pcapng file")


def test_bad_file_does_not_stop_the_good_ones(tmp_path: Path) -> None:
    good = write_capture(tmp_path / "good.pcap", dns_exchange("claude.ai", a=[SERVER4]))
    result = cli("--json", tmp_path / "missing.pcap", good)
    assert result.exit_code == 2
    assert [r["name"] for r in json_lines(result)] == ["claude.ai"]
    assert len(result.stderr.splitlines()) == 1
