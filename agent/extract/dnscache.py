"""The IP→name cache: which hostnames each address was handed out for, learned from DNS answers.

Why it exists: a connection whose handshake shows no usable name (ECH hides the real SNI, some
clients send no SNI, a resumed session or an already-open QUIC connection shows no handshake at
all) can still be attributed, because the client almost always resolved the name first. The
answer said "name N is at address X"; a later connection to X is then most likely for N.

An address can serve many names (shared hosting, CDNs), so each address keeps a small bounded set
of names, most recently answered first. Expiry runs on packet time, never the wall clock, so a
replayed capture behaves exactly like the live traffic it recorded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from agent.counters import Counters
from agent.extract.dns import TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_HTTPS, TYPE_SVCB, DnsMessage

_ADDRESS_TYPES = (TYPE_A, TYPE_AAAA)
_HINT_TYPES = (TYPE_SVCB, TYPE_HTTPS)
# Resolvers give up on CNAME chains around this length; a longer one is crafted, not useful.
_MAX_CHAIN = 16


class IpNameCache:
    """Maps address text (``str(ipaddress.ip_address(...))``) to the names it was an answer for.

    Bounded two ways: at most ``max_entries`` addresses (least recently used goes first; a live
    entry pushed out counts as ``dnscache.evicted``, a stale one as ``dnscache.expired``) and at
    most ``max_names_per_ip`` names per address (the oldest name goes first). A lookup counts as a
    use, so addresses that clients keep connecting to stay in the cache.

    TTLs are clamped to ``[min_ttl, max_ttl]``: the floor covers clients that connect a little
    after a short-TTL answer expired (browsers and OS caches keep answers longer than asked); the
    ceiling stops a huge TTL from pinning a stale mapping for weeks.
    """

    __slots__ = ("_by_ip", "_counters", "_max_entries", "_max_names", "_max_ttl", "_min_ttl")

    def __init__(
        self,
        *,
        max_entries: int = 65536,
        min_ttl: int = 60,
        max_ttl: int = 86400,
        max_names_per_ip: int = 8,
        counters: Counters | None = None,
    ) -> None:
        if max_entries < 1 or max_names_per_ip < 1:
            raise ValueError("max_entries and max_names_per_ip must be at least 1")
        if not 0 <= min_ttl <= max_ttl:
            raise ValueError("need 0 <= min_ttl <= max_ttl")
        self._max_entries = max_entries
        self._max_names = max_names_per_ip
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._counters = counters
        # address -> {name: expiry ts}; both orders are recency order, oldest first.
        self._by_ip: OrderedDict[str, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        """The number of addresses held (expired ones included until they are pruned)."""
        return len(self._by_ip)

    def on_response(self, ts: float, msg: DnsMessage) -> None:
        """Learn the addresses a DNS response gave for the names it was asked.

        Only records on a CNAME chain that starts at a question name are used, so an answer
        section padded with unrelated records cannot tie an address to a name nobody asked for.
        Each address maps to the question name and to every name on its chain. mDNS
        announcements carry no question and name only local hosts, so they add nothing.
        """
        if not msg.is_response or not msg.questions or not msg.answers:
            return
        aliases: dict[str, str] = {}
        for rr in msg.answers:
            if rr.rtype == TYPE_CNAME and rr.value is not None:
                aliases.setdefault(rr.name, rr.value)
        for qname in dict.fromkeys(q.name for q in msg.questions):
            if not qname:
                continue  # the root: no name a connection could be attributed to
            chain = [qname]
            on_chain = {qname}
            while len(chain) < _MAX_CHAIN:
                target = aliases.get(chain[-1])
                if target is None or target in on_chain:
                    break
                chain.append(target)
                on_chain.add(target)
            for rr in msg.answers:
                if rr.name not in on_chain:
                    continue
                if rr.rtype in _ADDRESS_TYPES and rr.value is not None:
                    addresses: Iterable[str] = (rr.value,)
                elif rr.rtype in _HINT_TYPES:
                    addresses = rr.hints
                else:
                    continue
                # The address record's own TTL decides: the CNAMEs may outlive it, but a client
                # stops connecting to the address once it has re-resolved.
                ttl = min(max(rr.ttl, self._min_ttl), self._max_ttl)
                for ip in addresses:
                    self._add(ip, chain, ts + ttl, ts)

    def lookup(self, ip: str, ts: float) -> tuple[str, ...]:
        """Names that ``ip`` was a live answer for at packet time ``ts``, most recent first."""
        names = self._by_ip.get(ip)
        if names is None:
            return ()
        live = tuple(name for name, expiry in reversed(names.items()) if expiry > ts)
        if not live:
            del self._by_ip[ip]
            self._count("dnscache.expired")
            return ()
        if len(live) != len(names):
            for name in [name for name, expiry in names.items() if expiry <= ts]:
                del names[name]
        self._by_ip.move_to_end(ip)
        return live

    def _add(self, ip: str, chain: list[str], expiry: float, ts: float) -> None:
        names = self._by_ip.get(ip)
        if names is None:
            names = self._by_ip[ip] = {}
            if len(self._by_ip) > self._max_entries:
                self._evict_oldest(ts)
        else:
            self._by_ip.move_to_end(ip)
        # Insert the chain's end first so the question name, the one the user asked for, is the
        # most recent and comes first in lookups.
        for name in reversed(chain):
            previous = names.pop(name, None)
            # A later answer from a resolver's cache carries a smaller TTL for the same record:
            # never let it shorten what an earlier answer promised.
            names[name] = expiry if previous is None else max(previous, expiry)
            if len(names) > self._max_names:
                self._drop_one_name(names, ts)

    def _evict_oldest(self, ts: float) -> None:
        _, names = self._by_ip.popitem(last=False)
        live = any(expiry > ts for expiry in names.values())
        self._count("dnscache.evicted" if live else "dnscache.expired")

    def _drop_one_name(self, names: dict[str, float], ts: float) -> None:
        # A stale name goes before a live one; otherwise the least recently answered.
        victim = next((name for name, expiry in names.items() if expiry <= ts), None)
        if victim is None:
            victim = next(iter(names))
        del names[victim]
        self._count("dnscache.names_dropped")

    def _count(self, name: str) -> None:
        if self._counters is not None:
            self._counters.inc(name)
