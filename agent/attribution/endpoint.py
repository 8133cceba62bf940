"""Endpoint attribution: which local process and OS user made an AI connection, and the tool name.

Looked up when the handshake (or DNS query) is seen, because short-lived connections vanish:
socket table (sock_diag on Linux, psutil elsewhere) → uid and inode → pid (``/proc`` fd map) →
ProcessInfo (cached per pid and start time). The capture may have seen the packet from either
side, so the lookup tries ``obs.src`` as the local end first and then ``obs.dst``.

Tool naming rules, first that applies wins:

1. No process found: the service's tool name (``"OpenAI API"``), process None.
2. The process is a known desktop app or CLI of the same service (catalog ``processes``;
   ``Helper`` processes count as their app): the service's tool name (Cursor → api2.cursor.sh is
   ``"Cursor"``).
3. The process is a known app of ANOTHER service: the app's tool name, since that app is what the
   person uses (Cursor → api.openai.com is ``"Cursor"``).
4. The process is a web browser (chrome, google chrome, chromium, firefox, msedge, microsoft edge,
   safari, brave, arc, opera, vivaldi; lower-case, ``.exe`` stripped, helper and networking
   processes included): ``"<Browser>: <tool>"`` (``"Chrome: ChatGPT"``).
5. Anything else: ``"<process name> via <tool>"`` (``"python3 via OpenAI API"``), ``.exe`` stripped.

DNS: names in DNS are usually asked by the system resolver (systemd-resolved, dnsmasq,
mDNSResponder, unbound, ...) on behalf of some program we cannot see, so blaming the resolver
would be wrong. A ``dns`` observation therefore gets process None and user ``"system"`` unless its
querying socket belongs to a normal user process (anything that is not a known resolver: a
program that asks the network directly, or whose query to a local stub was captured on loopback);
then the rules above apply.

User: the process's OS user; when only the socket is known, the socket's uid; otherwise
``"unknown"``.
"""

from __future__ import annotations

import logging

from agent.attribution.processes import (
    InodeMap,
    ProcessCache,
    ProcessSource,
    PsutilProcessSource,
    base_process_name,
    user_name,
)
from agent.attribution.sockets import SocketOwner, SocketTable, Transport, default_socket_table
from agent.counters import Counters
from agent.records import Attributed, Observation, ProcessInfo
from signatures.matcher import Matcher
from signatures.model import Match, Service

log = logging.getLogger(__name__)

# Base process name (see base_process_name) → how people call the browser.
BROWSERS: dict[str, str] = {
    "chrome": "Chrome",
    "google chrome": "Chrome",
    "chromium": "Chromium",
    "chromium-browser": "Chromium",
    "firefox": "Firefox",
    "firefox-bin": "Firefox",
    "firefox-esr": "Firefox",
    "msedge": "Edge",
    "microsoft edge": "Edge",
    "safari": "Safari",
    # Safari's network traffic is made by WebKit's networking process, not by Safari itself.
    "com.apple.webkit.networking": "Safari",
    "brave": "Brave",
    "brave browser": "Brave",
    "arc": "Arc",
    "opera": "Opera",
    "vivaldi": "Vivaldi",
    "vivaldi-bin": "Vivaldi",
}

# Processes that resolve names for others; their DNS queries say nothing about who asked.
RESOLVERS: frozenset[str] = frozenset(
    {
        "systemd-resolved",
        "systemd-resolve",
        "dnsmasq",
        "mdnsresponder",
        "unbound",
        "named",
        "pdns_recursor",
        "stubby",
        "dnscrypt-proxy",
        "nscd",
        "nsd",
        "knot-resolver",
        "kresd",
        "coredns",
        "svchost",  # the Windows DNS Client service runs inside svchost.exe
    }
)


def browser_name(process_name: str) -> str | None:
    """``"Chrome"`` for ``chrome``, ``chrome.exe``, ``Google Chrome Helper (Renderer)``..."""
    return BROWSERS.get(base_process_name(process_name))


def is_resolver(process_name: str) -> bool:
    return base_process_name(process_name) in RESOLVERS


def tool_name(service: Service, process: ProcessInfo | None, app: Service | None) -> str:
    """What people call this use of ``service`` by ``process`` (rules in the module docstring).

    ``app`` is the catalog service whose desktop app ``process`` is, if any.
    """
    if process is None:
        return service.name
    if app is not None:
        return app.name  # rules 2 and 3: the app is the tool, whichever service it talks to
    browser = browser_name(process.name)
    if browser is not None:
        return f"{browser}: {service.name}"
    name = process.name[:-4] if process.name.lower().endswith(".exe") else process.name
    return f"{name} via {service.name}"


class EndpointAttributor:
    """Attributes matched observations to local processes and OS users."""

    def __init__(
        self,
        matcher: Matcher,
        counters: Counters,
        device: str,
        *,
        sockets: SocketTable | None = None,
        inodes: InodeMap | None = None,
        processes: ProcessSource | None = None,
    ) -> None:
        self._counters = counters
        self._device = device
        self._sockets = sockets if sockets is not None else default_socket_table()
        self._inodes = inodes if inodes is not None else InodeMap(counters)
        self._processes = ProcessCache(
            processes if processes is not None else PsutilProcessSource(), matcher, counters
        )
        self._services = {s.id: s for s in matcher.services}

    def close(self) -> None:
        """Release the kernel socket the lookups use."""
        self._sockets.close()

    def attribute(self, obs: Observation, match: Match, transport: Transport) -> Attributed:
        service = match.service
        self._counters.inc("attribution.lookups")
        owner = self._find_socket(obs, transport)
        process: ProcessInfo | None = None
        if owner is None:
            self._counters.inc("attribution.no_socket")
        else:
            process = self._process(owner)
            if process is None:
                self._counters.inc("attribution.no_process")
        if process is not None:
            user = process.user
        elif owner is not None and owner.uid is not None:
            user = user_name(owner.uid)
        else:
            user = "unknown"
        if obs.proto == "dns" and (process is None or is_resolver(process.name)):
            self._counters.inc("attribution.dns_system")
            return self._result(obs, service, service.name, "system", None)
        app = self._services.get(process.app_service_id or "") if process is not None else None
        return self._result(obs, service, tool_name(service, process, app), user, process)

    def _result(
        self, obs: Observation, service: Service, tool: str, user: str, process: ProcessInfo | None
    ) -> Attributed:
        return Attributed(
            observation=obs,
            service_id=service.id,
            category=service.category,
            tool=tool,
            user=user,
            device=self._device,
            process=process,
        )

    def _find_socket(self, obs: Observation, transport: Transport) -> SocketOwner | None:
        try:
            owner = self._sockets.find(
                transport, obs.src, obs.sport, obs.dst, obs.dport, allow_unconnected=True
            )
            if owner is None:
                # Seen from the other direction (a reply, or a capture point that swapped ends).
                owner = self._sockets.find(transport, obs.dst, obs.dport, obs.src, obs.sport)
                if owner is not None:
                    self._counters.inc("attribution.reversed")
        except OSError as exc:
            # Hooks fail soft: one failed lookup is counted and the sighting still goes on.
            self._counters.inc("attribution.socket_error")
            log.debug("socket lookup failed: %s", exc)
            return None
        return owner

    def _process(self, owner: SocketOwner) -> ProcessInfo | None:
        pid = owner.pid
        if pid is None and owner.inode:
            pid = self._inodes.pid_for(owner.inode, owner.uid)
        if pid is None:
            return None
        return self._processes.info(pid)
