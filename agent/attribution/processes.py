"""Socket inode → pid and pid → ProcessInfo, cached so a busy host costs little.

* :class:`InodeMap` reads ``/proc/<pid>/fd`` symlinks (``socket:[inode]``) into one map. A miss
  rebuilds it, at most once per ``min_rescan`` seconds, because a full walk costs milliseconds and
  a flood of unknown sockets must not turn into a flood of walks.
* :class:`ProcessCache` keeps ProcessInfo per pid together with the process's start time; every
  lookup re-reads the start time (one small read) so a pid the OS has reused for another program
  is noticed and described afresh instead of being blamed on the old one.
* :class:`PsutilProcessSource` describes processes; :class:`FakeProcessSource` stands in for it in
  unit tests.
"""

from __future__ import annotations

import os
import pwd
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from agent.counters import Counters
from agent.records import ProcessInfo
from signatures.matcher import Matcher
from signatures.model import Service

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
# Electron and Chromium apps do their networking in helper processes named after the app
# ("Cursor Helper (Plugin)", "Google Chrome Helper (Renderer)").
_HELPER = re.compile(r"^(.*?) helper(?: \(.*\))?$", re.IGNORECASE)


def base_process_name(name: str) -> str:
    """Lower-case, without ``.exe`` and without a trailing `` Helper (...)``."""
    key = name.strip().lower()
    if key.endswith(".exe"):
        key = key[:-4]
    m = _HELPER.match(key)
    return m.group(1) if m else key


class InodeMap:
    """Socket inode → pid from ``/proc``; rebuilt on a miss, rate-limited."""

    def __init__(
        self,
        counters: Counters,
        proc_root: Path = Path("/proc"),
        min_rescan: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._root = proc_root
        self._min_rescan = min_rescan
        self._clock = clock
        self._map: dict[int, int] = {}
        self._scanned = -float("inf")
        self.scans = 0

    def pid_for(self, inode: int, uid: int | None = None) -> int | None:
        """The pid holding socket ``inode``. ``uid`` (from sock_diag) narrows the search when a
        full rescan is rate-limited: a program that resolves a name and connects within
        milliseconds opens its second socket inside the limit, and must still be found."""
        pid = self._map.get(inode)
        if pid is not None and self._still_has(pid, inode):
            self._counters.inc("attribution.inode_hit")
            return pid
        if self._clock() - self._scanned < self._min_rescan:
            if uid is not None:
                pid = self._scan_owned_by(uid, inode)
                if pid is not None:
                    self._map[inode] = pid
                    self._counters.inc("attribution.inode_uid_scan")
                    return pid
            self._counters.inc("attribution.inode_rescan_limited")
            return None
        self._rescan()
        return self._map.get(inode)

    def _scan_owned_by(self, uid: int, inode: int) -> int | None:
        """Only the processes of ``uid``; the lowest pid holding the socket, like a rescan."""
        try:
            entries = sorted(
                (e for e in os.scandir(self._root) if e.name.isdigit()), key=lambda e: int(e.name)
            )
        except OSError:
            return None
        for entry in entries:
            try:
                if entry.stat().st_uid != uid:
                    continue
            except OSError:
                continue
            if self._still_has(int(entry.name), inode):
                return int(entry.name)
        return None

    def _still_has(self, pid: int, inode: int) -> bool:
        # Inodes are reused too; the cached pid is trusted only while it still holds the socket.
        # Checking one process is cheap next to a walk: it exits early on the first match.
        try:
            with os.scandir(self._root / str(pid) / "fd") as fds:
                target = f"socket:[{inode}]"
                for fd in fds:
                    try:
                        if os.readlink(fd.path) == target:
                            return True
                    except OSError:
                        continue
        except OSError:
            return False
        return False

    def _rescan(self) -> None:
        found: dict[int, int] = {}
        try:
            entries = list(os.scandir(self._root))
        except OSError:
            entries = []
        for entry in entries:
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                with os.scandir(os.path.join(entry.path, "fd")) as fds:
                    for fd in fds:
                        try:
                            m = _SOCKET_LINK.fullmatch(os.readlink(fd.path))
                        except OSError:
                            continue  # fd closed while we looked
                        if m is not None:
                            # Shared sockets (fork) map to the lowest pid: the parent, usually.
                            found.setdefault(int(m.group(1)), pid)
            except OSError:
                continue  # process gone or not ours to read
        self._map = found
        self._scanned = self._clock()
        self.scans += 1
        self._counters.inc("attribution.inode_rescan")


@dataclass(frozen=True, slots=True)
class RawProcess:
    """What a process source reports for one pid."""

    pid: int
    name: str
    exe: str | None
    uid: int | None
    ppid: int | None
    create_time: float
    user: str | None = None  # when the platform names users itself (Windows DOMAIN\\user)


class ProcessSource(Protocol):
    def create_time(self, pid: int) -> float | None:
        """The process's start time, or None when there is no such process."""

    def describe(self, pid: int) -> RawProcess | None:
        """Everything ProcessInfo needs, or None when the process is gone or hidden."""


class PsutilProcessSource:
    """ProcessSource over psutil."""

    def __init__(self) -> None:
        import psutil  # noqa: PLC0415 - the agent extra; only endpoint mode needs it

        self._psutil = psutil

    def create_time(self, pid: int) -> float | None:
        try:
            return float(self._psutil.Process(pid).create_time())
        except (self._psutil.Error, OSError):
            return None

    def describe(self, pid: int) -> RawProcess | None:
        ps = self._psutil
        try:
            p = ps.Process(pid)
            with p.oneshot():
                name = p.name()
                created = float(p.create_time())
                ppid = p.ppid()
                try:
                    exe: str | None = p.exe() or None
                except (ps.AccessDenied, ps.ZombieProcess, OSError):
                    exe = None
                uid: int | None = None
                user: str | None = None
                if hasattr(p, "uids"):
                    uid = int(p.uids().real)
                else:
                    try:
                        user = p.username()
                    except (ps.AccessDenied, OSError):
                        user = None
        except (ps.Error, OSError):
            return None
        return RawProcess(pid, name, exe, uid, ppid or None, created, user)


class FakeProcessSource:
    """In-memory ProcessSource for unit tests; ``describe_calls`` shows what the cache saved."""

    def __init__(self, *procs: RawProcess) -> None:
        self.procs: dict[int, RawProcess] = {p.pid: p for p in procs}
        self.describe_calls = 0

    def add(self, proc: RawProcess) -> None:
        self.procs[proc.pid] = proc

    def remove(self, pid: int) -> None:
        self.procs.pop(pid, None)

    def create_time(self, pid: int) -> float | None:
        p = self.procs.get(pid)
        return None if p is None else p.create_time

    def describe(self, pid: int) -> RawProcess | None:
        self.describe_calls += 1
        return self.procs.get(pid)


_USER_NAMES: dict[int, str] = {}


def user_name(uid: int) -> str:
    """The account name of a uid, ``uid:<n>`` when it has none (containers, deleted users)."""
    name = _USER_NAMES.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = f"uid:{uid}"
        if len(_USER_NAMES) > 4096:
            _USER_NAMES.clear()
        _USER_NAMES[uid] = name
    return name


class ProcessCache:
    """pid → ProcessInfo, keyed by (pid, start time) so pid reuse is detected. LRU-bounded."""

    def __init__(
        self,
        source: ProcessSource,
        matcher: Matcher,
        counters: Counters,
        max_entries: int = 4096,
    ) -> None:
        self._source = source
        self._matcher = matcher
        self._counters = counters
        self._max = max_entries
        self._cache: OrderedDict[int, tuple[float, ProcessInfo]] = OrderedDict()

    def info(self, pid: int) -> ProcessInfo | None:
        created = self._source.create_time(pid)
        if created is None:
            self._cache.pop(pid, None)
            return None
        hit = self._cache.get(pid)
        if hit is not None:
            if hit[0] == created:
                self._cache.move_to_end(pid)
                self._counters.inc("attribution.cache_hit")
                return hit[1]
            self._counters.inc("attribution.pid_reused")
        self._counters.inc("attribution.cache_miss")
        raw = self._source.describe(pid)
        if raw is None:
            self._cache.pop(pid, None)
            return None
        info = self._build(raw)
        self._cache[pid] = (raw.create_time, info)
        self._cache.move_to_end(pid)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return info

    def _build(self, raw: RawProcess) -> ProcessInfo:
        if raw.user is not None:
            user = raw.user
        elif raw.uid is not None:
            user = user_name(raw.uid)
        else:
            user = "unknown"
        parent_name: str | None = None
        if raw.ppid:
            # The parent is looked up without caching its own parent chain: one level is enough
            # to tell "python under Cursor" from "python under a terminal".
            parent = self._source.describe(raw.ppid)
            parent_name = parent.name if parent is not None else None
        app = app_service(self._matcher, raw.name)
        info = ProcessInfo(
            pid=raw.pid,
            name=raw.name,
            exe=raw.exe,
            user=user,
            uid=raw.uid,
            ppid=raw.ppid,
            parent_name=parent_name,
        )
        return replace(info, app_service_id=app.id) if app is not None else info


def app_service(matcher: Matcher, process_name: str) -> Service | None:
    """The catalog service whose desktop app this process is (its helper processes included)."""
    hit = matcher.match_process(process_name)
    if hit is None:
        base = base_process_name(process_name)
        if base != process_name.lower():
            hit = matcher.match_process(base)
    return hit
