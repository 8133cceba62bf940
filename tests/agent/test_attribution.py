"""Endpoint attribution: naming rules and caches with fakes, then real sockets on this machine."""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import struct
import subprocess
import sys
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from agent.attribution import build_attributor, declare_options
from agent.attribution.endpoint import EndpointAttributor, browser_name, is_resolver
from agent.attribution.gateway import GatewayAttributor
from agent.attribution.processes import (
    FakeProcessSource,
    InodeMap,
    ProcessCache,
    PsutilProcessSource,
    RawProcess,
    base_process_name,
)
from agent.attribution.sockets import (
    FakeSocketTable,
    NetlinkSocketTable,
    PsutilSocketTable,
    SockDiag,
    SocketOwner,
    decode_messages,
    encode_request,
)
from agent.counters import Counters
from agent.options import Options
from agent.records import Observation, Proto
from signatures.matcher import Matcher
from signatures.model import Match

LINUX = sys.platform.startswith("linux")
CLIENT, SERVER = "192.0.2.10", "203.0.113.10"


def obs(
    name: str = "api.openai.com",
    proto: Proto = "tls",
    src: str = CLIENT,
    sport: int = 50000,
    dst: str = SERVER,
    dport: int = 443,
) -> Observation:
    return Observation(1000.0, src, sport, dst, dport, proto, name)


def raw(pid: int, name: str, *, uid: int = 1000, ppid: int = 1, created: float = 1.0) -> RawProcess:
    return RawProcess(pid, name, f"/usr/bin/{name}", uid, ppid, created)


class Rig:
    """An EndpointAttributor over a fake socket table and process source."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self.counters = Counters()
        self.sockets = FakeSocketTable()
        self.procs = FakeProcessSource(raw(1, "init", uid=0, ppid=0))
        self.attributor = EndpointAttributor(
            matcher, self.counters, "laptop-7", sockets=self.sockets, processes=self.procs
        )

    def run_as(self, pid: int, name: str, uid: int = 0, sport: int = 50000) -> None:
        self.procs.add(raw(pid, name, uid=uid))
        self.sockets.add(
            "tcp", CLIENT, sport, SERVER, 443, SocketOwner(uid=uid, inode=None, pid=pid)
        )

    def attribute(self, o: Observation, transport: str = "tcp") -> object:
        match = self.matcher.match_name(o.name)
        assert match is not None
        return self.attributor.attribute(o, match, "tcp" if transport == "tcp" else "udp")


@pytest.fixture
def rig(matcher: Matcher) -> Rig:
    return Rig(matcher)


# --- naming rules ------------------------------------------------------------------------------


def test_app_of_the_same_service_is_the_service_tool(rig: Rig) -> None:
    rig.run_as(100, "Cursor")
    a = rig.attributor.attribute(obs("api2.cursor.sh"), _m(rig, "api2.cursor.sh"), "tcp")
    assert (a.tool, a.service_id, a.category) == ("Cursor", "cursor", "coding")
    assert a.process is not None and a.process.app_service_id == "cursor"
    assert (a.user, a.device) == ("root", "laptop-7")


def test_app_of_another_service_keeps_the_app_name(rig: Rig) -> None:
    rig.run_as(100, "Cursor")
    a = rig.attributor.attribute(obs(), _m(rig, "api.openai.com"), "tcp")
    assert (a.tool, a.service_id) == ("Cursor", "openai-api")


def test_helper_process_of_an_app_counts_as_the_app(rig: Rig) -> None:
    rig.run_as(100, "Cursor Helper (Plugin)")
    a = rig.attributor.attribute(obs(), _m(rig, "api.openai.com"), "tcp")
    assert a.tool == "Cursor"
    assert a.process is not None and a.process.app_service_id == "cursor"


@pytest.mark.parametrize(
    ("process", "browser"),
    [
        ("chrome", "Chrome"),
        ("chrome.exe", "Chrome"),
        ("Google Chrome", "Chrome"),
        ("Google Chrome Helper", "Chrome"),
        ("Google Chrome Helper (Renderer)", "Chrome"),
        ("chromium", "Chromium"),
        ("firefox", "Firefox"),
        ("firefox.exe", "Firefox"),
        ("msedge.exe", "Edge"),
        ("Microsoft Edge", "Edge"),
        ("Microsoft Edge Helper", "Edge"),
        ("Safari", "Safari"),
        ("com.apple.WebKit.Networking", "Safari"),
        ("brave", "Brave"),
        ("Brave Browser Helper", "Brave"),
        ("Arc", "Arc"),
        ("opera", "Opera"),
        ("vivaldi", "Vivaldi"),
    ],
)
def test_browser_is_named_with_the_service(rig: Rig, process: str, browser: str) -> None:
    rig.run_as(100, process)
    a = rig.attributor.attribute(obs("chatgpt.com"), _m(rig, "chatgpt.com"), "tcp")
    assert a.tool == f"{browser}: ChatGPT"
    assert a.process is not None and a.process.name == process


@pytest.mark.parametrize(
    ("process", "tool"),
    [
        ("python3", "python3 via OpenAI API"),
        ("python", "python via OpenAI API"),
        ("node.exe", "node via OpenAI API"),
        ("curl", "curl via OpenAI API"),
        ("chromedriver", "chromedriver via OpenAI API"),  # not a browser: no prefix match
    ],
)
def test_other_processes_are_named_via_the_service(rig: Rig, process: str, tool: str) -> None:
    rig.run_as(100, process)
    a = rig.attributor.attribute(obs(), _m(rig, "api.openai.com"), "tcp")
    assert a.tool == tool


def test_no_socket_gives_the_service_tool_and_no_process(rig: Rig) -> None:
    a = rig.attributor.attribute(obs(), _m(rig, "api.openai.com"), "tcp")
    assert (a.tool, a.process, a.user) == ("OpenAI API", None, "unknown")
    assert rig.counters.get("attribution.no_socket") == 1


def test_socket_without_process_takes_the_sockets_user(rig: Rig) -> None:
    rig.sockets.add("tcp", CLIENT, 50000, SERVER, 443, SocketOwner(uid=0, inode=None, pid=4242))
    a = rig.attributor.attribute(obs(), _m(rig, "api.openai.com"), "tcp")
    assert (a.tool, a.process, a.user) == ("OpenAI API", None, "root")
    assert rig.counters.get("attribution.no_process") == 1


def test_unnamed_uid_is_reported_by_number(rig: Rig) -> None:
    uid = _unused_uid()
    rig.sockets.add("tcp", CLIENT, 50000, SERVER, 443, SocketOwner(uid=uid, inode=None))
    a = rig.attributor.attribute(obs(), _m(rig, "api.openai.com"), "tcp")
    assert a.user == f"uid:{uid}"


def test_observation_seen_from_the_other_side_is_found(rig: Rig) -> None:
    rig.run_as(100, "python3")
    swapped = obs(src=SERVER, sport=443, dst=CLIENT, dport=50000)
    a = rig.attributor.attribute(swapped, _m(rig, "api.openai.com"), "tcp")
    assert a.process is not None and a.process.pid == 100
    assert rig.counters.get("attribution.reversed") == 1


def test_transport_selects_the_socket_table(rig: Rig) -> None:
    rig.run_as(100, "python3")  # a TCP socket only
    a = rig.attributor.attribute(obs(proto="quic"), _m(rig, "api.openai.com"), "udp")
    assert a.process is None


# --- DNS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("resolver", ["systemd-resolved", "dnsmasq", "mDNSResponder", "unbound"])
def test_dns_from_the_system_resolver_is_system(rig: Rig, resolver: str) -> None:
    rig.procs.add(raw(77, resolver, uid=101))
    rig.sockets.add("udp", CLIENT, 40000, SERVER, 53, SocketOwner(uid=101, inode=None, pid=77))
    o = obs(proto="dns", sport=40000, dport=53)
    a = rig.attributor.attribute(o, _m(rig, "api.openai.com"), "udp")
    assert (a.user, a.process, a.tool) == ("system", None, "OpenAI API")
    assert rig.counters.get("attribution.dns_system") == 1


def test_dns_without_a_socket_is_system(rig: Rig) -> None:
    a = rig.attributor.attribute(obs(proto="dns", dport=53), _m(rig, "api.openai.com"), "udp")
    assert (a.user, a.process) == ("system", None)


def test_dns_from_a_user_process_is_attributed(rig: Rig) -> None:
    rig.procs.add(raw(300, "python3", uid=0))
    # An unconnected UDP socket: the table knows it by its local port only.
    rig.sockets.add("udp", CLIENT, 40000, "0.0.0.0", 0, SocketOwner(uid=0, inode=None, pid=300))
    o = obs(proto="dns", sport=40000, dport=53)
    a = rig.attributor.attribute(o, _m(rig, "api.openai.com"), "udp")
    assert (a.user, a.tool) == ("root", "python3 via OpenAI API")
    assert a.process is not None and a.process.pid == 300


def test_helpers() -> None:
    assert base_process_name("Cursor Helper (GPU).exe") == "cursor"
    assert base_process_name("  Code Helper ") == "code"
    assert browser_name("chrome") == "Chrome" and browser_name("chromedriver") is None
    assert is_resolver("systemd-resolved") and not is_resolver("python3")


# --- process cache -----------------------------------------------------------------------------


def test_process_cache_hits_and_detects_pid_reuse(matcher: Matcher) -> None:
    counters = Counters()
    source = FakeProcessSource(raw(1, "systemd", uid=0, ppid=0), raw(50, "bash", ppid=1))
    source.add(raw(100, "python3", uid=0, ppid=50, created=10.0))
    cache = ProcessCache(source, matcher, counters)
    first = cache.info(100)
    assert first is not None
    assert (first.name, first.user, first.ppid, first.parent_name) == (
        "python3",
        "root",
        50,
        "bash",
    )
    calls = source.describe_calls
    assert cache.info(100) is first
    assert source.describe_calls == calls
    assert counters.get("attribution.cache_hit") == 1
    # The OS gives pid 100 to another program: same pid, a later start time.
    source.add(raw(100, "Cursor", uid=0, ppid=1, created=20.0))
    second = cache.info(100)
    assert second is not None
    assert (second.name, second.app_service_id, second.parent_name) == (
        "Cursor",
        "cursor",
        "systemd",
    )
    assert counters.get("attribution.pid_reused") == 1
    source.remove(100)
    assert cache.info(100) is None


def test_process_cache_is_bounded(matcher: Matcher) -> None:
    source = FakeProcessSource(*(raw(p, f"p{p}", ppid=0) for p in range(10, 20)))
    cache = ProcessCache(source, matcher, Counters(), max_entries=3)
    for pid in range(10, 20):
        cache.info(pid)
    calls = source.describe_calls
    cache.info(19)  # recent: cached
    assert source.describe_calls == calls
    cache.info(10)  # evicted long ago: described again
    assert source.describe_calls == calls + 1


# --- inode map over a fake /proc ---------------------------------------------------------------


def _fake_proc(root: Path, pid: int, links: dict[int, str]) -> None:
    fd = root / str(pid) / "fd"
    fd.mkdir(parents=True, exist_ok=True)
    for n, target in links.items():
        (fd / str(n)).symlink_to(target)


def test_inode_map_rescans_on_miss_rate_limited(tmp_path: Path) -> None:
    now = [100.0]
    counters = Counters()
    _fake_proc(tmp_path, 10, {0: "/dev/null", 3: "socket:[555]", 4: "pipe:[9]"})
    (tmp_path / "self").mkdir()
    inodes = InodeMap(counters, tmp_path, min_rescan=1.0, clock=lambda: now[0])
    assert inodes.pid_for(555) == 10
    assert inodes.pid_for(555) == 10
    assert inodes.scans == 1
    _fake_proc(tmp_path, 11, {5: "socket:[777]"})
    assert inodes.pid_for(777) is None  # a miss right after a walk waits for the next window
    assert counters.get("attribution.inode_rescan_limited") == 1
    now[0] += 1.5
    assert inodes.pid_for(777) == 11
    assert inodes.scans == 2


def test_inode_map_notices_a_socket_that_moved(tmp_path: Path) -> None:
    now = [0.0]
    _fake_proc(tmp_path, 10, {3: "socket:[555]"})
    inodes = InodeMap(Counters(), tmp_path, min_rescan=1.0, clock=lambda: now[0])
    assert inodes.pid_for(555) == 10
    (tmp_path / "10" / "fd" / "3").unlink()
    _fake_proc(tmp_path, 12, {3: "socket:[555]"})  # inode reused by another process
    now[0] += 2
    assert inodes.pid_for(555) == 12


# --- socket tables without the kernel ----------------------------------------------------------

Conn = namedtuple("Conn", "fd family type laddr raddr status pid")


def test_psutil_socket_table_refreshes_on_miss_rate_limited() -> None:
    now = [0.0]
    rows: list[Conn] = [
        Conn(3, socket.AF_INET, socket.SOCK_STREAM, (CLIENT, 50000), (SERVER, 443), "E", 10),
        Conn(4, socket.AF_INET6, socket.SOCK_DGRAM, ("::", 40000), (), "NONE", 11),
        Conn(
            5,
            socket.AF_INET6,
            socket.SOCK_STREAM,
            (f"::ffff:{CLIENT}", 50001),
            (SERVER, 443),
            "E",
            12,
        ),
    ]
    table = PsutilSocketTable(1.0, connections=lambda: list(rows), clock=lambda: now[0])
    assert table.find("tcp", CLIENT, 50000, SERVER, 443) == SocketOwner(None, None, 10)
    assert table.find("tcp", CLIENT, 50001, SERVER, 443) == SocketOwner(None, None, 12)
    assert table.find("udp", CLIENT, 40000, SERVER, 53) is None
    assert table.find("udp", CLIENT, 40000, SERVER, 53, allow_unconnected=True) == SocketOwner(
        None, None, 11
    )
    rows.append(
        Conn(6, socket.AF_INET, socket.SOCK_STREAM, (CLIENT, 50002), (SERVER, 443), "E", 13)
    )
    assert table.find("tcp", CLIENT, 50002, SERVER, 443) is None  # rebuilt too recently
    now[0] = 2.0
    assert table.find("tcp", CLIENT, 50002, SERVER, 443) == SocketOwner(None, None, 13)


def test_sock_diag_codec() -> None:
    req = encode_request(socket.AF_INET, "tcp", "10.0.0.1", 5000, "10.0.0.2", 443, ext=2)
    length, kind, flags = struct.unpack_from("=LHH", req)
    assert (length, kind, flags) == (len(req), 20, 1)  # one exact request, no dump
    assert req[16:20] == bytes([socket.AF_INET, socket.IPPROTO_TCP, 2, 0])
    assert struct.unpack_from("!HH4s", req, 24) == (5000, 443, socket.inet_aton("10.0.0.1"))
    # One answer with a tcp_info attribute, then NLMSG_DONE.
    sockid = struct.pack(
        "!HH16s16s",
        5000,
        443,
        socket.inet_aton("10.0.0.1").ljust(16, b"\0"),
        socket.inet_aton("10.0.0.2").ljust(16, b"\0"),
    ) + struct.pack("=III", 0, 1, 2)
    body = bytes([socket.AF_INET, 1, 0, 0]) + sockid + struct.pack("=IIIII", 0, 0, 0, 1000, 4242)
    attr = struct.pack("=HH", 4 + 6, 2) + b"tcpinf" + b"\0\0"
    msg = struct.pack("=LHHLL", 16 + len(body) + len(attr), 20, 2, 1, 0) + body + attr
    done = struct.pack("=LHHLLi", 20, 3, 2, 1, 0, 0)
    sockets, finished, err = decode_messages(msg + done)
    assert (finished, err) == (True, 0)
    [s] = sockets
    assert (s.local, s.lport, s.remote, s.rport) == ("10.0.0.1", 5000, "10.0.0.2", 443)
    assert (s.uid, s.inode, s.tcp_info) == (1000, 4242, b"tcpinf")
    error = struct.pack("=LHHLLi", 36, 2, 0, 1, 0, -2) + b"\0" * 16
    assert decode_messages(error) == ([], True, 2)


def test_options_and_builder(matcher: Matcher, tmp_path: Path) -> None:
    options = Options()
    declare_options(options)
    assert options["mode"] == "endpoint"
    assert options["device.name"] == socket.gethostname()
    user_map = tmp_path / "users.csv"
    user_map.write_text("ip_or_cidr,user\n10.0.0.5,alice\n")
    options.set("mode", "gateway", "agent.yaml:1")
    options.set("gateway.user_map", str(user_map), "agent.yaml:2")
    attributor = build_attributor(options, matcher, Counters())
    assert isinstance(attributor, GatewayAttributor)
    with pytest.raises(Exception, match="mode"):
        options.set("mode", "proxy", "agent.yaml:3")


def _m(rig: Rig, name: str) -> Match:
    m = rig.matcher.match_name(name)
    assert m is not None
    return m


def _unused_uid() -> int:
    uid = 54000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


# --- real sockets on this machine --------------------------------------------------------------

needs_linux = pytest.mark.skipif(not LINUX, reason="sock_diag and /proc are Linux-only")


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


FAMILIES = [
    pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
    pytest.param(
        socket.AF_INET6,
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here"),
    ),
]


@pytest.fixture
def tcp_pair(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    family, host = request.param
    with socket.socket(family) as srv:
        srv.bind((host, 0))
        srv.listen()
        cli = socket.create_connection(srv.getsockname()[:2])
        acc, _ = srv.accept()
        with cli, acc:
            yield cli, acc


def _inode(sock: socket.socket) -> int:
    link = os.readlink(f"/proc/self/fd/{sock.fileno()}")
    return int(link[len("socket:[") : -1])


@needs_linux
@pytest.mark.parametrize(
    "tcp_pair", [p.values for p in FAMILIES], indirect=True, ids=["ipv4", "ipv6"]
)
def test_sock_diag_finds_a_tcp_socket(
    tcp_pair: tuple[socket.socket, socket.socket], table: NetlinkSocketTable
) -> None:
    cli, acc = tcp_pair
    l_addr, l_port = cli.getsockname()[:2]
    r_addr, r_port = cli.getpeername()[:2]
    owner = table.find("tcp", l_addr, l_port, r_addr, r_port)
    assert owner == SocketOwner(uid=os.geteuid(), inode=_inode(cli))
    back = table.find("tcp", r_addr, r_port, l_addr, l_port)
    assert back is not None and back.inode == _inode(acc)
    # The listening socket matches the local port but is not this connection.
    assert table.find("tcp", r_addr, r_port, l_addr, l_port + 1 if l_port < 65535 else 1) is None


@needs_linux
@pytest.mark.parametrize(("family", "host"), [p.values for p in FAMILIES], ids=["ipv4", "ipv6"])
def test_sock_diag_finds_udp_sockets(family: int, host: str, table: NetlinkSocketTable) -> None:
    with (
        socket.socket(family, socket.SOCK_DGRAM) as srv,
        socket.socket(family, socket.SOCK_DGRAM) as connected,
        socket.socket(family, socket.SOCK_DGRAM) as loose,
    ):
        srv.bind((host, 0))
        connected.connect(srv.getsockname()[:2])
        loose.bind((host, 0))
        s_addr, s_port = srv.getsockname()[:2]
        c_addr, c_port = connected.getsockname()[:2]
        owner = table.find("udp", c_addr, c_port, s_addr, s_port)
        assert owner == SocketOwner(uid=os.geteuid(), inode=_inode(connected))
        l_addr, l_port = loose.getsockname()[:2]
        assert table.find("udp", l_addr, l_port, s_addr, s_port) is None
        found = table.find("udp", l_addr, l_port, s_addr, s_port, allow_unconnected=True)
        assert found is not None and found.inode == _inode(loose)


@needs_linux
def test_sock_diag_finds_ipv4_peers_of_dual_stack_sockets(table: NetlinkSocketTable) -> None:
    if not _has_ipv6():
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.socket(socket.AF_INET6) as cli:
            cli.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            cli.connect(("::ffff:127.0.0.1", srv.getsockname()[1]))
            port = cli.getsockname()[1]
            owner = table.find("tcp", "127.0.0.1", port, "127.0.0.1", srv.getsockname()[1])
            assert owner is not None and owner.inode == _inode(cli)


@contextmanager
def _real(matcher: Matcher, counters: Counters) -> Iterator[EndpointAttributor]:
    attributor = EndpointAttributor(matcher, counters, "this-host")
    try:
        yield attributor
    finally:
        attributor.close()


@pytest.fixture
def table() -> Iterator[NetlinkSocketTable]:
    t = NetlinkSocketTable()
    yield t
    t.close()


@needs_linux
def test_real_tcp_connection_is_attributed_to_this_process(matcher: Matcher) -> None:
    counters = Counters()
    with socket.socket() as srv, _real(matcher, counters) as attributor:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as cli:
            src, sport = cli.getsockname()
            o = obs(src=src, sport=sport, dst="127.0.0.1", dport=srv.getsockname()[1])
            a = attributor.attribute(o, _match(matcher, "api.openai.com"), "tcp")
            again = attributor.attribute(o, _match(matcher, "api.openai.com"), "tcp")
    me = psutil.Process()
    assert a.process is not None
    assert (a.process.pid, a.process.name, a.process.uid) == (os.getpid(), me.name(), os.getuid())
    assert a.process.exe == me.exe()
    assert a.process.ppid == os.getppid()
    assert a.user == pwd.getpwuid(os.getuid()).pw_name
    assert a.tool == f"{me.name()} via OpenAI API"
    assert again.process == a.process
    assert counters.get("attribution.cache_hit") >= 1


@needs_linux
def test_real_dns_query_socket_of_a_user_process(matcher: Matcher) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as q, _real(matcher, Counters()) as at:
        q.connect(("127.0.0.53", 53))
        src, sport = q.getsockname()
        o = obs(proto="dns", src=src, sport=sport, dst="127.0.0.53", dport=53)
        a = at.attribute(o, _match(matcher, "api.openai.com"), "udp")
    assert a.process is not None and a.process.pid == os.getpid()
    assert a.user == pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture(scope="module")
def other_user() -> Iterator[pwd.struct_passwd]:
    if not LINUX:
        pytest.skip("a throwaway user needs Linux useradd")
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway OS user needs root")
    name = f"lantern-t{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def _public_python() -> str:
    # The test's own interpreter may live where other users cannot run it (a home directory).
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and os.stat(candidate).st_mode & 0o001:
            return candidate
    pytest.skip("no world-executable python3 for the other user to run")


_CHILD = """
import socket, sys
host, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = socket.create_connection((host, tport))
u = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
u.connect((host, uport))
print(t.getsockname()[1], u.getsockname()[1], flush=True)
sys.stdin.read()
"""


@needs_linux
@pytest.mark.parametrize(("family", "host"), [p.values for p in FAMILIES], ids=["ipv4", "ipv6"])
def test_real_sockets_of_another_user(
    matcher: Matcher, other_user: pwd.struct_passwd, family: int, host: str
) -> None:
    counters = Counters()
    with (
        socket.socket(family) as srv,
        socket.socket(family, socket.SOCK_DGRAM) as usrv,
        _real(matcher, counters) as attributor,
    ):
        srv.bind((host, 0))
        srv.listen()
        usrv.bind((host, 0))
        tport, uport = srv.getsockname()[1], usrv.getsockname()[1]
        child = subprocess.Popen(
            [_public_python(), "-I", "-c", _CHILD, host, str(tport), str(uport)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            user=other_user.pw_uid,
            group=other_user.pw_gid,
            extra_groups=[],
            cwd="/",
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, "the child process did not connect"
            c_tport, c_uport = map(int, line.split())
            acc, _ = srv.accept()
            with acc:
                tcp = attributor.attribute(
                    obs(src=host, sport=c_tport, dst=host, dport=tport),
                    _match(matcher, "api.anthropic.com"),
                    "tcp",
                )
                udp = attributor.attribute(
                    obs(proto="quic", src=host, sport=c_uport, dst=host, dport=uport),
                    _match(matcher, "api.anthropic.com"),
                    "udp",
                )
                name = psutil.Process(child.pid).name()
        finally:
            child.communicate(timeout=10)  # closes stdin (the child exits) and both pipes
    for a in (tcp, udp):
        assert a.process is not None
        assert (a.process.pid, a.process.uid) == (child.pid, other_user.pw_uid)
        assert a.process.name == name
        assert a.process.ppid == os.getpid()
        assert a.user == other_user.pw_name
        assert a.tool == f"{name} via Claude API"


@needs_linux
def test_psutil_sources_on_this_machine(matcher: Matcher) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as cli:
            src, sport = cli.getsockname()
            owner = PsutilSocketTable().find("tcp", src, sport, "127.0.0.1", srv.getsockname()[1])
    assert owner is not None and owner.pid == os.getpid()
    info = ProcessCache(PsutilProcessSource(), matcher, Counters()).info(os.getpid())
    assert info is not None and info.pid == os.getpid()


@needs_linux
def test_sock_diag_dump_sees_a_listening_socket() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port, inode = srv.getsockname()[1], _inode(srv)
        diag = SockDiag()
        try:
            found = [s for s in diag.dump(socket.AF_INET, "tcp") if s.lport == port]
        finally:
            diag.close()
    assert [s.inode for s in found] == [inode]


def _match(matcher: Matcher, name: str) -> Match:
    m = matcher.match_name(name)
    assert m is not None
    return m
