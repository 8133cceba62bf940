"""Reading pcap and pcapng files into raw frames, with clear errors for bad files."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from agent.capture.source import RawFrame
from agent.counters import Counters
from agent.exceptions import CaptureError

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_BOM = 0x1A2B3C4D
_MAX_RECORD = 1 << 18
_RELEASE_EVERY = 16 << 20  # bytes read between two releases of the pages behind them
# fixed part of each block type we read, trailer included: a shorter block is corrupt
_MIN_BLOCK = {1: 20, 2: 32, 3: 16, 6: 32}  # a frame over 256 KiB means a corrupt record length


class PcapFileSource:
    """A pcap or pcapng file. The file is memory-mapped, so big captures cost no heap.

    A bad header raises CaptureError at open. A record cut short at the end of the file (a
    capture still being written, or a truncated copy) is counted as ``pcap.truncated`` and
    ends the iteration; ``truncated`` then says so, so callers can report it.
    """

    def __init__(self, path: str | os.PathLike[str], counters: Counters | None = None) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.counters = counters or Counters()
        self.truncated = False
        self._pos = 0
        self._released = 0
        self._release_at = _RELEASE_EVERY
        try:
            with self.path.open("rb") as f:
                self._size = os.fstat(f.fileno()).st_size
                if self._size < 24:
                    raise CaptureError(f"{self.path}: not a pcap or pcapng file (too short)")
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError as exc:
            raise CaptureError(f"{self.path}: no such file") from exc
        except IsADirectoryError as exc:
            raise CaptureError(f"{self.path}: is a directory, not a capture file") from exc
        except PermissionError as exc:
            raise CaptureError(f"{self.path}: permission denied") from exc
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror}") from exc
        magic = bytes(self._mm[:4])
        if magic in _PCAP_MAGICS:
            self._kind = "pcap"
        elif magic == _PCAPNG_SHB:
            self._kind = "pcapng"
        else:
            self._mm.close()
            raise CaptureError(
                f"{self.path}: not a pcap or pcapng file (magic {magic.hex()}); "
                "if it is a git-LFS pointer, fetch the real file"
            )

    def frames(self) -> Iterator[RawFrame]:
        try:
            if self._kind == "pcap":
                yield from self._pcap()
            else:
                yield from self._pcapng()
        finally:
            self._pos = self._size

    def progress(self) -> tuple[int, int]:
        return self._pos, self._size

    def _release(self, pos: int) -> None:
        """Drop the pages already read from this process's resident set. Frames are copied out
        of the mapping, so nothing refers to them; without this, RSS grows to the file size.
        """
        upto = pos & ~(mmap.PAGESIZE - 1)
        if upto > self._released and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, self._released, upto - self._released)
            self._released = upto
        self._release_at = pos + _RELEASE_EVERY

    def close(self) -> None:
        self._mm.close()

    def _truncated(self) -> None:
        self.truncated = True
        self.counters.inc("pcap.truncated")

    def _pcap(self) -> Iterator[RawFrame]:
        mm = self._mm
        endian, scale = _PCAP_MAGICS[bytes(mm[:4])]
        (linktype,) = struct.unpack_from(endian + "I", mm, 20)
        linktype &= 0x0FFFFFFF  # upper bits may carry FCS information
        rec = struct.Struct(endian + "IIII")
        unpack = rec.unpack_from
        pos, size = 24, self._size
        while pos + 16 <= size:
            sec, frac, caplen, _ = unpack(mm, pos)
            start = pos + 16
            end = start + caplen
            if caplen > _MAX_RECORD or end > size:
                self._truncated()
                return
            self._pos = pos = end
            if pos >= self._release_at:
                self._release(pos)
            yield sec + frac * scale, linktype, mm[start:end]
        if pos != size:
            self._truncated()

    def _pcapng(self) -> Iterator[RawFrame]:
        mm = self._mm
        size = self._size
        pos = 0
        endian = "<"
        # One struct per section byte order; the enhanced packet block header (type, length,
        # interface, ts high, ts low, caplen) is read with a single unpack, before the block
        # type is even known: it is the hot path, and every block is at least that long.
        head = struct.Struct("<II")
        unpack_epb = struct.Struct("<IIIIII").unpack_from
        # per section: interface id -> (linktype, seconds per timestamp unit)
        ifaces: list[tuple[int, float]] = []
        while pos + 12 <= size:
            if pos + 28 <= size:
                btype, blen, iface, ts_hi, ts_lo, caplen = unpack_epb(mm, pos)
            else:
                btype, blen = head.unpack_from(mm, pos)
            if btype == 6 and blen >= 32 and not blen & 3:
                end = pos + blen
                if end > size:
                    break
                data_start = pos + 28
                if iface >= len(ifaces) or data_start + caplen > end:
                    self.counters.inc("pcap.bad_block")
                else:
                    linktype, unit = ifaces[iface]
                    self._pos = pos = end
                    if pos >= self._release_at:
                        self._release(pos)
                    yield (
                        ((ts_hi << 32) | ts_lo) * unit,
                        linktype,
                        mm[data_start : data_start + caplen],
                    )
                    continue
                pos = end
                continue
            if (btype & 0xFFFFFFFF) == 0x0A0D0D0A:
                (bom,) = struct.unpack_from("<I", mm, pos + 8)
                if bom == _BOM:
                    endian = "<"
                elif bom == 0x4D3C2B1A:
                    endian = ">"
                else:
                    raise CaptureError(f"{self.path}: corrupt pcapng section header at {pos}")
                head = struct.Struct(endian + "II")
                unpack_epb = struct.Struct(endian + "IIIIII").unpack_from
                btype, blen = head.unpack_from(mm, pos)
                ifaces = []
            if blen < 12 or blen % 4 or blen > _MAX_RECORD + 64:
                if pos + blen > size or blen < 12:
                    break
                raise CaptureError(f"{self.path}: corrupt pcapng block length at offset {pos}")
            end = pos + blen
            if end > size:
                break
            if blen < _MIN_BLOCK.get(btype, 12):
                self.counters.inc("pcap.bad_block")
            elif btype == 2:  # obsolete packet block
                iface, _, ts_hi, ts_lo, caplen = struct.unpack_from(endian + "HHIII", mm, pos + 8)
                if iface < len(ifaces) and pos + 28 + caplen <= end:
                    linktype, unit = ifaces[iface]
                    yield ((ts_hi << 32) | ts_lo) * unit, linktype, mm[pos + 28 : pos + 28 + caplen]
                else:
                    self.counters.inc("pcap.bad_block")
            elif btype == 3:  # simple packet block: no timestamp, interface 0
                (orig_len,) = struct.unpack_from(endian + "I", mm, pos + 8)
                caplen = min(orig_len, blen - 16)
                if ifaces:
                    yield 0.0, ifaces[0][0], mm[pos + 12 : pos + 12 + caplen]
            elif btype == 1:  # interface description block
                (linktype,) = struct.unpack_from(endian + "H", mm, pos + 8)
                ifaces.append((linktype, _if_tsresol(mm, pos + 16, end - 4, endian)))
            pos = end
            self._pos = pos
        if pos != size:
            self._truncated()


def _if_tsresol(mm: mmap.mmap, pos: int, end: int, endian: str) -> float:
    """Seconds per timestamp unit from an IDB's if_tsresol option (default microseconds)."""
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", mm, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = mm[pos + 4]
            return float(2 ** -(value & 0x7F)) if value & 0x80 else float(10**-value)
        pos += 4 + ((length + 3) & ~3)
    return 1e-6
