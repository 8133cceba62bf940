"""The incremental JSON scanner: Python's json module is the oracle for what it captures."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meterkit import split

from agent.metering.exceptions import MalformedBodyError, TruncatedBodyError
from agent.metering.jsonscan import JsonScanner, Path


def scan(
    body: bytes,
    wanted: set[Path],
    *,
    chunks: list[bytes] | None = None,
    **kw: Any,
) -> tuple[dict[Path, object], JsonScanner]:
    found: dict[Path, object] = {}
    scanner = JsonScanner(wanted, found.__setitem__, **kw)
    for chunk in chunks if chunks is not None else [body]:
        scanner.feed(chunk)
    scanner.finish()
    return found, scanner


def oracle(doc: object, path: Path, out: dict[Path, object], full: Path | None = None) -> None:
    full = path if full is None else full
    if not path:
        out[full] = doc
    elif path[0] is None:
        if isinstance(doc, list):
            for item in doc:
                oracle(item, path[1:], out, full)
    elif isinstance(doc, dict) and path[0] in doc:
        oracle(doc[path[0]], path[1:], out, full)


def paths_in(doc: object, prefix: Path = ()) -> list[Path]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += paths_in(value, (*prefix, key))
    elif isinstance(doc, list):
        for item in doc:
            out += paths_in(item, (*prefix, None))
    return out


def strings_by_key(
    doc: object, key: str | None, ascii_only: bool, out: dict[str | None, int]
) -> None:
    if isinstance(doc, str):
        out[key] = out.get(key, 0) + len(json.dumps(doc, ensure_ascii=ascii_only).encode()) - 2
    elif isinstance(doc, dict):
        for k, v in doc.items():
            strings_by_key(v, k, ascii_only, out)
    elif isinstance(doc, list):
        for item in doc:
            strings_by_key(item, key, ascii_only, out)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_docs = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.dictionaries(st.text(max_size=6), json_docs, max_size=5),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 1]),
    data=st.data(),
)
def test_captures_match_json_module_at_any_chunking(
    doc: dict[str, Any], ascii_only: bool, indent: int | None, data: st.DataObject
) -> None:
    body = json.dumps(doc, ensure_ascii=ascii_only, indent=indent).encode()
    candidates = sorted(set(paths_in(doc)), key=repr)
    picked = data.draw(st.lists(st.sampled_from(candidates), max_size=4)) if candidates else []
    # The scanner captures a wanted value whole and does not look for wanted paths inside it.
    wanted = {p for p in picked if not any(q != p and p[: len(q)] == q for q in picked)}
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))

    expected: dict[Path, object] = {}
    for path in wanted:
        oracle(doc, path, expected)
    found, _ = scan(body, wanted, chunks=split(body, cuts))
    assert found == expected


@settings(max_examples=200, deadline=None)
@given(doc=json_docs, ascii_only=st.booleans(), data=st.data())
def test_string_bytes_are_counted_per_nearest_key(
    doc: object, ascii_only: bool, data: st.DataObject
) -> None:
    body = json.dumps(doc, ensure_ascii=ascii_only).encode()
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=8))
    counted: dict[str | None, int] = {}

    def on_string(key: str | None, n: int) -> None:
        counted[key] = counted.get(key, 0) + n

    scan(body, set(), chunks=split(body, cuts), on_string=on_string)
    expected: dict[str | None, int] = {}
    strings_by_key(doc, None, ascii_only, expected)
    assert counted == {k: v for k, v in expected.items() if v}


def test_content_that_looks_like_usage_is_not_captured() -> None:
    body = (
        b'{"choices":[{"text":"{\\"usage\\": {\\"prompt_tokens\\": 9}} \\\\\\" ] } ["}],'
        b'"usage":{"prompt_tokens":3}}'
    )
    found, _ = scan(body, {("usage",)})
    assert found == {("usage",): {"prompt_tokens": 3}}


def test_escaped_key_matches_its_decoded_name() -> None:
    found, _ = scan(b'{"\\u0075sage": {"n": 1}, "model": "m"}', {("usage",), ("model",)})
    assert found == {("usage",): {"n": 1}, ("model",): "m"}


def test_json_lines_emit_one_event_per_document() -> None:
    events: list[dict[Path, object]] = []
    found: dict[Path, object] = {}

    def end() -> None:
        events.append(dict(found))
        found.clear()

    scanner = JsonScanner({("n",)}, found.__setitem__, on_event_end=end, multi=True)
    scanner.feed(b'{"n": 1}\n{"n": 2}\n\n{"x": [1, {"n": 9}]}\n')
    scanner.finish()
    assert events == [{("n",): 1}, {("n",): 2}, {}]
    assert scanner.documents == 3


def test_array_of_events_paths_are_relative_to_each_element() -> None:
    events: list[object] = []
    found: dict[Path, object] = {}
    scanner = JsonScanner(
        {("u",)},
        found.__setitem__,
        on_event_end=lambda: events.append(found.pop(("u",), None)),
        event_depth=1,
    )
    scanner.feed(b'[{"u": 1}, {"v": {"u": 5}}, {"u": {"deep": [2]}}]')
    scanner.finish()
    assert events == [1, None, {"deep": [2]}]


def test_top_level_scalar_is_captured_at_end_of_body() -> None:
    found, scanner = scan(b" 42 ", {()})
    assert found == {(): 42}
    assert scanner.documents == 1
    found, _ = scan(b"42", {()})
    assert found == {(): 42}


def test_oversize_capture_is_dropped_and_counted() -> None:
    body = b'{"usage": {"pad": "' + b"x" * 100 + b'"}, "model": "m"}'
    found, scanner = scan(body, {("usage",), ("model",)}, max_capture=64)
    assert found == {("model",): "m"}
    assert scanner.oversize == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"a": [1, 2}', "mismatched"),
        (b'{"a": 1} {"b": 2}', "after the end"),
        (b'{"a" 1}', "expected ':'"),
        (b'{"a": 1 "b": 2}', "expected ','"),
        (b"{1: 2}", "object key"),
        (b'{"a": @}', "unexpected byte"),
        (b'{"usage": tru}', "not valid JSON"),  # captured scalars are checked
        (b'{"\\x": 1}', "bad escape"),
        (b'{"a": [}', "mismatched"),  # unwanted subtrees are skipped, brackets still checked
    ],
)
def test_malformed_bodies_raise(body: bytes, message: str) -> None:
    with pytest.raises(MalformedBodyError, match=message):
        scan(body, {("usage",)})


def test_event_depth_one_needs_an_array() -> None:
    with pytest.raises(MalformedBodyError, match="array of events"):
        scan(b'{"u": 1}', {("u",)}, event_depth=1)


@pytest.mark.parametrize("body", [b'{"a": [1, 2', b'{"a": "unterminated', b'{"a"', b'{"a": 1,'])
def test_truncated_bodies_raise_truncated(body: bytes) -> None:
    with pytest.raises(TruncatedBodyError):
        scan(body, {("a",)})


def test_errors_never_quote_the_body() -> None:
    secret = b"CANARY-secret-prompt-text"
    with pytest.raises(MalformedBodyError) as info:
        scan(b'{"usage": "' + secret + b'" x}', {("usage",)})
    assert secret.decode() not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
