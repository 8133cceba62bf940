"""Agent side of metering: reported calls → attributed, priced `UsageRecord` s for the spool.

    receiver = UsageReceiver(socket_path, allowed_uid, spool.put_usage, device=hostname)
    receiver.start() ... receiver.stop()

The metering process reports each call's client socket (``127.0.0.1:sport → proxy`` in regular
mode, ``host:sport → server`` in transparent mode); the agent finds the local process and OS user
that own it with the same socket table as capture attribution, first when the request starts
(the socket surely exists then) and again at the end if that failed. Cost comes from
`agent.metering.cost` here, because genai-prices cannot live in mitmproxy's environment.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from agent.attribution.processes import (
    InodeMap,
    ProcessCache,
    ProcessSource,
    PsutilProcessSource,
    user_name,
)
from agent.attribution.sockets import SocketTable, default_socket_table
from agent.counters import Counters
from agent.metering.channel import Address, CallStart, ChannelServer, Message, MeteredCall
from agent.metering.cost import Pricer, warm_prices
from agent.records import ProcessInfo, UsageRecord
from signatures.matcher import Matcher

log = logging.getLogger("lantern.metering.usage")

PENDING_MAX = 4096  # calls whose start was seen and whose end was not (bounded; oldest go)
Owner = tuple[str, ProcessInfo | None]  # user, process


class ClientResolver:
    """Finds the process and user owning a proxied client connection."""

    def __init__(
        self,
        matcher: Matcher,
        counters: Counters,
        *,
        sockets: SocketTable | None = None,
        inodes: InodeMap | None = None,
        processes: ProcessSource | None = None,
    ) -> None:
        self._counters = counters
        self._sockets = sockets if sockets is not None else default_socket_table()
        self._inodes = inodes if inodes is not None else InodeMap(counters)
        self._processes = ProcessCache(
            processes if processes is not None else PsutilProcessSource(), matcher, counters
        )

    def close(self) -> None:
        self._sockets.close()

    def resolve(self, client: Address, dst: Address) -> Owner | None:
        """``(user, process)`` of the socket ``client`` → ``dst``; None when it is gone."""
        try:
            owner = self._sockets.find("tcp", client[0], client[1], dst[0], dst[1])
        except OSError:
            self._counters.inc("metering.attribution.socket_error")
            return None
        if owner is None:
            return None
        pid = owner.pid
        if pid is None and owner.inode:
            pid = self._inodes.pid_for(owner.inode, owner.uid)
        process = self._processes.info(pid) if pid is not None else None
        if process is not None:
            return process.user, process
        if owner.uid is not None:
            return user_name(owner.uid), None
        return None


class UsageAssembler:
    """Turns `CallStart` / `MeteredCall` messages into `UsageRecord` s and hands them on."""

    def __init__(
        self,
        on_usage: Callable[[UsageRecord], None],
        resolver: ClientResolver | None,
        *,
        device: str,
        matcher: Matcher,
        pricer: Pricer | None = None,
        counters: Counters | None = None,
    ) -> None:
        self.on_usage = on_usage
        self.resolver = resolver
        self.device = device
        self.matcher = matcher
        self.pricer = pricer if pricer is not None else Pricer()
        self.counters = counters if counters is not None else Counters()
        self._pending: OrderedDict[str, Owner | None] = OrderedDict()
        self._lock = threading.Lock()  # the receiver may serve more than one connection

    def on_message(self, msg: Message) -> None:
        if isinstance(msg, CallStart):
            owner = self._resolve(msg.client, msg.dst)
            with self._lock:
                self._pending[msg.id] = owner
                while len(self._pending) > PENDING_MAX:
                    self._pending.popitem(last=False)
                    self.counters.inc("metering.attribution.pending_dropped")
            return
        with self._lock:
            owner = self._pending.pop(msg.id, None)
        if owner is None or owner[1] is None:
            # Not found at the start (the inode map rescans /proc at most twice a second):
            # the socket is usually still open now, so ask again.
            again = self._resolve(msg.client, msg.dst)
            if again is not None and (owner is None or again[1] is not None):
                owner = again
        if owner is None:
            self.counters.inc("metering.attribution.unknown")
        self.on_usage(self.record(msg, owner))
        self.counters.inc("metering.usage.records")

    def _resolve(self, client: Address, dst: Address) -> Owner | None:
        if self.resolver is None:
            return None
        return self.resolver.resolve(client, dst)

    def record(self, call: MeteredCall, owner: Owner | None) -> UsageRecord:
        u = call.usage
        cost = u.cost_usd
        if cost is None:
            cost = self.pricer.cost(u)
        user, process = owner if owner is not None else ("unknown", None)
        match = self.matcher.match_name(call.host)
        labels = call.labels
        return UsageRecord(
            id=call.id,
            user=user,
            device=self.device,
            process_name=process.name if process is not None else None,
            process_exe=process.exe if process is not None else None,
            service_id=match.service.id if match is not None else None,
            host=call.host,
            started=call.started,
            ended=call.ended,
            provider=u.provider,
            model=u.model,
            operation=u.operation,
            endpoint=u.endpoint,
            streaming=u.streaming,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            reasoning_tokens=u.reasoning_tokens,
            estimated=u.estimated,
            cost_usd=cost,
            status_code=u.status_code,
            deployment=u.deployment,
            tags=u.tags,
            key_fingerprint=u.key_fingerprint,
            key_hint=u.key_hint,
            data_class=labels.data_class if labels is not None else "public",
            labels=labels.counts if labels is not None else (),
            labels_truncated=labels.truncated if labels is not None else False,
            uploads=tuple(
                (s.kind, s.ext_class, s.count, s.total_bytes)
                for s in (labels.uploads if labels is not None else ())
            ),
            bytes_up=call.bytes_up,
            bytes_down=call.bytes_down,
            error=call.error,
        )


class UsageReceiver:
    """The agent's end of the metering channel: accepts only ``allowed_uid``, yields records.

    ``on_usage`` is called on the receiver's thread, once per call (the service passes
    ``spool.put_usage``). ``resolver=None`` builds the default socket/process resolver;
    pass ``attribute=False`` to skip attribution (records then say user ``unknown``).
    """

    def __init__(
        self,
        socket_path: Path,
        allowed_uid: int,
        on_usage: Callable[[UsageRecord], None],
        *,
        device: str | None = None,
        matcher: Matcher | None = None,
        pricer: Pricer | None = None,
        resolver: ClientResolver | None = None,
        attribute: bool = True,
        counters: Counters | None = None,
        socket_owner: tuple[int, int] | None = None,
    ) -> None:
        self.counters = counters if counters is not None else Counters()
        matcher = matcher if matcher is not None else Matcher.from_catalog()
        if resolver is None and attribute:
            resolver = ClientResolver(matcher, self.counters)
        self.resolver = resolver
        self.assembler = UsageAssembler(
            on_usage,
            resolver,
            device=device or socket.gethostname(),
            matcher=matcher,
            pricer=pricer,
            counters=self.counters,
        )
        self.server = ChannelServer(
            socket_path,
            allowed_uid,
            self.assembler.on_message,
            counters=self.counters,
            socket_owner=socket_owner,
        )

    def start(self) -> None:
        self.server.start()
        threading.Thread(target=warm_prices, name="metering-prices", daemon=True).start()

    def stop(self) -> None:
        self.server.stop()
        if self.resolver is not None:
            self.resolver.close()

    def __enter__(self) -> UsageReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
