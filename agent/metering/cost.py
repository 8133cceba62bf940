"""What a call cost: list prices from the `genai-prices` database, organisation overrides on top.

Prices are not kept in Lantern's code. `Pricer` asks genai-prices (Pydantic's maintained price
database, bundled with the package: no network) for the list price of a `Usage` and applies the
organisation's overrides: absolute per-million-token prices for a provider/model, or a
discount factor on the list price. A model neither database nor override knows costs None:
never a guess. Web-app usage (estimated, seat-priced) is not priced.

genai-prices is imported on first use, not at import time: it costs ~30 MB of resident memory
and cannot be installed next to mitmproxy 11 (its HTTP client needs h11 >= 0.16, mitmproxy pins
h11 <= 0.14), so the mitmproxy process extracts usage without prices and the agent prices it.

genai-prices' ``input_tokens`` includes cache reads and writes, as our `Usage` does (its
cache units are descendants of input tokens), so counts pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.metering.exceptions import PricingError
from agent.metering.records import Usage

# Our provider names (OpenTelemetry gen_ai.provider.name) to genai-prices provider ids.
GENAI_PRICES_PROVIDER: dict[str, str] = {
    "openai": "openai",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "aws.bedrock": "aws",
    "cohere": "cohere",
    "deepseek": "deepseek",
    "x_ai": "x-ai",
    "groq": "groq",
    "mistral_ai": "mistral",
    "perplexity": "perplexity",
    "together": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
}

_PER = 1_000_000
_FIELDS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """An organisation's own price for a provider/model, in USD per million tokens.

    Give ``input_per_mtok`` and ``output_per_mtok`` for absolute prices (cache prices default
    to the input price, the undiscounted rate), and/or ``discount`` as a factor applied to the
    price (0.8: 20 % off the list price, or off the absolute prices when both are given).
    """

    input_per_mtok: float | None = None
    output_per_mtok: float | None = None
    cache_read_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    discount: float | None = None

    @property
    def absolute(self) -> bool:
        return self.input_per_mtok is not None


def parse_overrides(raw: Mapping[str, Mapping[str, Any]]) -> dict[str, PriceOverride]:
    """Validate overrides as policy files give them: ``{"openai/gpt-4o": {"discount": 0.8}}``.

    Keys are ``provider/model`` or ``provider/*``; values hold the `PriceOverride` fields.
    Raises `PricingError` naming the key and the reason.
    """
    out: dict[str, PriceOverride] = {}
    for key, fields in raw.items():
        provider, sep, model = key.partition("/")
        if not sep or not provider or not model:
            raise PricingError(
                f"price override {key!r}: key must be 'provider/model' or 'provider/*'"
            )
        if not isinstance(fields, Mapping):
            raise PricingError(f"price override {key!r}: expected a mapping of prices")
        unknown = set(fields) - {*_FIELDS, "discount"}
        if unknown:
            raise PricingError(f"price override {key!r}: unknown field {sorted(unknown)[0]!r}")
        values: dict[str, float] = {}
        for name, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PricingError(f"price override {key!r}: {name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise PricingError(f"price override {key!r}: {name} must be >= 0")
            values[name] = float(value)
        override = PriceOverride(**values)
        if (override.input_per_mtok is None) != (override.output_per_mtok is None):
            raise PricingError(
                f"price override {key!r}: give both input_per_mtok and output_per_mtok"
            )
        if not override.absolute and override.discount is None:
            raise PricingError(f"price override {key!r}: give prices or a discount")
        if not override.absolute and (
            override.cache_read_per_mtok is not None or override.cache_write_per_mtok is not None
        ):
            raise PricingError(f"price override {key!r}: cache prices need input/output prices")
        out[key] = override
    return out


def overrides_from_policy(directory: Path) -> dict[str, PriceOverride]:
    """The organisation's prices from a policy bundle: the ``prices:`` mapping of each policy
    file in ``directory`` (``*.yaml``), merged. A key given in two files, or any bad entry,
    raises `PricingError` naming the file, so a bad policy is refused as a whole.

        prices:
          openai/gpt-4.1: {discount: 0.8}                       # 80% of the list price
          anthropic/*: {input_per_mtok: 2.4, output_per_mtok: 12.0}
    """
    import yaml  # noqa: PLC0415 - the mitmproxy environment imports this module, without yaml

    out: dict[str, PriceOverride] = {}
    where: dict[str, str] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise PricingError(f"{path.name}: cannot read it: {exc}") from exc
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise PricingError(f"{path.name}: a policy file is a mapping at the top")
        raw = doc.get("prices")
        if raw is None:
            continue
        if not isinstance(raw, Mapping):
            raise PricingError(f"{path.name}: prices: must map 'provider/model' to prices")
        try:
            found = parse_overrides(raw)
        except PricingError as exc:
            raise PricingError(f"{path.name}: {exc}") from exc
        for key, override in found.items():
            if key in out:
                raise PricingError(f"{path.name}: price override {key!r} is also in {where[key]}")
            out[key], where[key] = override, path.name
    return out


class Pricer:
    """Prices `Usage` records; callable, so it can be passed as ``extractor_for(price=...)``."""

    __slots__ = ("_overrides",)

    def __init__(self, overrides: Mapping[str, PriceOverride] | None = None) -> None:
        self._overrides = dict(overrides or {})

    def __call__(self, usage: Usage) -> float | None:
        return self.cost(usage)

    def apply(self, usage: Usage) -> Usage:
        return replace(usage, cost_usd=self.cost(usage))

    def cost(self, usage: Usage) -> float | None:
        if usage.estimated or usage.model is None or usage.input_tokens is None:
            return None
        override = self._override_for(usage.provider, usage.model)
        price: float | None
        if override is not None and override.absolute:
            price = _absolute_cost(usage, override)
        else:
            price = list_price(usage)
        if price is None:
            return None
        if override is not None and override.discount is not None:
            price *= override.discount
        return price

    def _override_for(self, provider: str, model: str) -> PriceOverride | None:
        return self._overrides.get(f"{provider}/{model}") or self._overrides.get(f"{provider}/*")


def _absolute_cost(usage: Usage, o: PriceOverride) -> float:
    assert o.input_per_mtok is not None and o.output_per_mtok is not None  # absolute
    read = usage.cache_read_tokens or 0
    write = usage.cache_write_tokens or 0
    fresh = max((usage.input_tokens or 0) - read - write, 0)
    read_price = o.cache_read_per_mtok if o.cache_read_per_mtok is not None else o.input_per_mtok
    write_price = o.cache_write_per_mtok if o.cache_write_per_mtok is not None else o.input_per_mtok
    return (
        fresh * o.input_per_mtok
        + read * read_price
        + write * write_price
        + (usage.output_tokens or 0) * o.output_per_mtok
    ) / _PER


def _pricing_model(usage: Usage) -> str:
    model = usage.model or ""
    if usage.provider == "aws.bedrock" and model.startswith("arn:"):
        # arn:aws:bedrock:REGION:ACCOUNT:foundation-model/anthropic.claude-...: the id is last.
        return model.rsplit("/", 1)[-1]
    return model


def warm_prices() -> None:
    """Load the price database now (about 0.2 s and 21 MB), so the first metered call is not
    held up by it: the receiver attributes calls on the thread that prices them, and a client
    that hangs up meanwhile could no longer be found."""
    list_price(
        Usage(
            provider="openai",
            model="gpt-4o",
            operation="chat",
            endpoint="chat_completions",
            streaming=False,
            input_tokens=1,
            output_tokens=1,
            cache_read_tokens=None,
            cache_write_tokens=None,
            reasoning_tokens=None,
        )
    )


def list_price(usage: Usage) -> float | None:
    """The genai-prices list price of a usage record, or None if the model is not listed."""
    provider_id = GENAI_PRICES_PROVIDER.get(usage.provider)
    if provider_id is None or usage.input_tokens is None:
        return None
    try:
        import genai_prices  # noqa: PLC0415 - heavy (~30 MB); only the pricing side needs it
    except ImportError:
        return None
    counts = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    try:
        calc = genai_prices.calc_price(
            genai_prices.Usage(**{k: v for k, v in counts.items() if v is not None}),
            _pricing_model(usage),
            provider_id=provider_id,
        )
    except (LookupError, ValueError):
        # LookupError: model or provider not in the database. ValueError: counts the database
        # cannot price (cache parts larger than the input total). Either way: unknown, not 0.
        return None
    return float(calc.total_price)
