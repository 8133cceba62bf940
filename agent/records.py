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


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One metered AI call as the agent spools it: who, which model, how many tokens, what cost,
    and which kinds of sensitive data the request carried (label names and counts, never text).

    Made on the agent side from what the metering process reports (`agent.metering.usage`); the
    process and user come from the proxied connection's local socket, the cost from genai-prices.
    """

    id: str  # random, per call; the collector dedups on it
    user: str
    device: str
    process_name: str | None
    process_exe: str | None
    service_id: str | None  # catalog service of the host
    host: str
    started: float
    ended: float
    provider: str
    model: str | None
    operation: str
    endpoint: str
    streaming: bool
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None
    estimated: bool
    cost_usd: float | None
    status_code: int | None
    deployment: str | None
    tags: tuple[tuple[str, str], ...]
    key_fingerprint: str | None
    key_hint: str | None
    data_class: str  # public, internal, confidential, restricted
    labels: tuple[tuple[str, int], ...]  # (label, count), sorted
    labels_truncated: bool
    uploads: tuple[tuple[str, str, int, int], ...]  # (file kind, extension class, count, bytes)
    bytes_up: int  # request body size
    bytes_down: int  # response body size
    error: str | None  # why usage could not be read ("MalformedBodyError"), never content
