"""The PacketSource interface: where raw frames come from (a file now, a socket later)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

# (timestamp in seconds, link-layer type (pcap LINKTYPE_*), frame bytes). A plain tuple, not a
# dataclass: one is made per packet on the hot path.
RawFrame = tuple[float, int, bytes]


class PacketSource(Protocol):
    """Yields raw frames. Implementations: PcapFileSource; the live agent adds socket sources."""

    name: str

    def frames(self) -> Iterator[RawFrame]: ...

    def progress(self) -> tuple[int, int]:
        """(units done, units total) for a progress bar; total 0 when unknown."""
        ...


class ListSource:
    """An in-memory source for unit tests."""

    def __init__(self, frames: list[RawFrame], name: str = "memory") -> None:
        self.name = name
        self._frames = frames
        self._done = 0

    def frames(self) -> Iterator[RawFrame]:
        for frame in self._frames:
            self._done += 1
            yield frame

    def progress(self) -> tuple[int, int]:
        return self._done, len(self._frames)
