"""Live capture: interfaces, options, the permission error, and real capture in namespaces."""

from __future__ import annotations

import datetime
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.capture.interfaces import default_interfaces, list_interfaces
from agent.capture.live import declare_options, interfaces_from
from agent.capture.pcapfile import PcapFileSource
from agent.counters import Counters
from agent.exceptions import CaptureError, ConfigError
from agent.options import Options
from agent.pipeline import NameExtractor

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="live capture needs root (CAP_NET_RAW)")

# --- interfaces and options (no privilege) ---------------------------------------------------

ROUTE_HEADER = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
)


def write_routes(tmp_path: Path, v4: list[str], v6: list[str]) -> tuple[Path, Path]:
    r4, r6 = tmp_path / "route", tmp_path / "ipv6_route"
    r4.write_text(ROUTE_HEADER + "".join(line + "\n" for line in v4))
    r6.write_text("".join(line + "\n" for line in v6))
    return r4, r6


V6_DEFAULT = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     wg0"
)
V6_UNREACHABLE_LO = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo"
)


def test_default_interfaces_from_both_tables(tmp_path: Path) -> None:
    r4, r6 = write_routes(
        tmp_path,
        [
            "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
            "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
            "eth1\t00000000\t010300C0\t0002\t0\t0\t0\t00000000\t0\t0\t0",  # not RTF_UP
        ],
        [V6_UNREACHABLE_LO, V6_DEFAULT],
    )
    assert default_interfaces(r4, r6) == ["eth0", "wg0"]


def test_no_default_route_is_a_clear_error(tmp_path: Path) -> None:
    r4, _ = write_routes(tmp_path, [], [V6_UNREACHABLE_LO])
    with pytest.raises(CaptureError, match=r"no interface carries a default route.*capture\.any"):
        default_interfaces(r4, tmp_path / "missing")


def test_list_interfaces_has_loopback() -> None:
    lo = [i for i in list_interfaces() if i.name == "lo"]
    assert lo and lo[0].arphrd == 772 and lo[0].index >= 1


def test_capture_options() -> None:
    options = Options()
    declare_options(options)
    assert options["capture.snaplen"] == 2048
    options.set("capture.interfaces", ["eth7"], "agent.yaml:2")
    assert interfaces_from(options) == ["eth7"]
    options.set("capture.any", True, "agent.yaml:3")
    assert interfaces_from(options) == ["any"]
    with pytest.raises(ConfigError, match=r"capture\.snaplen': must be between"):
        options.set("capture.snaplen", 64, "agent.yaml:4")
    with pytest.raises(ConfigError, match="is not an interface name"):
        options.set("capture.interfaces", ["x" * 20], "agent.yaml:5")


# --- permission ------------------------------------------------------------------------------

PERMISSION_SCRIPT = """
import sys
from agent.capture.live import LiveSource, check_capture_permission
from agent.counters import Counters
from agent.exceptions import CaptureError
try:
    check_capture_permission()
except CaptureError as exc:
    first = str(exc)
else:
    sys.exit(0)
try:
    LiveSource(["lo"], Counters())
except CaptureError as exc:
    assert str(exc) == first, (str(exc), first)
    print(exc, file=sys.stderr)
    sys.exit(3)
sys.exit(1)
"""


@needs_root
@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (libcap2-bin) is not installed")
def test_missing_cap_net_raw_names_the_fix() -> None:
    proc = subprocess.run(
        ["capsh", "--drop=cap_net_raw", "--", "-c", f'exec {PY} -c "$0"', PERMISSION_SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    python = os.path.realpath(PY)
    assert proc.stderr.strip() == (
        "lantern agent needs CAP_NET_RAW to capture: run as root, or "
        f"`sudo setcap cap_net_raw,cap_net_admin+eip {python}`, "
        "or use the systemd unit's AmbientCapabilities=CAP_NET_RAW"
    )


@needs_root
def test_with_the_capability_the_check_passes() -> None:
    from agent.capture.live import check_capture_permission

    check_capture_permission()  # raises CaptureError otherwise; the test above covers that


# --- namespaces ------------------------------------------------------------------------------

_seq = itertools.count()


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces joined by a veth pair: ``a`` (10.200.N.1) and ``b`` (10.200.N.2)."""

    a: str
    b: str
    if_a: str
    if_b: str
    addr_a: str
    addr_b: str
    addr6_a: str

    def run(self, ns: str, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *args], check=False, **kw)  # type: ignore[call-overload, no-any-return]

    def popen(self, ns: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def netns_pair() -> Iterator[NetnsPair]:
    if not IS_ROOT:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    n = (os.getpid() * 7 + next(_seq)) % 200 + 20
    tag = f"lt{os.getpid() % 100000}x{next(_seq)}"
    pair = NetnsPair(
        f"{tag}a",
        f"{tag}b",
        f"v{tag}a"[-15:],
        f"v{tag}b"[-15:],
        f"10.200.{n}.1",
        f"10.200.{n}.2",
        f"fd00:200:{n}::1",
    )
    created: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            probe = subprocess.run(["ip", "netns", "add", ns], capture_output=True, check=False)
            if probe.returncode != 0:
                pytest.skip(f"ip netns unavailable: {probe.stderr.decode().strip()}")
            created.append(ns)
        _ip("link", "add", pair.if_a, "netns", pair.a, "type", "veth", "peer", "name", pair.if_b,
            "netns", pair.b)  # fmt: skip
        for ns, dev, v4, v6 in (
            (pair.a, pair.if_a, pair.addr_a, pair.addr6_a),
            (pair.b, pair.if_b, pair.addr_b, f"fd00:200:{n}::2"),
        ):
            _ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            _ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


CAPTURE_SCRIPT = """
import json, signal, struct, sys
from agent.capture.live import LiveSource
from agent.counters import Counters
iface, out, bpf, ready = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
counters = Counters()
src = LiveSource([iface], counters, bpf=bpf)
signal.signal(signal.SIGTERM, lambda *_: src.stop())
open(ready, "w").close()
with open(out, "wb") as f:
    linktype = src._taps[0].linktype
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
    for ts, lt, frame in src.frames():
        sec = int(ts)
        f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
        f.write(frame)
stats = src.stats()
src.close()
print(json.dumps({"read": stats.read, "dropped": stats.kernel_dropped,
                  "received": stats.kernel_received, "truncated": stats.truncated}))
"""

SERVER_SCRIPT = """
import socket, ssl, sys, threading
import dns.message, dns.rrset
addr, cert, key, ready = sys.argv[1:5]

def dns_server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 53))
    while True:
        data, peer = s.recvfrom(4096)
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "10.200.99.9"))
        s.sendto(r.to_wire(), peer)

def tls_server():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, 443)); s.listen()
    while True:
        conn, _ = s.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as t:
                t.recv(100)
                t.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

def bulk_server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.bind((addr, 9000)); s.listen()
    while True:
        conn, _ = s.accept()
        while conn.recv(65536):
            pass
        conn.close()

for f in (dns_server, tls_server, bulk_server):
    threading.Thread(target=f, daemon=True).start()
open(ready, "w").close()
threading.Event().wait()
"""

TRAFFIC_SCRIPT = """
import socket, ssl, sys, time
import dns.message
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
server = sys.argv[1]

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for name in ("api.anthropic.com", "www.example.org"):
    s.sendto(dns.message.make_query(name, "A").to_wire(), (server, 53))
    s.recvfrom(4096)

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((server, 443), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname="api.openai.com") as t:
        t.sendall(b"hi")
        t.recv(10)

conn = QuicConnection(configuration=QuicConfiguration(is_client=True, server_name="chatgpt.com"))
conn.connect((server, 443), now=time.time())
for data, _ in conn.datagrams_to_send(now=time.time()):
    s.sendto(data, (server, 443))

with socket.create_connection((server, 9000), timeout=10) as b:
    b.sendall(b"\\xaa" * (4 << 20))
print("done")
"""


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.openai.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"helper exited early: {proc.communicate()[1]}")
        if time.monotonic() > end:
            raise AssertionError(f"helper not ready after {timeout}s")
        time.sleep(0.05)


def bare_acks(path: Path) -> tuple[int, int]:
    """(frames, TCP segments with no payload and neither SYN nor RST) in an Ethernet pcap."""
    frames = acks = 0
    src = PcapFileSource(path)
    for _, _, f in src.frames():
        frames += 1
        if len(f) >= 54 and f[12:14] == b"\x08\x00" and f[23] == 6:
            ihl = (f[14] & 0x0F) * 4
            total = int.from_bytes(f[16:18])
            doff = (f[14 + ihl + 12] >> 4) * 4
            if total == ihl + doff and not f[14 + ihl + 13] & 0x06:
                acks += 1
    src.close()
    return frames, acks


def names(path: Path) -> set[tuple[str, str]]:
    extractor = NameExtractor(Counters())
    src = PcapFileSource(path)
    found = {(o.proto, o.name) for o in extractor.run(src)}
    src.close()
    return found


@pytest.mark.root
@pytest.mark.slow
def test_capture_in_a_namespace_pair(netns_pair: NetnsPair, tmp_path: Path) -> None:
    pair = netns_pair
    cert, key = make_cert(tmp_path)
    scripts = {}
    for name, text in (("capture", CAPTURE_SCRIPT), ("server", SERVER_SCRIPT)):
        scripts[name] = tmp_path / f"{name}.py"
        scripts[name].write_text(text)
    server = pair.popen(
        pair.a, PY, str(scripts["server"]), pair.addr_a, str(cert), str(key), str(tmp_path / "s")
    )
    captures: dict[str, subprocess.Popen[str]] = {}
    try:
        wait_for(tmp_path / "s", server)
        for mode in ("bpf", "all"):
            captures[mode] = pair.popen(
                pair.a,
                PY,
                str(scripts["capture"]),
                pair.if_a,
                str(tmp_path / f"{mode}.pcap"),
                "1" if mode == "bpf" else "0",
                str(tmp_path / f"{mode}.ready"),
            )
        for mode, proc in captures.items():
            wait_for(tmp_path / f"{mode}.ready", proc)
        traffic = pair.run(
            pair.b,
            PY,
            "-c",
            TRAFFIC_SCRIPT,
            pair.addr_a,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert traffic.returncode == 0, traffic.stderr
        time.sleep(0.5)
        stats = {}
        for mode, proc in captures.items():
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=10)
            assert time.monotonic() - t0 < 3.0, "stop() did not end frames() promptly"
            assert proc.returncode == 0, err
            stats[mode] = json.loads(out)
    finally:
        for proc in (server, *captures.values()):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    want = {
        ("dns", "api.anthropic.com"),
        ("dns", "www.example.org"),
        ("tls", "api.openai.com"),
        ("quic", "chatgpt.com"),
    }
    assert want <= names(tmp_path / "bpf.pcap")
    assert want <= names(tmp_path / "all.pcap")
    filtered, filtered_acks = bare_acks(tmp_path / "bpf.pcap")
    unfiltered, unfiltered_acks = bare_acks(tmp_path / "all.pcap")
    assert filtered_acks == 0
    assert unfiltered_acks > 20  # the bulk transfer's ACKs, the handshakes' ACKs
    assert filtered < unfiltered
    for mode, s in stats.items():
        assert s["dropped"] == 0, (mode, s)
        assert s["read"] == s["received"], (mode, s)
    assert stats["bpf"]["read"] == filtered and stats["all"]["read"] == unfiltered
