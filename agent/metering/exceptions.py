"""Errors raised by the metering package (usage extraction, pricing, the `meter` command).

Hierarchy::

    AgentError                      (agent.exceptions)
    └── MeteringError               base of everything below
        ├── UnknownEndpointError         the URL is not an AI endpoint Lantern meters
        ├── PricingError            a price override is malformed (names the key and reason)
        ├── RedirectError           an iptables command for the transparent proxy failed
        └── MalformedBodyError           body bytes do not parse as the format they claim to be
            ├── TruncatedBodyError       the body ends inside a value or a frame
            └── ChecksumError       an AWS event-stream frame failed its CRC32 check

Messages never quote body bytes: a malformed body may be someone's prompt.
"""

from __future__ import annotations

from agent.exceptions import AgentError


class MeteringError(AgentError):
    """Base class for every error the metering package raises on purpose."""


class UnknownEndpointError(MeteringError):
    """The URL names no provider endpoint that Lantern meters."""


class PricingError(MeteringError):
    """A per-organisation price override is malformed."""


class RedirectError(MeteringError):
    """An iptables command managing the transparent proxy's REDIRECT rules failed."""


class MalformedBodyError(MeteringError):
    """Body bytes that do not parse as JSON, SSE or an AWS event stream."""


class TruncatedBodyError(MalformedBodyError):
    """The body ends before the value or frame it started does."""


class ChecksumError(MalformedBodyError):
    """An AWS event-stream frame whose prelude or message CRC32 does not match."""
