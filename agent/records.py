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
