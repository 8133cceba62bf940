"""Properties over every recorded body: chunk boundaries never change the Usage, and no content
from a body ever reaches the Usage record or an error message."""

from __future__ import annotations

import json
import re
from dataclasses import astuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meterkit import data, run, split
from test_metering_providers import CASES, WEB_CASES, Case

from agent.metering import MeteringError, Pricer, Usage

ALL_CASES = {**CASES, **WEB_CASES}
_JSON_STRING = re.compile(rb'"((?:[^"\\]|\\.){6,})"')


def full(case: Case, *, price: Pricer | None = None, key_secret: bytes | None = None) -> Usage:
    request = data(case.request) if case.request else None
    return run(
        case.url,
        case.body(),
        request=request,
        response_headers=case.headers,
        price=price,
        key_secret=key_secret,
    )


@pytest.mark.parametrize("name", sorted(ALL_CASES))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_chunk_boundaries_do_not_change_usage(name: str, draw: st.DataObject) -> None:
    case = ALL_CASES[name]
    body = case.body()
    request = data(case.request) if case.request else b""
    response_cuts = draw.draw(st.lists(st.integers(0, len(body)), max_size=30), label="response")
    request_cuts = draw.draw(st.lists(st.integers(0, len(request)), max_size=10), label="request")
    usage = run(
        case.url,
        body,
        request=request if case.request else None,
        request_chunks=split(request, request_cuts),
        response_chunks=split(body, response_cuts),
        response_headers=case.headers,
    )
    assert usage == full(case)


def one_byte_at_a_time(case: Case) -> Usage:
    body = case.body()
    request = data(case.request) if case.request else None
    return run(
        case.url,
        body,
        request=request,
        request_chunks=[request[i : i + 1] for i in range(len(request))] if request else None,
        response_chunks=[body[i : i + 1] for i in range(len(body))],
        response_headers=case.headers,
    )


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_one_byte_chunks(name: str) -> None:
    case = ALL_CASES[name]
    assert one_byte_at_a_time(case) == full(case)


def body_strings(raw: bytes) -> set[str]:
    """Every JSON string of six or more characters in a body (content and metadata alike)."""
    out = set()
    for m in _JSON_STRING.finditer(raw):
        try:
            value = json.loads(b'"' + m.group(1) + b'"')
        except ValueError:
            continue
        out.add(value)
    return out


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_no_content_reaches_the_usage_record(name: str) -> None:
    case = ALL_CASES[name]
    usage = full(case, price=Pricer(), key_secret=b"k")
    assert "CANARY" not in repr(usage)
    shown = " | ".join(repr(v) for v in astuple(usage))  # values only, not field names
    # Metadata Lantern keeps on purpose: model, tags, provider/endpoint names.
    kept = [str(v) for v in astuple(usage) if isinstance(v, str)]
    kept += [v for pair in usage.tags for v in pair]
    raw = case.body() + (data(case.request) if case.request else b"")
    leaked = {s for s in body_strings(raw) if s in shown and not any(s in k for k in kept)}
    assert leaked == set()


@pytest.mark.parametrize("name", ["truncated.json", "malformed.json"])
def test_no_content_in_error_messages(name: str) -> None:
    with pytest.raises(MeteringError) as info:
        run("https://api.anthropic.com/v1/messages", data(name))
    assert "CANARY" not in str(info.value)
    assert "usage" not in str(info.value) or "usage field" in str(info.value)
