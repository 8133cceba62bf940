"""Usage metering: token counts, model and cost of AI calls, extracted from bodies in memory.

Public API::

    extractor_for(url, request_headers, key_secret=..., price=...) -> Extractor | None
    Extractor.feed_request(chunk) / feed_response(chunk) / finish(headers, status) -> Usage
    Pricer(overrides)(usage) -> float | None;  parse_overrides(policy_mapping)
    HEADERS_TO_STRIP: request headers the proxy removes before forwarding

Importing this package pulls in the standard library only (genai-prices loads on first
pricing), so the same code runs inside the mitmproxy environment.
"""

from __future__ import annotations

from agent.metering.cost import PriceOverride, Pricer, parse_overrides
from agent.metering.exceptions import (
    ChecksumError,
    MalformedBodyError,
    MeteringError,
    PricingError,
    TruncatedBodyError,
    UnknownEndpointError,
)
from agent.metering.extract import Extractor, extractor_for
from agent.metering.identity import HEADERS_TO_STRIP
from agent.metering.records import Usage

__all__ = [
    "HEADERS_TO_STRIP",
    "ChecksumError",
    "Extractor",
    "MalformedBodyError",
    "MeteringError",
    "PriceOverride",
    "Pricer",
    "PricingError",
    "TruncatedBodyError",
    "UnknownEndpointError",
    "Usage",
    "extractor_for",
    "parse_overrides",
]
