"""Benchmark collector ingest: N enrolled agents over mutual TLS against plain sqlite3 inserts.

Starts a real collector (a subprocess, as ``lantern collector serve`` runs it) on loopback; N
agent processes each enrol with their own key and certificate, then send ``--batches`` batches
of ``--batch`` session events as fast as acknowledgements come back (one batch in flight per
agent). Prints events/s stored (checked against the database afterwards), p50/p99 batch
latency, and, in the same run, the ceiling: the same rows inserted with plain ``sqlite3``
(executemany, all in one transaction, same schema, indexes and pragmas), and the ratio.

    .venv/bin/python bench/ingest.py [--agents 100] [--batch 500] [--batches 20]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_request(agent: int, batch: int, size: int) -> Any:
    from collector.api import lantern_pb2 as pb

    events = []
    for i in range(size):
        # random-looking ids, as agents make them (insert order is random in the indexes)
        sid = hashlib.blake2b(f"{agent}-{batch}-{i}".encode(), digest_size=8).hexdigest()
        t = 1_760_000_000.0 + batch * 60 + i * 0.01
        events.append(
            pb.Event(
                event_id=f"{sid}:1",
                session=pb.SessionEvent(
                    id=sid,
                    version=1,
                    user=f"user{agent % 37}",
                    device=f"host-{agent}",
                    tool="ChatGPT",
                    service_id="openai-chatgpt",
                    category="assistant",
                    process_name="firefox",
                    process_exe="/usr/lib/firefox/firefox",
                    first_seen=t,
                    last_seen=t + 30.0,
                    connections=3,
                    hostnames=["chatgpt.com", "ab.chatgpt.com"],
                    seen_as=["dns", "tls"],
                    bytes_up=48213,
                    bytes_down=912400,
                    closed=True,
                ),
            )
        )
    return pb.SubmitRequest(batch_id=f"a{agent}-b{batch}", events=events)


def agent_main(*a: Any) -> None:
    out = a[-1]
    try:
        _agent_main(*a)
    except Exception as exc:
        out.put((a[0], f"{type(exc).__name__}: {exc}", [], 0.0))


def _agent_main(
    n: int, token: str, enroll_port: int, ingest_port: int, ca_pem: bytes, args: Any,
    ready: Any, go: Any, out: Any,
) -> None:  # fmt: skip
    import grpc

    from collector.api import lantern_pb2 as pb
    from collector.api import lantern_pb2_grpc as pbg
    from collector.testing import new_key_and_csr

    key, csr = new_key_and_csr()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem)
    with grpc.secure_channel(f"127.0.0.1:{enroll_port}", creds) as ch:
        resp = pbg.EnrollmentStub(ch).Enroll(
            pb.EnrollRequest(
                token=token, csr_der=csr, agent=pb.AgentInfo(hostname=f"host-{n}", mode="endpoint")
            ),
            timeout=120,
        )
    cert_pem = x509.load_der_x509_certificate(resp.certificate_der).public_bytes(
        serialization.Encoding.PEM
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Serialised before the clock starts, so the simulated agents spend their CPU on the
    # connection, not on building messages (the collector shares the machine with them).
    requests = [make_request(n, b, args.batch).SerializeToString() for b in range(args.batches)]
    mtls = grpc.ssl_channel_credentials(ca_pem, key_pem, cert_pem)
    with grpc.secure_channel(f"127.0.0.1:{ingest_port}", mtls) as ch:
        submit = ch.unary_unary(
            "/lantern.v1.Ingest/Submit",
            request_serializer=None,  # bytes as they are
            response_deserializer=pb.SubmitResponse.FromString,
        )
        grpc.channel_ready_future(ch).result(timeout=120)
        ready.put(n)
        go.wait()
        latencies = []
        accepted = 0
        for req in requests:
            t0 = time.perf_counter()
            r = submit(req, timeout=120)
            latencies.append(time.perf_counter() - t0)
            accepted += r.accepted
        out.put((n, accepted, latencies, time.time()))


def ceiling(rows: list[tuple[list[Any], list[Any]]], path: Path) -> float:
    """Events/s of plain sqlite3 inserting the same rows (same schema, indexes and pragmas)
    with executemany, all in one transaction: no network, no TLS, no parsing, one commit."""
    from collector.store import (
        _EVENT_INSERT,
        _SESSION_UPSERT,
        CACHE_KIB,
        MIGRATIONS,
        PAGE_SIZE,
        WAL_CHECKPOINT_BYTES,
    )

    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // PAGE_SIZE}")
    db.executescript(MIGRATIONS[0])
    n = 0
    t0 = time.perf_counter()
    db.execute("BEGIN")
    for events, sessions in rows:
        db.executemany(_EVENT_INSERT, events)
        db.executemany(_SESSION_UPSERT, sessions)
        n += len(events)
    db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return n / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--batches", type=int, default=20, help="batches per agent")
    ap.add_argument(
        "--workers", type=int, default=64, help="the collector's server.workers (default 32)"
    )
    args = ap.parse_args()

    from collector.testing import running_collector

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["grpc", "collector.api.lantern_pb2_grpc", "collector.testing"])
    total = args.agents * args.batches * args.batch
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_collector(
            Path(tmp),
            rate_limit_per_second=1e6,
            rate_limit_burst=1_000_000,
            # every simulated agent enrols from 127.0.0.1: one address, many agents
            rate_limit_enroll_per_second=1e6,
            rate_limit_enroll_burst=1_000_000,
            limits_max_batch_events=max(5000, args.batch),
            server_workers=args.workers,
        ) as c,
    ):
        token = c.create_token("1h", uses=args.agents)
        ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(
                target=agent_main,
                args=(n, token, c.enroll_port, c.ingest_port, c.ca_cert_pem, args, ready, go, out),
            )
            for n in range(args.agents)
        ]
        t_setup = time.time()
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)
        print(
            f"{args.agents} agents enrolled and connected in {time.time() - t_setup:.1f} s; "
            f"sending {args.batches} x {args.batch} events each",
            flush=True,
        )
        import psutil

        server = psutil.Process(c.pid)
        ingest_proc = next(
            p for p in server.children() if "resource_tracker" not in " ".join(p.cmdline())
        )
        cpu0 = sum(server.cpu_times()[:2])
        icpu0 = sum(ingest_proc.cpu_times()[:2])
        machine0 = psutil.cpu_times()
        t0 = time.time()
        go.set()
        results = [out.get(timeout=1200) for _ in procs]
        failed = [r for r in results if isinstance(r[1], str)]
        if failed:
            sys.exit(f"{len(failed)} agents failed, e.g. agent {failed[0][0]}: {failed[0][1]}")
        t_end = max(r[3] for r in results)
        server_cpu = sum(server.cpu_times()[:2]) - cpu0
        ingest_cpu = sum(ingest_proc.cpu_times()[:2]) - icpu0
        machine1 = psutil.cpu_times()
        busy = (machine1.user + machine1.system) - (machine0.user + machine0.system)
        for p in procs:
            p.join()
        elapsed = t_end - t0
        accepted = sum(r[1] for r in results)
        latencies = sorted(x for r in results for x in r[2])
        db = sqlite3.connect(c.db_path)
        stored = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        sessions = db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
        db.close()
        code = c.stop()
        commits = [line for line in c.log().splitlines() if "batches written in" in line]

        # the same rows, built the way the collector builds them, for the ceiling
        from collector.convert import submit_to_batch

        rows = []
        for n in range(args.agents):
            for b in range(args.batches):
                batch = submit_to_batch(f"agt-{n}", make_request(n, b, args.batch), t0, 10**9)
                rows.append((batch.events, batch.sessions))
        sqlite_rate = ceiling(rows, Path(tmp) / "ceiling.db")

    rate = stored / elapsed
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    result = {
        "agents": args.agents,
        "batch": args.batch,
        "events_sent": total,
        "events_accepted": accepted,
        "events_stored": stored,
        "sessions_stored": sessions,
        "seconds": round(elapsed, 2),
        "collector_events_per_s": round(rate),
        "batch_latency_ms_p50": round(p50, 1),
        "batch_latency_ms_p99": round(p99, 1),
        "sqlite3_events_per_s": round(sqlite_rate),
        "ratio_collector_to_sqlite3": round(rate / sqlite_rate, 3),
        "collector_cpu_s": round(server_cpu, 2),
        "ingest_process_cpu_s": round(ingest_cpu, 2),
        "machine_busy_cpu_s": round(busy, 2),
        "collector_exit_code": code,
    }
    print(f"collector: {rate:,.0f} events/s stored ({stored:,} of {total:,} in {elapsed:.2f} s)")
    print(
        f"CPU over {elapsed:.1f} s: collector gRPC process {server_cpu:.1f} s, its ingest "
        f"process {ingest_cpu:.1f} s, whole machine {busy:.1f} s "
        f"of {elapsed * (os.cpu_count() or 1):.1f} s ({os.cpu_count()} cores; the agents and "
        "anything else running share them)"
    )
    print(commits[-1].split("INFO ")[-1] if commits else "")
    print(f"batch latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(
        f"sqlite3 executemany ceiling: {sqlite_rate:,.0f} events/s; ratio {rate / sqlite_rate:.2f}"
    )
    print(json.dumps(result))
    if stored != total or accepted != total:
        sys.exit("not every event was stored exactly once")


if __name__ == "__main__":
    main()
