"""Real-proxy fixtures for the canary test and the proxy bench: a loopback HTTPS "AI provider"
with its own test CA, the real mitmdump under `MeteringSupervisor`, the agent's usage receiver
and spool, and an ``http.client`` connection through the proxy that trusts the metering CA.

Every byte stays on loopback: the proxy's upstream connections are rewritten to the local server
by the test-only `upstream_redirect.py` addon.
"""

from __future__ import annotations

import datetime
import http.client
import os
import pwd
import shutil
import socket
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import state
from agent.counters import Counters
from agent.metering import supervisor as sup
from agent.metering.usage import UsageReceiver
from agent.metering.venv import DEFAULT_PATH, ensure_meter_venv
from agent.options import Options
from agent.spool import Spool

REDIRECT_ADDON = Path(__file__).with_name("upstream_redirect.py")
# The marks of every test that runs the real metering stack.
METER_TEST_MARKS = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="SO_PEERCRED and the meter are Linux"),
]
HOSTS = (
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_server_pki(directory: Path, hostnames: Iterable[str]) -> tuple[Path, Path, Path]:
    """A test CA and one server certificate for ``hostnames``: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Lantern test upstream CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = list(hostnames)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "upstream-ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for p in paths:
        p.chmod(0o644)  # the metering user reads the CA; the key is a throwaway test key
    return paths


@dataclass
class Reply:
    """What the fake provider answers: chunks are written (and flushed) one by one."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    chunked: bool = False  # Transfer-Encoding: chunked (streams) instead of Content-Length
    hold_after_first: threading.Event | None = None  # wait for it after the first chunk


@dataclass
class Received:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    protocol: str = "HTTP/1.1"  # as the server spoke it: HTTP/1.1 or HTTP/2


Route = Callable[[Received], Reply]


class _AlpnServer(ThreadingHTTPServer):
    """Hands connections that chose ``h2`` by ALPN to the HTTP/2 server, the rest to HTTP/1.1."""

    provider: FakeProvider

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and request.selected_alpn_protocol() == "h2":
            from tests.metering.h2server import serve_h2_connection

            serve_h2_connection(request, self.provider.answer)
            return
        super().finish_request(request, client_address)


class _AlpnServer6(_AlpnServer):
    address_family = socket.AF_INET6


class FakeProvider:
    """A threaded HTTPS server on 127.0.0.1 answering with `Reply` objects by path.

    It speaks HTTP/1.1, and HTTP/2 too when ``alpn`` offers ``h2`` (`tests.metering.h2server`).
    ``bind`` picks another address (the namespace tests serve on 10.231.0.2:443 and fd31::2).
    """

    def __init__(
        self,
        cert: Path,
        key: Path,
        route: Route,
        alpn: Sequence[str] = ("http/1.1",),
        bind: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.route = route
        self.received: list[Received] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # real providers answer without Nagle delays

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    body = self._read_chunked()
                else:
                    length = int(self.headers.get("content-length") or 0)
                    body = self.rfile.read(length) if length else b""
                got = Received(self.command, self.path, list(self.headers.items()), body)
                reply = provider.answer(got)
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    total = sum(len(c) for c in reply.chunks)
                    self.send_header("Content-Length", str(total))
                self.end_headers()
                for i, chunk in enumerate(reply.chunks):
                    if reply.chunked:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    else:
                        self.wfile.write(chunk)
                    self.wfile.flush()
                    if i == 0 and reply.hold_after_first is not None:
                        reply.hold_after_first.wait(15)
                if reply.chunked:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

            def _read_chunked(self) -> bytes:
                body = bytearray()
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()  # the CRLF after the chunk
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)

            do_GET = do_POST = _any  # noqa: N815

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(list(alpn))
        server_class = _AlpnServer6 if ":" in bind[0] else _AlpnServer
        self.server = server_class(bind, Handler)
        self.server.provider = self
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, got: Received) -> Reply:
        self.received.append(got)
        return self.route(got)

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def meter_venv() -> Path:
    """The cached metering environment (created on first use: about a minute)."""
    ensure_meter_venv(DEFAULT_PATH)
    return DEFAULT_PATH


def shared_workdir() -> Path:
    """A fresh directory the unprivileged metering user can traverse (tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="lantern-meter-test-"))
    d.chmod(0o755)
    return d


def meter_user() -> str:
    return "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name


def metering_options(work: Path, values: dict[str, object]) -> Options:
    """The options a metering supervisor reads, its state under ``work``, metering on and run
    as `meter_user`; ``values`` sets more or overrides."""
    options = Options()
    state.declare_options(options)
    sup.declare_options(options)
    for key, value in {
        "state.dir": str(work / "state"),
        "metering.enabled": True,
        "metering.user": meter_user(),
        "metering.dir": str(work / "meter"),
        **values,
    }.items():
        options.set(key, value, "test")
    return options


@dataclass
class Meter:
    work: Path
    proxy_port: int
    client_ca: Path  # the exported metering CA (PEM)
    spool: Spool
    supervisor: sup.MeteringSupervisor
    receiver: UsageReceiver
    counters: Counters

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def client_context(self) -> ssl.SSLContext:
        """Verifies servers against the device's metering CA only (as a device that trusts it)."""
        return ssl.create_default_context(cafile=str(self.client_ca))

    def connect(self, host: str, timeout: float = 15.0) -> http.client.HTTPSConnection:
        ctx = self.client_context()
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.proxy_port, timeout=timeout, context=ctx
        )
        conn.set_tunnel(host, 443)
        return conn

    def written_files(self) -> list[Path]:
        """Every file Lantern wrote during the run (state, runtime, metering dir incl. logs)."""
        return sorted(p for p in self.work.rglob("*") if p.is_file() and "upstream" not in p.parts)


@contextmanager
def running_meter(
    upstream_port: int | None,
    upstream_ca: Path | None,
    work: Path,
    *,
    connection_strategy: str = "lazy",
    mode: str = "regular",
    listen_port: int | None = None,
    redirect: bool = False,
    min_backoff: float = 1.0,
) -> Iterator[Meter]:
    """The real metering stack on loopback; everything it writes lands under ``work``.

    ``connection_strategy="eager"`` (mitmproxy's default, the product's) connects upstream
    before answering the client's TLS handshake, so the client gets the ALPN the server chose.
    ``upstream_port=None`` leaves upstream connections where the client meant them to go: only
    inside a network namespace the test made (`tests.metering.netns_meter`). ``upstream_ca`` is
    the test provider's CA, trusted through ``metering.upstream_ca``; None leaves mitmproxy's
    own CA list, which does not know it.
    """
    venv = meter_venv()
    port = listen_port or free_port()
    options = metering_options(
        work,
        {
            "state.runtime_dir": str(work / "run"),
            "metering.mode": mode,
            "metering.listen_port": port,
            "metering.venv": str(venv),
            "metering.upstream_ca": None if upstream_ca is None else str(upstream_ca),
            "metering.redirect": redirect,
        },
    )
    counters = Counters()
    st = state.StateDir.from_options(options)
    st.create()
    upstream = (
        ["-s", str(REDIRECT_ADDON), "--set", f"test_upstream_port={upstream_port}"]
        if upstream_port is not None
        else []
    )
    supervisor = sup.MeteringSupervisor(
        options,
        counters,
        extra_args=[*upstream, "--set", f"connection_strategy={connection_strategy}"],
        min_backoff=min_backoff,
    )
    supervisor.prepare()
    spool = Spool(st.spool, counters=counters)
    receiver = UsageReceiver(
        supervisor.paths.socket,
        supervisor.uid,
        spool.put_usage,
        device="canary-host",
        counters=counters,
        socket_owner=supervisor.owner,
    )
    receiver.start()
    supervisor.start()
    try:
        if not supervisor.wait_ready(60):
            log = supervisor.paths.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"metering proxy did not start: {log}")
        yield Meter(
            work,
            port,
            st.runtime / "lantern-metering-ca.pem",
            spool,
            supervisor,
            receiver,
            counters,
        )
    finally:
        supervisor.stop()
        receiver.stop()
        spool.close()


def remove_workdir(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
