"""Benchmark the metering proxy: latency it adds, requests/s, and time to first byte of a stream.

One loopback HTTPS "provider" (answering for api.openai.com with its own test CA), the real
metering proxy (`agent.metering.proxy`: mitmproxy with Lantern's addon) under
`MeteringSupervisor`, the agent's receiver and spool, all from the canary test's kit. The
provider, and the agent side (supervisor, proxy, receiver and spool), each run in a process of
their own, as they would on a device: none of them takes the client's interpreter lock. Each
case runs DIRECT (client → server), PROXY (client → Lantern's proxy → server) and MITMDUMP
(stock mitmdump from the same environment, bodies streamed, no Lantern addon: what plain
mitmproxy adds) in the same run, one keep-alive connection per side; the sides take turns in
`ROUNDS` rounds, each turn after a pause (`SETTLE`) in which the last turn's background work
(the agent side's spooling) ends:

  chat      non-streaming chat completion (~1 KB JSON answer with usage)
  stream    SSE chat completion, 20 events
  ttfb      streamed answer whose first event leaves at once and the rest 50 ms later:
            time until the client has the first event

    .venv/bin/python bench/proxy.py [--requests 300]

Prints p50/p99 per request, requests/s, the added latency (PROXY - DIRECT at p50/p99), and TTFB,
next to what stock mitmdump adds (MITMDUMP - DIRECT). Lantern's proxy loads only the addons
metering needs where mitmdump loads 36, and meters when it has nothing to relay, so it can add
less than mitmdump does although it meters every call. Requests follow each other at once:
the metering of one call then runs while the client and server prepare the next, which on two
cores lengthens the tail (p99) more than the median.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from agent.metering.venv import mitmdump_path
from tests.metering.proxykit import (
    REDIRECT_ADDON,
    FakeProvider,
    Received,
    Reply,
    free_port,
    make_server_pki,
    meter_venv,
    remove_workdir,
    running_meter,
    shared_workdir,
)

WARMUP = 50  # per connection: TLS, leaf certificates, first-call imports in the addon

HOST = "api.openai.com"
CHAT = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 180}}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 180, "total_tokens": 201},
    }
).encode()


def _sse_events(n: int) -> list[bytes]:
    ev = {"object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}
    out = [
        b"data: "
        + json.dumps({**ev, "choices": [{"index": 0, "delta": {"content": "tok "}}]}).encode()
        + b"\n\n"
        for _ in range(n)
    ]
    usage = {"prompt_tokens": 21, "completion_tokens": n, "total_tokens": 21 + n}
    out.append(b"data: " + json.dumps({**ev, "choices": [], "usage": usage}).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


STREAM = _sse_events(20)


class _Delay:
    """Holds a reply's later chunks for a fixed time (an Event that never fires, waited on)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def wait(self, timeout: float | None = None) -> bool:
        time.sleep(self.seconds)
        return True


def route(req: Received) -> Reply:
    body = req.body
    if b'"ttfb"' in body:
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=STREAM,
            chunked=True,
            hold_after_first=_Delay(0.05),  # type: ignore[arg-type]
        )
    if b'"stream": true' in body:
        return Reply(headers=[("Content-Type", "text/event-stream")], chunks=STREAM, chunked=True)
    return Reply(headers=[("Content-Type", "application/json")], chunks=[CHAT])


def request_body(kind: str) -> bytes:
    msg = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 50}]}
    if kind != "chat":
        msg["stream"] = True
    if kind == "ttfb":
        msg["ttfb"] = True
    return json.dumps(msg, separators=(", ", ": ")).encode()


HEADERS = {"Authorization": "Bearer sk-proj-" + "x" * 40, "Content-Type": "application/json"}


def one(conn: http.client.HTTPSConnection, body: bytes, first_only: bool = False) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers=HEADERS)
    resp = conn.getresponse()
    if first_only:
        resp.readline()
        t = time.perf_counter() - t0
        resp.read()
        return t
    resp.read()
    return time.perf_counter() - t0


ROUNDS = 5  # the sides take turns, so a slow spell of the machine does not fall on one side
SETTLE = 0.3  # s before each turn: the last turn's spooling on the agent side is done by then


def run_case(
    makers: Sequence[Callable[[], http.client.HTTPSConnection]],
    kind: str,
    n: int,
    on_side: Callable[[int, float], None] = lambda side, seconds: None,
) -> list[tuple[list[float], float]]:
    """``n`` requests per side, in `ROUNDS` turns; per side the times and requests/s.
    ``on_side(i, wall)`` is told after each turn of side ``i`` (CPU accounting)."""
    conns = [make() for make in makers]
    body = request_body(kind)
    for conn in conns:
        for _ in range(WARMUP):
            one(conn, body, kind == "ttfb")
    times: list[list[float]] = [[] for _ in conns]
    walls = [0.0 for _ in conns]
    for r in range(ROUNDS):
        count = n // ROUNDS + (1 if r < n % ROUNDS else 0)
        for i, conn in enumerate(conns):
            time.sleep(SETTLE)
            start = time.perf_counter()
            for _ in range(count):
                times[i].append(one(conn, body, kind == "ttfb"))
            walls[i] += time.perf_counter() - start
            on_side(i, walls[i])
    for conn in conns:
        conn.close()
    return [(t, len(t) / w) for t, w in zip(times, walls, strict=True)]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


@contextmanager
def bare_mitmproxy(
    upstream_port: int, upstream_ca: Path, work: Path
) -> Iterator[tuple[int, Path, int]]:
    """Stock mitmdump from the metering environment with the test redirect and nothing of
    Lantern's: the options the supervisor sets, bodies streamed. Yields its port, CA, pid."""
    confdir = work / "bare-mitmproxy"
    confdir.mkdir()
    port = free_port()
    cmd = [
        str(mitmdump_path(meter_venv())),
        *("--mode", "regular", "--listen-host", "127.0.0.1", "--listen-port", str(port)),
        *("-s", str(REDIRECT_ADDON)),
        *("--set", f"test_upstream_port={upstream_port}"),
        *("--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"),
        *("--set", "connection_strategy=lazy"),
        *("--set", f"confdir={confdir}", "--set", "flow_detail=0"),
        *("--set", "termlog_verbosity=error", "--set", "onboarding=false"),
        # bodies streamed through, as the addon streams them through its parsers
        *("--set", "stream_large_bodies=1"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"bare mitmdump did not start: {err[-2000:]}")
            time.sleep(0.1)
        yield port, confdir / "mitmproxy-ca-cert.pem", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--role", choices=("provider", "meter"), help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "provider":
        return serve_provider(args.work)
    if args.role == "meter":
        return serve_meter(args.work, args.upstream_port)
    work = shared_workdir()
    try:
        up = work / "upstream"
        up.mkdir()
        up.chmod(0o755)
        ca, _, _ = make_server_pki(up, [HOST])
        with (
            _child("provider", work) as (provider, server_port),
            _child("meter", work, "--upstream-port", server_port) as (meter, meter_out),
            bare_mitmproxy(int(server_port), ca, work) as bare,
        ):
            proxy_port, client_ca = meter_out.split()
            report((int(proxy_port), Path(client_ca)), bare, int(server_port), ca, args.requests)
            meter.stdin.close()  # type: ignore[union-attr]  # the meter stops and counts
            _, records, proxy_cpu, agent_cpu = meter.stdout.readline().split()  # type: ignore[union-attr]
            calls = 3 * (args.requests + WARMUP)
            print(f"usage records spooled: {records} (expected {calls})")
            print(
                f"CPU per metered call: proxy {float(proxy_cpu) / calls * 1e3:.2f} ms, "
                f"agent side {float(agent_cpu) / calls * 1e3:.2f} ms"
            )
            del provider
    finally:
        remove_workdir(work)
    return 0


@contextmanager
def _child(role: str, work: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """This script in another role; yields the process and the first line it prints."""
    cmd = [sys.executable, __file__, "--role", role, "--work", str(work), *extra]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stdout.readline().strip() if proc.stdout else ""
            if not line:
                raise SystemExit(f"the {role} process did not start")
            yield proc, line
        finally:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(30)


def serve_provider(work: Path) -> int:
    up = work / "upstream"
    cert, key = up / "server.pem", up / "server-key.pem"  # as make_server_pki names them
    with FakeProvider(cert, key, route) as server:
        print(server.port, flush=True)
        sys.stdin.read()  # until the benchmark closes our stdin (or terminates us)
    return 0


def serve_meter(work: Path, upstream_port: int) -> int:
    ca = work / "upstream" / "upstream-ca.pem"
    with running_meter(upstream_port, ca, work) as m:
        print(m.proxy_port, m.client_ca, flush=True)
        proxy, agent = psutil.Process(m.supervisor._proc.pid), psutil.Process()  # type: ignore[union-attr]
        proxy_cpu0, agent_cpu0 = sum(proxy.cpu_times()[:2]), sum(agent.cpu_times()[:2])
        sys.stdin.read()
        proxy_cpu = sum(proxy.cpu_times()[:2]) - proxy_cpu0
        m.supervisor.stop()  # flushes the addon's channel before the receiver stops
        with contextlib.suppress(Exception):
            time.sleep(0.5)
        agent_cpu = sum(agent.cpu_times()[:2]) - agent_cpu0
        # records, and CPU seconds of the proxy and of this agent-side process (receiver,
        # attribution, pricing, spool) while the calls ran
        print("records", len(m.spool.usage_records()), proxy_cpu, agent_cpu, flush=True)
    return 0


def report(
    meter: tuple[int, Path], bare: tuple[int, Path, int], server_port: int, ca: Path, n: int
) -> None:
    def direct() -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # the cert names api.openai.com; we dial 127.0.0.1
        return http.client.HTTPSConnection("127.0.0.1", server_port, context=ctx, timeout=30)

    def through(proxy: tuple[int, Path]) -> Callable[[], http.client.HTTPSConnection]:
        def connect() -> http.client.HTTPSConnection:
            port, proxy_ca = proxy
            ctx = ssl.create_default_context(cafile=str(proxy_ca))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
            conn.set_tunnel(HOST, 443)
            return conn

        return connect

    proxied, mitmdump = through(meter), through(bare[:2])  # type: ignore[arg-type]
    bare_proc = psutil.Process(bare[2])
    bare_cpu = 0.0
    cpu_mark = [0.0]

    def account(side: int, _wall: float) -> None:
        nonlocal bare_cpu
        cpu = sum(bare_proc.cpu_times()[:2])
        if side == 1:  # stock mitmdump: its CPU during its own turns
            bare_cpu += cpu - cpu_mark[0]
        cpu_mark[0] = cpu

    rows = []
    for kind in ("chat", "stream", "ttfb"):
        cpu_mark[0] = sum(bare_proc.cpu_times()[:2])
        (d, d_rps), (b, b_rps), (p, p_rps) = run_case([direct, mitmdump, proxied], kind, n, account)
        rows.append((kind, d, b, p, d_rps, b_rps, p_rps))
    print(f"{'case':8} {'side':9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for kind, d, b, p, d_rps, b_rps, p_rps in rows:
        print(f"{kind:8} {'direct':9} {pct(d, 0.5):8.2f} {pct(d, 0.99):8.2f} {d_rps:8.0f}")
        print(f"{kind:8} {'mitmdump':9} {pct(b, 0.5):8.2f} {pct(b, 0.99):8.2f} {b_rps:8.0f}")
        print(f"{kind:8} {'proxy':9} {pct(p, 0.5):8.2f} {pct(p, 0.99):8.2f} {p_rps:8.0f}")
        label = "TTFB" if kind == "ttfb" else "per request"
        for name, x, y in (("added", p, d), ("mitmdump", b, d)):
            a50, a99 = pct(x, 0.5) - pct(y, 0.5), pct(x, 0.99) - pct(y, 0.99)
            what = {
                "added": "proxy - direct",
                "mitmdump": "stock mitmdump - direct",
            }[name]
            print(f"{kind:8} {name:9} {a50:8.2f} {a99:8.2f}   ({label}, {what})")
    calls = 3 * n  # its turns only, warm-up excluded
    print(f"CPU per call of stock mitmdump (no metering): {bare_cpu / calls * 1e3:.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
