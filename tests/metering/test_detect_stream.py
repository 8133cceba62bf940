"""Streaming: any split of a body gives the same Labels; encodings are undone; memory is bounded."""

from __future__ import annotations

import json
import re
import tracemalloc
from urllib.parse import urlencode

import pytest
from detectkit import documents, expected, split_at, split_frac
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.counters import Counters
from agent.metering.detect import Detectors, Labels, labels
from agent.metering.detect.engine import TextWindow
from agent.metering.detect.markings import MarkingDetector
from agent.metering.detect.numbers import NumberDetector
from agent.metering.detect.scanner import Scanner
from agent.metering.detect.secrets import secret_detectors

# A tiny batch makes every feed a scan, so windows end at every possible place.
TINY = Detectors(window_chars=1)
WHOLE = Detectors()
FRACTIONS = st.lists(st.floats(0, 1), max_size=16)
SLOW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_all(scanner: Scanner, pieces: list[bytes]) -> Labels:
    for piece in pieces:
        scanner.feed(piece)
    return scanner.finish()


@SLOW
@given(doc=documents(), cuts=FRACTIONS)
def test_any_split_gives_the_counts_of_one_pass(doc: tuple[str, list], cuts: list[float]) -> None:
    text, items = doc
    body = text.encode()
    whole = WHOLE.scan(body, "text/plain")
    assert whole.as_dict() == expected(items)
    assert feed_all(TINY.scanner("text/plain"), split_frac(body, cuts)) == whole


@SLOW
@given(doc=documents(), cuts=FRACTIONS)
def test_json_escapes_are_undone_wherever_the_body_is_split(
    doc: tuple[str, list], cuts: list[float]
) -> None:
    text, items = doc
    # ensure_ascii turns every non-ASCII character into \\uXXXX; escaping "@" and "-" too
    # hides e-mail addresses, IBAN groups and keys from a scanner that does not decode.
    encoded = json.dumps({"messages": [{"role": "user", "content": text}]})
    encoded = encoded.replace("@", "\\u0040").replace("-", "\\u002d")
    got = feed_all(TINY.scanner("application/json"), split_frac(encoded.encode(), cuts))
    assert got.as_dict() == expected(items)


@SLOW
@given(doc=documents(), cuts=FRACTIONS)
def test_json_inside_a_json_string_is_undone_too(doc: tuple[str, list], cuts: list[float]) -> None:
    text, items = doc
    inner = json.dumps({"arguments": text})  # a tool call's arguments: JSON in a string
    outer = json.dumps({"tool_calls": [{"function": {"arguments": inner}}]})
    got = feed_all(
        TINY.scanner("application/json; charset=utf-8"), split_frac(outer.encode(), cuts)
    )
    assert got.as_dict() == expected(items)


@SLOW
@given(doc=documents(), cuts=FRACTIONS)
def test_form_encoding_is_undone_wherever_the_body_is_split(
    doc: tuple[str, list], cuts: list[float]
) -> None:
    text, items = doc
    body = urlencode({"prompt": text, "model": "x"}).encode()
    got = feed_all(TINY.scanner("application/x-www-form-urlencoded"), split_frac(body, cuts))
    assert got.as_dict() == expected(items)


# Pieces that meet at awkward places: digits, separators, letters, escapes, partial items.
ATOMS = st.one_of(
    st.sampled_from(
        [
            "4111 1111 1111 1111", "4111111111111111", "12/25", "+44 20 7946 0958", "(415) 555-267",
            "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "219-09-9998", "AB 12 34 56 C",
            "12345678Z", "X1234567L", "BSN ", "Aadhaar ", "2341 2341 2346", "a.b@example.com", "@",
            "AKIAIOSFODNN7EXAMPLE", "sk-", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz",
            "CONFIDENTIAL", "TOP ", "SECRET", " ", "  ", "-", ".", "/", "+", "(", ")", "\n", "\\",
            "\\u0040", "\\u00", "%40", "%", "é", "आधार", "word " * 40,
        ]
    ),
    st.text(alphabet="0123456789 -+()./@ABCDEXYZabcxyz_\\", max_size=24),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    atoms=st.lists(ATOMS, min_size=5, max_size=120),
    cuts=FRACTIONS,
    content_type=st.sampled_from(
        ["text/plain", "application/json", "application/x-www-form-urlencoded"]
    ),
)
def test_any_split_of_adversarial_text_gives_the_counts_of_one_pass(
    atoms: list[str], cuts: list[float], content_type: str
) -> None:
    body = "".join(atoms).encode()
    whole = WHOLE.scan(body, content_type)
    assert feed_all(TINY.scanner(content_type), split_frac(body, cuts)) == whole


BOUNDARY = "----lanternBoundary7MA4YWxkTrZu0gW"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def multipart(fields: list[tuple[str, str | None, str | None, bytes]]) -> bytes:
    """(name, filename, content type, data) parts as multipart/form-data."""
    out = b""
    for name, filename, ctype, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        out += head.encode() + b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@SLOW
@given(
    first=documents(max_items=6),
    second=documents(max_items=6),
    cuts=FRACTIONS,
)
def test_multipart_fields_and_files_wherever_the_body_is_split(
    first: tuple[str, list], second: tuple[str, list], cuts: list[float]
) -> None:
    (text1, items1), (text2, items2) = first, second
    body = multipart(
        [
            ("purpose", None, None, b"assistants"),
            ("note", None, "text/plain; charset=utf-8", text1.encode()),
            ("file", "Q3 layoffs.csv", "text/csv", text2.encode()),
            ("image", "photo.PNG", "image/png", PNG),
        ]
    )
    got = feed_all(
        TINY.scanner(f'multipart/form-data; boundary="{BOUNDARY}"'), split_frac(body, cuts)
    )
    assert got.as_dict() == expected(items1 + items2)
    uploads = {u.ext_class: u for u in got.uploads}
    assert set(uploads) == {"image", "spreadsheet"}  # file names are reduced to these
    assert (uploads["image"].kind, uploads["image"].count) == ("png", 1)
    assert uploads["image"].total_bytes == len(PNG)
    sheet = uploads["spreadsheet"]
    assert sheet.kind in ("text", "csv", "empty")
    assert (sheet.count, sheet.total_bytes) == (1, len(text2.encode()))


def test_a_jwt_split_anywhere_around_it_counts_once() -> None:
    jwt = (
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
        ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )
    pad = "word " * 3000  # longer than the JWT detector's look-ahead, so windows end early
    body = (pad + jwt + " " + pad).encode()
    at = len(pad)
    for cut in range(at - 3, at + len(jwt) + 3):
        got = feed_all(TINY.scanner("text/plain"), split_at(body, [cut, cut + 7]))
        assert got.as_dict() == {labels.JWT: 1}, cut


def test_a_utf8_character_split_between_chunks_is_not_lost() -> None:
    body = "Aadhaar (आधार) 2341 2341 2346 — CONFIDENTIAL".encode()
    for cut in range(len(body)):
        got = feed_all(TINY.scanner("text/plain"), split_at(body, [cut]))
        assert got.as_dict() == {labels.IN_AADHAAR: 1, labels.MARK_CONFIDENTIAL: 1}, cut


def test_devanagari_context_word_in_json_escapes() -> None:
    body = json.dumps({"content": "आधार 2341 2341 2346"}).encode()
    assert b"\\u0906" in body
    assert WHOLE.scan(body, "application/json").as_dict() == {labels.IN_AADHAAR: 1}


def test_scan_limit_truncates_and_counts() -> None:
    counters = Counters()
    detectors = Detectors(max_scan_bytes=100, counters=counters)
    body = b"a@example.com " + b"x" * 80 + b" b@example.com and more"
    result = detectors.scan(body, "text/plain")
    assert result.as_dict() == {labels.EMAIL: 1}
    assert result.truncated
    assert counters.get("metering.detect.truncated") == 1
    assert not detectors.scan(b"c@example.com", "text/plain").truncated
    assert counters.get("metering.detect.truncated") == 1


def test_scan_limit_does_not_stop_upload_sizing() -> None:
    detectors = Detectors(max_scan_bytes=10)
    body = multipart([("a", None, None, b"x" * 50), ("f", "a.png", "image/png", PNG)])
    result = detectors.scan(body, f"multipart/form-data; boundary={BOUNDARY}")
    assert result.truncated
    assert [(u.kind, u.count, u.total_bytes) for u in result.uploads] == [("png", 1, len(PNG))]


def test_memory_stays_bounded_for_a_large_body() -> None:
    chunk = ("lorem ipsum 4111 1111 1111 1111 dolor a@b.co sit amet " * 1200).encode()
    scanner = Detectors(max_scan_bytes=1 << 30).scanner("text/plain")
    scanner.feed(chunk)  # warm up: compiled patterns, caches
    tracemalloc.start()
    try:
        for _ in range(100):  # ~6.5 MB
            scanner.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = scanner.finish()
    assert result.get(labels.CARD) == 1200 * 101
    # The window keeps one batch plus the overlap; a few chunk-sized strings on top.
    assert peak < 8 * len(chunk), peak


def test_finish_twice_or_feed_after_finish_is_an_error() -> None:
    scanner = WHOLE.scanner()
    scanner.feed(b"x")
    scanner.finish()
    with pytest.raises(RuntimeError):
        scanner.finish()
    with pytest.raises(RuntimeError):
        scanner.feed(b"y")


# -- the overlap each detector declares covers what its patterns can match --------------------


def _max_width(pattern: re.Pattern[str]) -> int:
    from re import _parser  # type: ignore[attr-defined]

    return int(_parser.parse(pattern.pattern, pattern.flags).getwidth()[1])


@pytest.mark.parametrize("det", secret_detectors(), ids=lambda d: d.pattern.pattern[:16])
def test_secret_overlap_covers_the_longest_match(det: object) -> None:
    pattern = det.pattern  # type: ignore[attr-defined]
    # One character more than the longest match: the look-ahead after it.
    assert _max_width(pattern) + 1 <= det.right  # type: ignore[attr-defined]


def test_marking_and_number_overlaps_cover_their_longest_reads() -> None:
    from agent.metering.detect import numbers

    marking = MarkingDetector()
    assert _max_width(marking._search.__self__) + 1 <= marking.right  # type: ignore[attr-defined]
    number = NumberDetector()
    for rx in (numbers._IBAN, numbers._NINO, numbers._NIE, numbers._DNI):
        assert _max_width(rx) + 1 <= number.right
    assert number.right > numbers._MAX_TOKEN + 2  # a token may start 2 characters before its key


def test_window_counts_equal_a_single_pass_for_tiny_batches() -> None:
    text = "x " * 50 + "4111 1111 1111 1111 " * 30 + "a@b.co " * 30
    for batch in (1, 7, 64, 10_000):
        window = TextWindow(WHOLE.detectors, batch_chars=batch)
        for i in range(0, len(text), 5):
            window.feed(text[i : i + 5])
        assert window.finish() == {labels.CARD: 30, labels.EMAIL: 30}, batch


# -- the decoders, split at every position ------------------------------------------------------

RAW = 'mail a@b.co\n\t"quoted" back\\slash ünï \\u0040 is literal, \\n too, end\\'
# The body of a JSON string literal, every non-ASCII character and the "@" as \uXXXX.
ESCAPED = json.dumps(RAW, ensure_ascii=True)[1:-1].replace("@", "\\u0040")


@pytest.mark.parametrize("cut", range(len(ESCAPED) + 1))
def test_json_unescaper_split_anywhere_gives_the_string(cut: int) -> None:
    from agent.metering.detect.text import JsonUnescaper

    unescaper = JsonUnescaper()
    got = unescaper.feed(ESCAPED[:cut]) + unescaper.feed(ESCAPED[cut:]) + unescaper.flush()
    assert got == RAW


FORM = urlencode({"q": "a@b.co + 100% ünï", "x": "1&2=3"}).encode()


@pytest.mark.parametrize("cut", range(len(FORM) + 1))
def test_form_decoder_split_anywhere_equals_unquote_plus(cut: int) -> None:
    from urllib.parse import unquote_plus

    from agent.metering.detect.text import TextDecoder

    decoder = TextDecoder("form")
    got = decoder.feed(FORM[:cut]) + decoder.feed(FORM[cut:]) + decoder.flush()
    assert got == unquote_plus(FORM.decode())
