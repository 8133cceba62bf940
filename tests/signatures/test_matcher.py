"""Label-boundary matching, precedence, normalisation, processes; against a small catalog."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signatures.exceptions import CatalogError
from signatures.matcher import Matcher
from signatures.model import HostPattern, Service


def svc(sid: str, *hosts: HostPattern, processes: tuple[str, ...] = ()) -> Service:
    return Service(
        id=sid,
        name=sid.title(),
        vendor="V",
        vendor_id="v",
        category="api",
        hosts=hosts,
        processes=processes,
    )


def dom(p: str, **kw: object) -> HostPattern:
    return HostPattern("domain", p, **kw)  # type: ignore[arg-type]


def small_matcher() -> Matcher:
    return Matcher(
        [
            svc("chat", dom("chatgpt.com"), HostPattern("exact", "chat.openai.com")),
            svc("api", dom("api.openai.com"), dom("openai.com")),
            svc("sora", dom("sora.chatgpt.com")),
            svc("bedrock", HostPattern("regex", r"bedrock-runtime\.[a-z0-9-]+\.amazonaws\.com")),
            svc("idn", dom("xn--bcher-kva.example")),
            svc("cursor", dom("cursor.sh"), processes=("Cursor", "Cursor.exe")),
        ]
    )


@pytest.fixture
def m() -> Matcher:
    return small_matcher()


SMALL = small_matcher()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chatgpt.com", "chat"),
        ("www.chatgpt.com", "chat"),
        ("CHATGPT.COM.", "chat"),
        ("sora.chatgpt.com", "sora"),  # longer domain wins
        ("x.sora.chatgpt.com", "sora"),
        ("chat.openai.com", "chat"),  # exact beats the openai.com domain
        ("x.chat.openai.com", "api"),  # exact covers no subdomain; falls to openai.com
        ("api.openai.com", "api"),
        ("notopenai.com", None),
        ("openai.com.evil.net", None),
        ("openai.co", None),
        ("com", None),
        ("", None),
        ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
        ("bedrock-runtime.us-east-1.amazonaws.com.evil.net", None),
        ("x.bedrock-runtime.us-east-1.amazonaws.com", None),
        ("bücher.example", "idn"),
        ("www.BÜCHER.example", "idn"),
        ("xn--bcher-kva.example", "idn"),
    ],
)
def test_match_name(m: Matcher, name: str, expected: str | None) -> None:
    hit = m.match_name(name)
    assert (hit.service.id if hit else None) == expected


def test_tier_and_pinned_come_from_the_host(m: Matcher) -> None:
    m2 = Matcher([svc("t", dom("a.example", tier="enterprise", pinned=True), dom("b.example"))])
    a, b = m2.match_name("x.a.example"), m2.match_name("b.example")
    assert a is not None and a.tier == "enterprise" and a.pinned
    assert b is not None and b.tier is None and not b.pinned


def test_process_names_are_case_insensitive_without_exe(m: Matcher) -> None:
    for name in ("Cursor", "cursor", "CURSOR.EXE", "cursor.exe"):
        hit = m.match_process(name)
        assert hit is not None and hit.id == "cursor"
    assert m.match_process("cursorx") is None


def test_two_services_claiming_one_pattern_is_an_error() -> None:
    with pytest.raises(CatalogError, match="also claimed"):
        Matcher([svc("a", dom("x.example")), svc("b", dom("x.example"))])


def test_bad_idna_does_not_match_or_raise(m: Matcher) -> None:
    assert m.match_name("\udcff.example") is None
    assert m.match_name("a..b") is None


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)


@given(st.lists(labels, min_size=1, max_size=5))
def test_label_boundary_property(parts: list[str]) -> None:
    """A name matches openai.com iff it is openai.com or ends with '.openai.com'."""
    name = ".".join(parts)
    hit = SMALL.match_name(name)
    on_boundary = name == "openai.com" or name.endswith(".openai.com")
    if hit is not None and hit.service.id == "api":
        assert on_boundary
    if on_boundary and name != "chat.openai.com":
        assert hit is not None and hit.service.id == "api"
