"""Typed records of the AI-service catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Category = Literal[
    "assistant",
    "api",
    "coding",
    "image",
    "video",
    "audio",
    "search",
    "agent",
    "model_hub",
    "meeting",
    "writing",
    "saas_feature",
    "local_runtime",
]
CATEGORIES: tuple[str, ...] = Category.__args__  # type: ignore[attr-defined]
Tier = Literal["consumer", "enterprise", "api"]
TIERS: tuple[str, ...] = Tier.__args__  # type: ignore[attr-defined]
PatternKind = Literal["domain", "exact", "regex"]
RISK_ATTRIBUTES: dict[str, type] = {
    "trains_on_user_data": bool,
    "retention": str,
    "sso": bool,
    "soc2": bool,
    "iso27001": bool,
    "hq_country": str,
}


@dataclass(frozen=True, slots=True)
class HostPattern:
    kind: PatternKind
    pattern: str  # normalised: lower-case, A-labels, no trailing dot (regex: as written)
    tier: Tier | None = None
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class RiskFact:
    attribute: str
    value: bool | str
    source: str
    tier: Tier | None = None
    note: str | None = None
    as_of: str | None = None


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    name: str
    vendor: str
    vendor_id: str
    category: Category
    hosts: tuple[HostPattern, ...]
    processes: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    tier: Tier | None = None
    description: str | None = None
    risk: tuple[RiskFact, ...] = ()
    hq_country: str | None = None
    file: str = ""


@dataclass(frozen=True, slots=True)
class Match:
    """A name or process matched to a catalog service."""

    service: Service
    pattern: HostPattern | None  # None for a process or port match
    tier: Tier | None

    @property
    def pinned(self) -> bool:
        return self.pattern is not None and self.pattern.pinned
