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

    def scan_file(
        self, path: Path, *, progress: ProgressFn | None = None, every: int = 20000
    ) -> Iterator[Sighting]:
        """Yield Sightings for every name in ``path``. Raises CaptureError for a bad file;
        a capture cut short is scanned up to the cut and then raises CaptureError too.
        """
        started = time.perf_counter()
        source = PcapFileSource(path, self._counters)
        extractor = NameExtractor(self._counters, self.limits)
        match_name = self.matcher.match_name
        name = str(path)
        try:
            on_frame = extractor.on_frame
            n = 0
            for ts, linktype, frame in source.frames():
                n += 1
                if progress is not None and n % every == 0:
                    done, total = source.progress()
                    progress(name, done, total, n)
                obs = on_frame(ts, linktype, frame)
                for o in obs:
                    m = match_name(o.name)
                    self.stats.names += 1
                    if m is not None:
                        self.stats.matches += 1
                    yield Sighting(name, o, m)
            if progress is not None:
                done, total = source.progress()
                progress(name, total, total, n)
        finally:
            source.close()
            self.stats.files += 1
            self.stats.packets += extractor.packets
            self.stats.seconds += time.perf_counter() - started
            self.stats.counters = self._counters.snapshot()
        if source.truncated:
            raise CaptureError(f"{path}: capture is cut short in the middle of a packet")


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
