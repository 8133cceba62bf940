"""Pricing: genai-prices list prices on OpenTelemetry-normalised counts, organisation overrides,
and no guessing for unknown models."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest
from genai_prices.types import TieredPrices
from meterkit import data, run

from agent.metering import PriceOverride, Pricer, PricingError, Usage, parse_overrides


def rates(model: str, provider: str) -> dict[str, Decimal]:
    """Per-million prices from the database (base tier: the tests stay under 200k tokens)."""
    price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1), model, provider_id=provider
    ).model_price
    out = {}
    for key in ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok"):
        value = getattr(price, key)
        out[key] = value.base if isinstance(value, TieredPrices) else value
    return out


def make_usage(**kw: object) -> Usage:
    base = Usage(
        provider="openai",
        model="gpt-4o-2024-08-06",
        operation="chat",
        endpoint="chat_completions",
        streaming=False,
        input_tokens=1117,
        output_tokens=46,
        cache_read_tokens=1024,
        cache_write_tokens=None,
        reasoning_tokens=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_openai_list_price_charges_cached_input_at_the_cache_rate() -> None:
    r = rates("gpt-4o-2024-08-06", "openai")
    expected = (93 * r["input_mtok"] + 1024 * r["cache_read_mtok"] + 46 * r["output_mtok"]) / 10**6
    assert Pricer()(make_usage()) == pytest.approx(float(expected), rel=1e-12)


def test_anthropic_cache_writes_and_reads_priced_after_normalisation() -> None:
    usage = run(
        "https://api.anthropic.com/v1/messages",
        data("anthropic_stream.sse"),
        price=Pricer(),
    )
    r = rates("claude-sonnet-4-5-20250929", "anthropic")
    # input 2520 = 472 fresh + 2048 cache reads (normalised); output 89.
    expected = (472 * r["input_mtok"] + 2048 * r["cache_read_mtok"] + 89 * r["output_mtok"]) / 10**6
    assert usage.cost_usd == pytest.approx(float(expected), rel=1e-12)

    written = Pricer()(
        replace(usage, input_tokens=1000, cache_read_tokens=0, cache_write_tokens=800)
    )
    expected_w = (
        200 * r["input_mtok"] + 800 * r["cache_write_mtok"] + 89 * r["output_mtok"]
    ) / 10**6
    assert written == pytest.approx(float(expected_w), rel=1e-12)


def test_bedrock_arn_is_priced_as_its_model_id() -> None:
    plain = make_usage(
        provider="aws.bedrock",
        model="anthropic.claude-3-5-sonnet-20241022-v2:0",
        cache_read_tokens=None,
    )
    arn = replace(
        plain,
        model="arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20241022-v2:0",
    )
    assert Pricer()(plain) is not None
    assert Pricer()(arn) == Pricer()(plain)


@pytest.mark.parametrize(
    "usage",
    [
        make_usage(model="gpt-nonexistent-2099"),
        make_usage(provider="ollama", model="llama3.2"),  # local: no price list
        make_usage(model=None),
        make_usage(input_tokens=None),
        make_usage(estimated=True, provider="openai", endpoint="chatgpt.web"),
        make_usage(cache_read_tokens=5000),  # more cached than input: inconsistent, unpriced
    ],
    ids=["unknown-model", "no-provider-prices", "no-model", "no-input", "estimated", "bad-counts"],
)
def test_never_guessed(usage: Usage) -> None:
    assert Pricer()(usage) is None


def test_absolute_override_exact() -> None:
    pricer = Pricer(
        parse_overrides(
            {
                "openai/gpt-4o-2024-08-06": {
                    "input_per_mtok": 2,
                    "output_per_mtok": 8,
                    "cache_read_per_mtok": 1,
                }
            }
        )
    )
    # 93 fresh * 2 + 1024 cached * 1 + 46 out * 8 = 1578 micro-dollars
    assert pricer(make_usage()) == pytest.approx(0.001578, rel=1e-12)


def test_absolute_override_without_cache_prices_charges_input_rate() -> None:
    pricer = Pricer({"openai/*": PriceOverride(input_per_mtok=1.0, output_per_mtok=2.0)})
    assert pricer(make_usage()) == pytest.approx((1117 * 1 + 46 * 2) / 1e6, rel=1e-12)


def test_absolute_override_prices_a_model_the_database_lacks() -> None:
    pricer = Pricer(parse_overrides({"ollama/*": {"input_per_mtok": 0, "output_per_mtok": 0}}))
    assert pricer(make_usage(provider="ollama", model="llama3.2")) == 0.0


def test_discount_override_scales_the_list_price_and_exact_model_wins() -> None:
    list_price = Pricer()(make_usage())
    assert list_price is not None
    pricer = Pricer(
        parse_overrides(
            {
                "openai/*": {"discount": 0.5},
                "openai/gpt-4o-2024-08-06": {"discount": 0.8},
            }
        )
    )
    assert pricer(make_usage()) == pytest.approx(list_price * 0.8, rel=1e-12)
    other = make_usage(model="gpt-4o-mini", cache_read_tokens=0)
    other_list = Pricer()(other)
    assert other_list is not None
    assert pricer(other) == pytest.approx(other_list * 0.5, rel=1e-12)
    # A discount cannot price what the database does not know.
    assert pricer(make_usage(model="gpt-nonexistent-2099")) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gpt-4o": {"discount": 0.5}}, "provider/model"),
        ({"openai/gpt-4o": {"discount": True}}, "must be a number"),
        ({"openai/gpt-4o": {"discount": -1}}, ">= 0"),
        ({"openai/gpt-4o": {"input_per_mtok": float("nan"), "output_per_mtok": 1}}, ">= 0"),
        ({"openai/gpt-4o": {"input_per_mtok": 1}}, "both input_per_mtok and output_per_mtok"),
        ({"openai/gpt-4o": {}}, "prices or a discount"),
        ({"openai/gpt-4o": {"discount": 0.9, "cache_read_per_mtok": 1}}, "cache prices need"),
        ({"openai/gpt-4o": {"discunt": 0.9}}, "unknown field 'discunt'"),
        ({"openai/gpt-4o": 0.9}, "mapping"),
    ],
)
def test_bad_overrides_name_key_and_reason(raw: dict[str, object], message: str) -> None:
    with pytest.raises(PricingError, match=message) as info:
        parse_overrides(raw)  # type: ignore[arg-type]
    assert next(iter(raw)) in str(info.value)


def test_extractor_without_pricer_leaves_cost_none() -> None:
    usage = run("https://api.openai.com/v1/chat/completions", data("openai_chat.json"))
    assert usage.cost_usd is None
    priced = Pricer().apply(usage)
    assert priced.cost_usd == Pricer()(usage)
    assert priced.cost_usd is not None and priced.cost_usd > 0


def test_extraction_imports_only_the_standard_library() -> None:
    """The mitmproxy environment has no genai-prices or pydantic: extraction must not need them."""
    code = (
        "import sys; before = set(sys.modules)\n"
        "import agent.metering as m\n"
        "ex = m.extractor_for('https://api.openai.com/v1/chat/completions')\n"
        'ex.feed_response(b\'{"usage": {"prompt_tokens": 1}}\'); ex.finish([], 200)\n'
        "new = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "print(sorted(new - set(sys.stdlib_module_names) - {'agent'}))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    ).stdout
    assert out.strip() == "[]"


def test_the_receiver_loads_the_price_database_when_it_starts(tmp_path: Path) -> None:
    """Not on the first call: that call's client may hang up while the database loads."""
    code = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from agent.metering.usage import UsageReceiver\n"
        "r = UsageReceiver(Path(sys.argv[1]), os.geteuid(), print, attribute=False)\n"
        "before = 'genai_prices' in sys.modules\n"
        "r.start()\n"
        "deadline = time.monotonic() + 20\n"
        "while 'genai_prices' not in sys.modules and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
        "r.stop()\n"
        "print(before, 'genai_prices' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "c.sock")],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    ).stdout  # fmt: skip
    assert out.split() == ["False", "True"]
