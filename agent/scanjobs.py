"""Scanning one capture with several processes, each owning a share of the address pairs."""

from __future__ import annotations

import heapq
import multiprocessing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from agent.capture.pcapfile import PcapFileSource
from agent.counters import Counters
from agent.exceptions import CaptureError
from agent.pipeline import NameExtractor, PipelineLimits
from agent.records import Observation

_BATCH = 512
# (packet number, Observation's fields): cheap to pickle, and merging on the packet number
# gives exactly the single-process order even when capture timestamps go backwards
ObsTuple = tuple[int, float, str, int, str, int, str, str]
_PROGRESS_EVERY = 20000
# Every shard reads and decodes every packet, and parses all DNS to keep its IP→name cache
# whole, so these counters are the same in every shard: take them from one, don't add them up.
_SHARED_COUNTERS = ("pcap.", "decode.", "ip.", "dns.", "dnscache.")


@dataclass
class JobResult:
    packets: int = 0
    truncated: bool = False
    counters: dict[str, int] = field(default_factory=dict)


def _worker(
    path: Path, index: int, count: int, limits: PipelineLimits | None, conn: Connection
) -> None:
    try:
        counters = Counters()
        source = PcapFileSource(path, counters)
        extractor = NameExtractor(counters, limits, shard=(index, count))
        on_frame = extractor.on_frame
        batch: list[ObsTuple] = []
        n = 0
        for ts, linktype, frame in source.frames():
            n += 1
            obs = on_frame(ts, linktype, frame)
            if obs:
                batch.extend(
                    (n, o.ts, o.src, o.sport, o.dst, o.dport, o.proto, o.name) for o in obs
                )
                if len(batch) >= _BATCH:
                    conn.send(("obs", batch))
                    batch = []
            if index == 0 and n % _PROGRESS_EVERY == 0:
                done, total = source.progress()
                conn.send(("progress", done, total, n))
        source.close()
        conn.send(("obs", batch))
        conn.send(("done", n, counters.snapshot(), source.truncated))
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def sharded_observations(
    path: Path,
    jobs: int,
    limits: PipelineLimits | None,
    result: JobResult,
    progress: Callable[[int, int, int], None] | None = None,
) -> Iterator[Observation]:
    """Observations of ``path`` in capture order, found by ``jobs`` processes in parallel.

    Each process reads the whole file (memory-mapped, so reading is cheap) but decodes flows
    only for the address pairs that hash to it; the parent merges their time-ordered streams.
    """
    PcapFileSource(path).close()  # a bad file fails here, with the one-line error, not in a child
    ctx = multiprocessing.get_context("fork")
    conns: list[Connection] = []
    procs = []
    for index in range(jobs):
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(path, index, jobs, limits, child_end), daemon=True)
        proc.start()
        child_end.close()
        conns.append(parent_end)
        procs.append(proc)
    finals: dict[int, tuple[int, dict[str, int], bool]] = {}
    try:
        streams = [_stream(c, i, finals, progress) for i, c in enumerate(conns)]
        for t in heapq.merge(*streams, key=lambda t: t[0]):
            yield Observation(*t[1:])  # type: ignore[arg-type]  # proto is a checked literal
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        for conn in conns:
            conn.close()
    first = finals.get(0, (0, {}, False))
    counters: dict[str, int] = {}
    for _, snap, _ in finals.values():
        for k, v in snap.items():
            if not k.startswith(_SHARED_COUNTERS):
                counters[k] = counters.get(k, 0) + v
    counters.update({k: v for k, v in first[1].items() if k.startswith(_SHARED_COUNTERS)})
    result.packets = first[0]
    result.truncated = any(t for _, _, t in finals.values())
    result.counters = dict(sorted(counters.items()))


def _stream(
    conn: Connection,
    index: int,
    finals: dict[int, tuple[int, dict[str, int], bool]],
    progress: Callable[[int, int, int], None] | None,
) -> Iterator[ObsTuple]:
    while True:
        try:
            msg = conn.recv()
        except EOFError as exc:
            raise CaptureError(f"scan worker {index} ended without a result") from exc
        kind = msg[0]
        if kind == "obs":
            yield from msg[1]
        elif kind == "progress":
            if progress is not None:
                progress(msg[1], msg[2], msg[3])
        elif kind == "done":
            finals[index] = (msg[1], msg[2], msg[3])
            return
        else:
            raise CaptureError(f"scan worker {index} failed: {msg[1]}")
