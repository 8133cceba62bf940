"""Record factories shared by tests: sessions and usage records as the agent spools them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.records import Session, UsageRecord


def make_session(**overrides: Any) -> Session:
    """One session of alice's in ChatGPT; every field can be overridden."""
    base = Session(
        id="s1",
        version=1,
        user="alice",
        device="laptop-1",
        tool="ChatGPT",
        service_id="openai-chatgpt",
        category="assistant",
        process_name="firefox",
        process_exe="/usr/lib/firefox/firefox",
        parent_name="systemd",
        first_seen=1000.0,
        last_seen=1010.0,
        connections=2,
        hostnames=("chatgpt.com",),
        seen_as=("dns", "tls"),
        bytes_up=1200,
        bytes_down=54000,
        closed=False,
    )
    return replace(base, **overrides)


def numbered_session(i: int, **overrides: Any) -> Session:
    """The ``i``-th of a run of distinct closed sessions (ids ``g000000``, ``g000001``, ...)."""
    values: dict[str, Any] = {
        "id": f"g{i:06d}",
        "first_seen": 1000.0 + i,
        "last_seen": 1001.0 + i,
        "connections": 1,
        "process_exe": None,
        "parent_name": None,
        "seen_as": ("tls",),
        "bytes_up": None,
        "bytes_down": None,
        "closed": True,
        **overrides,
    }
    return make_session(**values)


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
