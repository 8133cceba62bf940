"""Typed records that cross layer boundaries in the agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# How a name was seen: the protocol field that carried it.
Proto = Literal["dns", "tls", "quic", "gquic", "http", "ip"]


@dataclass(frozen=True, slots=True)
class Observation:
    """One hostname seen on the wire, before catalog matching.

    ``src``/``sport`` is the side that asked (DNS client, TLS/QUIC/HTTP client); for ``dns`` it is
    the resolver's client, for ``ip`` the endpoint that connected to an address learned from DNS.
    """

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    proto: Proto
    name: str  # lower-case, no trailing dot, A-label form


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """The local process that owned a socket, looked up when its handshake was seen."""

    pid: int
    name: str
    exe: str | None
    user: str  # OS user name ("uid:1234" when the uid has no name)
    uid: int | None
    ppid: int | None = None
    parent_name: str | None = None
    app_service_id: str | None = None  # catalog service whose desktop app this process is


@dataclass(frozen=True, slots=True)
class Attributed:
    """A matched AI Observation with who made it: the unit the sessionizer consumes."""

    observation: Observation
    service_id: str
    category: str
    tool: str  # what people call it: "Cursor", "python via OpenAI API", "Chrome: ChatGPT"
    user: str  # OS user (endpoint), mapped user (gateway), "unknown:<ip>" when unmapped
    device: str
    process: ProcessInfo | None


@dataclass(frozen=True, slots=True)
class Session:
    """Use of one tool by one user on one device from one process, until idle for the timeout.

    ``(id, version)`` identifies one state of the session; the version grows with every update,
    so a collector that stores the highest version per id is idempotent.
    """

    id: str
    version: int
    user: str
    device: str
    tool: str
    service_id: str
    category: str
    process_name: str | None
    process_exe: str | None
    parent_name: str | None
    first_seen: float
    last_seen: float
    connections: int
    hostnames: tuple[str, ...]
    seen_as: tuple[str, ...]  # Proto values, sorted
    bytes_up: int | None  # None where the platform cannot tell
    bytes_down: int | None
    closed: bool
