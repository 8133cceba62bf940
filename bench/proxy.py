"""Benchmark the metering proxy: latency it adds, requests/s, and time to first byte of a stream.

One loopback HTTPS "provider" (answering for api.openai.com with its own test CA), the real
mitmdump + Lantern addon under `MeteringSupervisor`, the agent's receiver and spool, all from
the canary test's kit. Each case runs DIRECT (client → server) and PROXY (client → proxy →
server) in the same run, sequentially, one keep-alive connection per side:

  chat      non-streaming chat completion (~1 KB JSON answer with usage)
  stream    SSE chat completion, 20 events
  ttfb      streamed answer whose first event leaves at once and the rest 50 ms later:
            time until the client has the first event

    .venv/bin/python bench/proxy.py [--requests 300]

Prints p50/p99 per request, requests/s, the added latency (PROXY - DIRECT at p50/p99), and TTFB.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.metering.proxykit import (
    FakeProvider,
    Meter,
    Received,
    Reply,
    make_server_pki,
    remove_workdir,
    running_meter,
    shared_workdir,
)

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


def run_case(
    make: Callable[[], http.client.HTTPSConnection], kind: str, n: int
) -> tuple[list[float], float]:
    conn = make()
    body = request_body(kind)
    for _ in range(5):  # warm up: TLS, leaf cert generation, connection reuse
        one(conn, body, kind == "ttfb")
    times = []
    start = time.perf_counter()
    for _ in range(n):
        times.append(one(conn, body, kind == "ttfb"))
    wall = time.perf_counter() - start
    conn.close()
    return times, n / wall


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    work = shared_workdir()
    try:
        up = work / "upstream"
        up.mkdir()
        up.chmod(0o755)
        ca, cert, key = make_server_pki(up, [HOST])
        with FakeProvider(cert, key, route) as server, running_meter(server.port, ca, work) as m:
            report(m, server, ca, args.requests)
    finally:
        remove_workdir(work)
    return 0


def report(m: Meter, server: FakeProvider, ca: Path, n: int) -> None:
    def direct() -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.check_hostname = False  # the cert names api.openai.com; we dial 127.0.0.1
        return http.client.HTTPSConnection("127.0.0.1", server.port, context=ctx, timeout=30)

    def proxied() -> http.client.HTTPSConnection:
        return m.connect(HOST, timeout=30)

    rows = []
    for kind in ("chat", "stream", "ttfb"):
        d, d_rps = run_case(direct, kind, n)
        p, p_rps = run_case(proxied, kind, n)
        rows.append((kind, d, p, d_rps, p_rps))
    print(f"{'case':8} {'side':7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for kind, d, p, d_rps, p_rps in rows:
        print(f"{kind:8} {'direct':7} {pct(d, 0.5):8.2f} {pct(d, 0.99):8.2f} {d_rps:8.0f}")
        print(f"{kind:8} {'proxy':7} {pct(p, 0.5):8.2f} {pct(p, 0.99):8.2f} {p_rps:8.0f}")
        added50 = pct(p, 0.5) - pct(d, 0.5)
        added99 = pct(p, 0.99) - pct(d, 0.99)
        label = "TTFB" if kind == "ttfb" else "per request"
        print(f"{kind:8} {'added':7} {added50:8.2f} {added99:8.2f}   ({label}, proxy - direct)")
    m.supervisor.stop()
    time.sleep(0.5)
    recs = len(m.spool.usage_records())
    print(f"usage records spooled: {recs} (expected {3 * (n + 5)})")


if __name__ == "__main__":
    sys.exit(main())
