"""Offline scan of capture files: Observations matched against the catalog, plus a summary."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agent.capture.pcapfile import PcapFileSource
from agent.counters import Counters
from agent.exceptions import CaptureError
from agent.pipeline import NameExtractor, PipelineLimits
from agent.records import Observation
from agent.scanjobs import JobResult, sharded_observations
from signatures.matcher import Matcher
from signatures.model import Match

ProgressFn = Callable[[str, int, int, int], None]  # file, bytes done, bytes total, packets


@dataclass(frozen=True, slots=True)
class Sighting:
    """An Observation with its catalog match (None when the name is not an AI service)."""

    file: str
    observation: Observation
    match: Match | None


@dataclass
class ScanStats:
    files: int = 0
    packets: int = 0
    names: int = 0
    matches: int = 0
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)


class Scanner:
    """Runs capture files through one NameExtractor each and matches what it finds."""

    def __init__(self, matcher: Matcher, limits: PipelineLimits | None = None) -> None:
        self.matcher = matcher
        self.limits = limits
        self.stats = ScanStats()
        self._counters = Counters()
        self._truncated = False

    def scan_file(
        self,
        path: Path,
        *,
        progress: ProgressFn | None = None,
        every: int = 20000,
        jobs: int = 1,
    ) -> Iterator[Sighting]:
        """Yield Sightings for every name in ``path``. Raises CaptureError for a bad file;
        a capture cut short is scanned up to the cut and then raises CaptureError too.
        ``jobs`` > 1 shares the work between that many processes (same results, same order).
        """
        started = time.perf_counter()
        name = str(path)
        match_name = self.matcher.match_name
        if jobs > 1:
            result = JobResult()
            report = None
            if progress is not None:
                report = lambda done, total, n: progress(name, done, total, n)  # noqa: E731
            observations = sharded_observations(path, jobs, self.limits, result, report)
        else:
            observations = self._observations(path, name, progress, every)
        truncated = False
        try:
            for o in observations:
                m = match_name(o.name)
                self.stats.names += 1
                if m is not None:
                    self.stats.matches += 1
                yield Sighting(name, o, m)
        finally:
            self.stats.files += 1
            self.stats.seconds += time.perf_counter() - started
            if jobs > 1:
                self.stats.packets += result.packets
                for k, v in result.counters.items():
                    self._counters.inc(k, v)
                truncated = result.truncated
            else:
                truncated = self._truncated
            self.stats.counters = self._counters.snapshot()
        if truncated:
            raise CaptureError(f"{path}: capture is cut short in the middle of a packet")

    def _observations(
        self, path: Path, name: str, progress: ProgressFn | None, every: int
    ) -> Iterator[Observation]:
        source = PcapFileSource(path, self._counters)
        extractor = NameExtractor(self._counters, self.limits)
        self._truncated = False
        try:
            on_frame = extractor.on_frame
            n = 0
            for ts, linktype, frame in source.frames():
                n += 1
                if progress is not None and n % every == 0:
                    done, total = source.progress()
                    progress(name, done, total, n)
                obs = on_frame(ts, linktype, frame)
                if obs:
                    yield from obs
            if progress is not None:
                done, total = source.progress()
                progress(name, total, total, n)
        finally:
            source.close()
            self.stats.packets += extractor.packets
            self._truncated = source.truncated


@dataclass
class SummaryRow:
    service: str | None
    tool: str | None
    vendor: str | None
    category: str | None
    name: str
    protos: Counter[str] = field(default_factory=Counter)
    count: int = 0


def summarise(sightings: list[Sighting]) -> list[SummaryRow]:
    """One row per (service, name), with how it was seen; AI services first."""
    rows: dict[tuple[str | None, str], SummaryRow] = {}
    for s in sightings:
        m = s.match
        key = (m.service.id if m else None, s.observation.name)
        row = rows.get(key)
        if row is None:
            row = rows[key] = SummaryRow(
                m.service.id if m else None,
                m.service.name if m else None,
                m.service.vendor if m else None,
                m.service.category if m else None,
                s.observation.name,
            )
        row.protos[s.observation.proto] += 1
        row.count += 1
    return sorted(rows.values(), key=lambda r: (r.service is None, r.service or "", r.name))
