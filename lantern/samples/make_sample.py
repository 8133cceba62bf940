"""Writes ai-sample.pcapng: a short, deterministic workstation session using AI services.

Run from a checkout (the packets are built with the test factories, scapy and aioquic)::

    .venv/bin/python lantern/samples/make_sample.py [OUTPUT]

The output is byte-for-byte reproducible: timestamps, ports, sequence numbers and every random
byte (TLS randoms, key shares, QUIC connection IDs) come from fixed seeds, and
tests/agent/test_sample_capture.py fails when the shipped file and this script disagree.
All addresses are documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24,
2001:db8::/32); nothing here is ever sent.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.packet import Packet  # noqa: E402

from tests.factories import (  # noqa: E402
    CLIENT_MAC,
    aioquic_datagrams,
    dns_exchange,
    ether,
    make_client_hello,
    make_packet,
    pcapng_bytes,
    tcp_flow_packets,
    udp_packets,
)

OUTPUT = Path(__file__).with_name("ai-sample.pcapng")
START = 1_748_854_800.0  # 2025-06-02 09:00:00 UTC
CLIENT = "192.0.2.23"
CLIENT6 = "2001:db8:0:1::23"
GATEWAY = "192.0.2.1"
RESOLVER = GATEWAY
RESOLVER6 = "2001:db8:0:1::1"


class Session:
    """One workstation's traffic, in time order: DNS lookups, then connections."""

    def __init__(self, seed: int = 2025) -> None:
        self.rnd = random.Random(seed)
        self.now = START
        self.port = 52100
        self.dns_id = 0x3A00
        self.packets: list[Packet] = []

    def _next_port(self) -> int:
        self.port += 1 + self.rnd.randrange(7)
        return self.port

    def wait(self, seconds: float) -> None:
        self.now += seconds

    def lookup(self, name: str, qtype: str = "A", *, v6: bool = False, **answer: object) -> None:
        self.dns_id += 1
        self.packets += dns_exchange(
            name,
            qtype,
            client=(CLIENT6 if v6 else CLIENT, self._next_port()),
            resolver=RESOLVER6 if v6 else RESOLVER,
            ts=self.now,
            rtt=0.008 + self.rnd.random() / 50,
            ident=self.dns_id,
            **answer,
        )
        self.wait(0.03)

    def tls(
        self, sni: str, server: str, *, ech: bool = False, pq: bool = True, v6: bool = False
    ) -> None:
        hello = make_client_hello(sni, ech=ech, pq_key_share=pq, seed=self.rnd.randrange(1 << 30))
        # the server's first flight: ServerHello, ChangeCipherSpec, then encrypted records
        reply = (
            b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03"
            + self.rnd.randbytes(0x76 - 2)
            + b"\x14\x03\x03\x00\x01\x01"
            + b"\x17\x03\x03\x01\x00"
            + self.rnd.randbytes(0x100)
        )
        self.packets += tcp_flow_packets(
            (CLIENT6 if v6 else CLIENT, self._next_port()),
            (server, 443),
            hello,
            reply=reply,
            isn=self.rnd.getrandbits(32),
            server_isn=self.rnd.getrandbits(32),
            start=self.now,
            step=0.012,
        )
        self.wait(0.4)

    def quic(self, sni: str, server: str) -> None:
        datagrams = aioquic_datagrams(sni, alpn=("h3",), seed=self.rnd.randrange(1 << 30))
        port = self._next_port()
        self.packets += udp_packets(datagrams, (CLIENT, port), (server, 443), start=self.now)
        # the server answers; after the handshake both sides use short headers only
        short = [
            bytes([0x40 | self.rnd.randrange(0x40)]) + self.rnd.randbytes(60 + i) for i in (0, 40)
        ]
        self.packets += udp_packets(short, (server, 443), (CLIENT, port), start=self.now + 0.03)
        self.wait(0.4)

    def http(self, host: str, server: str) -> None:
        request = (
            f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
        ).encode()
        response = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 0\r\n\r\n"
        self.packets += tcp_flow_packets(
            (CLIENT, self._next_port()),
            (server, 80),
            request,
            reply=response,
            isn=self.rnd.getrandbits(32),
            server_isn=self.rnd.getrandbits(32),
            start=self.now,
            step=0.015,
        )
        self.wait(0.3)

    def noise(self) -> None:
        """Traffic the pipeline must skip: ARP, NTP."""
        arp = Ether(src=CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            hwsrc=CLIENT_MAC, psrc=CLIENT, pdst=GATEWAY
        )
        arp.time = self.now
        ntp = make_packet(
            CLIENT, "203.0.113.123", 123, 123, b"\x23" + bytes(47), proto="udp", ts=self.now + 0.1
        )
        self.packets += [arp, ntp]
        self.wait(0.2)

    def frames(self) -> list[tuple[float, bytes]]:
        out = []
        for p in sorted(self.packets, key=lambda p: float(p.time)):
            if not isinstance(p, Ether):
                outbound = p.src in (CLIENT, CLIENT6)
                p = ether(p, outbound=outbound)
            out.append((round(float(p.time), 6), bytes(p)))
        return out


def build() -> bytes:
    s = Session()
    s.noise()
    # the browser opens ChatGPT, then the workday begins
    s.lookup("www.example.com", a=["203.0.113.80"])
    s.tls("www.example.com", "203.0.113.80")
    s.lookup("chatgpt.com", a=["198.51.100.11"])
    s.lookup("chatgpt.com", "AAAA")
    s.tls("chatgpt.com", "198.51.100.11")
    s.lookup(
        "cdn.oaistatic.com", cname=["cdn.oaistatic.com.cdn.cloudflare.net"], a=["198.51.100.12"]
    )
    s.tls("cdn.oaistatic.com", "198.51.100.12")
    s.wait(3)
    s.lookup("en.wikipedia.org", cname=["dyna.wikimedia.org"], a=["203.0.113.90"])
    s.tls("en.wikipedia.org", "203.0.113.90")
    s.lookup("claude.ai", a=["198.51.100.21"])
    s.tls("claude.ai", "198.51.100.21")
    # Gemini over HTTP/3
    s.lookup("gemini.google.com", a=["198.51.100.31"])
    s.quic("gemini.google.com", "198.51.100.31")
    s.wait(2)
    s.noise()
    # the IDE: Copilot and Cursor
    s.lookup("api.individual.githubcopilot.com", a=["198.51.100.41"])
    s.tls("api.individual.githubcopilot.com", "198.51.100.41", pq=False)
    s.lookup("api2.cursor.sh", a=["198.51.100.51"])
    s.tls("api2.cursor.sh", "198.51.100.51", pq=False)
    # scripts calling model APIs
    s.lookup("api.openai.com", a=["198.51.100.61"])
    s.tls("api.openai.com", "198.51.100.61", pq=False)
    s.lookup("api.anthropic.com", a=["198.51.100.71"])
    s.tls("api.anthropic.com", "198.51.100.71", pq=False)
    s.lookup("api.mistral.ai", a=["198.51.100.81"])
    s.tls("api.mistral.ai", "198.51.100.81", pq=False)
    s.lookup(
        "contoso-eastus.openai.azure.com",
        cname=["contoso-eastus.privatelink.openai.azure.com"],
        a=["203.0.113.41"],
    )
    s.tls("contoso-eastus.openai.azure.com", "203.0.113.41", pq=False)
    # a model download from Hugging Face over IPv6
    s.lookup("huggingface.co", "AAAA", v6=True, aaaa=["2001:db8:4a::10"])
    s.tls("huggingface.co", "2001:db8:4a::10", v6=True)
    s.wait(5)
    # plain HTTP and an ordinary site
    s.lookup("example.net", a=["203.0.113.81"])
    s.http("example.net", "203.0.113.81")
    # Perplexity behind Encrypted Client Hello: the hello names only the public name
    s.lookup("www.perplexity.ai", "HTTPS", https_hints=["198.51.100.91"], ech=True)
    s.lookup("www.perplexity.ai", a=["198.51.100.91"])
    s.tls("cloudflare-ech.com", "198.51.100.91", ech=True)
    return pcapng_bytes(s.frames())


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    data = build()
    out.write_bytes(data)
    print(f"wrote {out} ({len(data):,} bytes)")


if __name__ == "__main__":
    main()
