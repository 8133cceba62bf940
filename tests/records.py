"""Record factories shared by tests: usage records as the agent spools them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.records import UsageRecord


def make_usage_record(**overrides: Any) -> UsageRecord:
    base = UsageRecord(
        id="u1",
        user="alice",
        device="alice-laptop",
        process_name="python3",
        process_exe="/usr/bin/python3",
        service_id="openai-api",
        host="api.openai.com",
        started=100.0,
        ended=101.5,
        provider="openai",
        model="gpt-4o-mini",
        operation="chat",
        endpoint="chat_completions",
        streaming=False,
        input_tokens=21,
        output_tokens=5,
        cache_read_tokens=None,
        cache_write_tokens=None,
        reasoning_tokens=None,
        estimated=False,
        cost_usd=0.0001,
        status_code=200,
        deployment=None,
        tags=(("team", "payments"),),
        key_fingerprint="ab" * 32,
        key_hint="sk-proj-...abcd",
        data_class="restricted",
        labels=(("finance.payment_card", 1),),
        labels_truncated=False,
        uploads=(("pdf", "document", 1, 4096),),
        bytes_up=300,
        bytes_down=500,
        error=None,
    )
    return replace(base, **overrides)
