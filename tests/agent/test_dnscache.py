"""Tests for the IP→name cache: chains, expiry on packet time, clamping and the size bounds."""

from __future__ import annotations

from typing import Any

import dns.message
import dns.rrset
import pytest

from agent.counters import Counters
from agent.extract.dns import (
    TYPE_A,
    TYPE_AAAA,
    TYPE_CNAME,
    DnsMessage,
    DnsQuestion,
    DnsRecord,
    parse_dns,
)
from agent.extract.dnscache import IpNameCache

T0 = 1_700_000_000.0


def response(
    qname: str, *answers: tuple[str, int, str, str], qtype: str = "A", msg_id: int = 7
) -> DnsMessage:
    """A dnspython-built response, decoded by parse_dns; answers are (owner, ttl, type, rdata)."""
    query = dns.message.make_query(qname, qtype, id=msg_id)
    msg = dns.message.make_response(query)
    for owner, ttl, rtype, text in answers:
        msg.answer.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    return parse_dns(msg.to_wire(want_shuffle=False))


def a_answer(name: str, ip: str, ttl: int = 300) -> DnsMessage:
    return response(name, (f"{name}.", ttl, "A", ip))


def test_a_answer_maps_address_to_question_name() -> None:
    cache = IpNameCache()
    cache.on_response(T0, a_answer("api.openai.com", "192.0.2.10"))
    assert cache.lookup("192.0.2.10", T0 + 1) == ("api.openai.com",)
    assert cache.lookup("192.0.2.11", T0 + 1) == ()
    assert len(cache) == 1


def test_cname_chain_maps_address_to_every_name_question_first() -> None:
    cache = IpNameCache()
    msg = response(
        "chat.example.com",
        ("chat.example.com.", 300, "CNAME", "edge.example.net."),
        ("edge.example.net.", 300, "CNAME", "a1.cdn.example.org."),
        ("a1.cdn.example.org.", 300, "A", "192.0.2.20"),
        ("a1.cdn.example.org.", 300, "A", "192.0.2.21"),
    )
    cache.on_response(T0, msg)
    chain = ("chat.example.com", "edge.example.net", "a1.cdn.example.org")
    assert cache.lookup("192.0.2.20", T0) == chain
    assert cache.lookup("192.0.2.21", T0) == chain


def test_aaaa_answers_are_keyed_by_normalised_text() -> None:
    cache = IpNameCache()
    cache.on_response(
        T0, response("v6.example", ("v6.example.", 60, "AAAA", "2001:DB8:0::7"), qtype="AAAA")
    )
    assert cache.lookup("2001:db8::7", T0) == ("v6.example",)


def test_https_hints_map_to_the_question_name() -> None:
    cache = IpNameCache()
    text = "1 . alpn=h2 ipv4hint=192.0.2.30 ech=AARhYmNk ipv6hint=2001:db8::30"
    cache.on_response(
        T0, response("claude.example", ("claude.example.", 300, "HTTPS", text), qtype="HTTPS")
    )
    assert cache.lookup("192.0.2.30", T0) == ("claude.example",)
    assert cache.lookup("2001:db8::30", T0) == ("claude.example",)


def test_records_off_the_question_chain_are_ignored() -> None:
    cache = IpNameCache()
    msg = response(
        "asked.example",
        ("asked.example.", 300, "A", "192.0.2.40"),
        ("unasked.example.", 300, "A", "192.0.2.41"),
        ("unasked.example.", 300, "CNAME", "asked.example."),
    )
    cache.on_response(T0, msg)
    assert cache.lookup("192.0.2.40", T0) == ("asked.example",)
    assert cache.lookup("192.0.2.41", T0) == ()


def test_queries_and_questionless_messages_add_nothing() -> None:
    cache = IpNameCache()
    record = DnsRecord("printer.local", TYPE_A, 120, "192.0.2.50")
    cache.on_response(T0, DnsMessage(1, False, 0, 0, (DnsQuestion("printer.local", 1),), (record,)))
    cache.on_response(T0, DnsMessage(0, True, 0, 0, (), (record,)))
    assert len(cache) == 0


def test_cname_loop_terminates() -> None:
    cache = IpNameCache()
    answers = (
        DnsRecord("a.example", TYPE_CNAME, 60, "b.example"),
        DnsRecord("b.example", TYPE_CNAME, 60, "a.example"),
        DnsRecord("b.example", TYPE_A, 60, "192.0.2.60"),
    )
    cache.on_response(T0, DnsMessage(1, True, 0, 0, (DnsQuestion("a.example", 1),), answers))
    assert cache.lookup("192.0.2.60", T0) == ("a.example", "b.example")


def test_entries_expire_on_packet_time() -> None:
    cache = IpNameCache()
    cache.on_response(T0, a_answer("short.example", "192.0.2.70", ttl=120))
    assert cache.lookup("192.0.2.70", T0 + 119.9) == ("short.example",)
    assert cache.lookup("192.0.2.70", T0 + 120) == ()
    assert len(cache) == 0  # an expired lookup prunes the address


def test_ttl_is_clamped_to_min_and_max() -> None:
    cache = IpNameCache(min_ttl=60, max_ttl=3600)
    cache.on_response(T0, a_answer("zero.example", "192.0.2.80", ttl=0))
    cache.on_response(T0, a_answer("huge.example", "192.0.2.81", ttl=7 * 86400))
    assert cache.lookup("192.0.2.80", T0 + 59) == ("zero.example",)
    assert cache.lookup("192.0.2.80", T0 + 60) == ()
    assert cache.lookup("192.0.2.81", T0 + 3599) == ("huge.example",)
    assert cache.lookup("192.0.2.81", T0 + 3600) == ()


def test_a_later_shorter_ttl_does_not_shorten_expiry() -> None:
    cache = IpNameCache(min_ttl=0)
    cache.on_response(T0, a_answer("x.example", "192.0.2.90", ttl=300))
    cache.on_response(T0 + 100, a_answer("x.example", "192.0.2.90", ttl=10))
    assert cache.lookup("192.0.2.90", T0 + 250) == ("x.example",)


def test_shared_address_keeps_several_names_most_recent_first() -> None:
    cache = IpNameCache()
    for i, name in enumerate(["one.example", "two.example", "three.example"]):
        cache.on_response(T0 + i, a_answer(name, "192.0.2.100"))
    assert cache.lookup("192.0.2.100", T0 + 5) == ("three.example", "two.example", "one.example")
    cache.on_response(T0 + 10, a_answer("one.example", "192.0.2.100"))
    assert cache.lookup("192.0.2.100", T0 + 11)[0] == "one.example"


def test_names_per_address_are_bounded_oldest_dropped_first() -> None:
    counters = Counters()
    cache = IpNameCache(max_names_per_ip=3, counters=counters)
    for i in range(5):
        cache.on_response(T0 + i, a_answer(f"n{i}.example", "192.0.2.110"))
    assert cache.lookup("192.0.2.110", T0 + 5) == ("n4.example", "n3.example", "n2.example")
    assert counters.get("dnscache.names_dropped") == 2


def test_expired_name_is_dropped_before_a_live_one() -> None:
    cache = IpNameCache(min_ttl=0, max_names_per_ip=2)
    cache.on_response(T0, a_answer("live.example", "192.0.2.120", ttl=1000))
    cache.on_response(T0, a_answer("stale.example", "192.0.2.120", ttl=5))
    cache.on_response(T0 + 10, a_answer("new.example", "192.0.2.120", ttl=1000))
    assert cache.lookup("192.0.2.120", T0 + 10) == ("new.example", "live.example")


def test_address_count_is_bounded_and_evictions_counted() -> None:
    counters = Counters()
    cache = IpNameCache(max_entries=3, counters=counters)
    for i in range(5):
        cache.on_response(T0, a_answer(f"h{i}.example", f"192.0.2.{i}"))
    assert len(cache) == 3
    assert cache.lookup("192.0.2.0", T0) == ()
    assert cache.lookup("192.0.2.1", T0) == ()
    assert cache.lookup("192.0.2.4", T0) == ("h4.example",)
    assert counters.get("dnscache.evicted") == 2


def test_lookup_counts_as_use_for_eviction() -> None:
    cache = IpNameCache(max_entries=2)
    cache.on_response(T0, a_answer("old.example", "192.0.2.1"))
    cache.on_response(T0, a_answer("mid.example", "192.0.2.2"))
    assert cache.lookup("192.0.2.1", T0) == ("old.example",)
    cache.on_response(T0, a_answer("new.example", "192.0.2.3"))
    assert cache.lookup("192.0.2.1", T0) == ("old.example",)
    assert cache.lookup("192.0.2.2", T0) == ()


def test_pushing_out_a_stale_entry_counts_as_expired_not_evicted() -> None:
    counters = Counters()
    cache = IpNameCache(max_entries=1, min_ttl=0, counters=counters)
    cache.on_response(T0, a_answer("gone.example", "192.0.2.1", ttl=10))
    cache.on_response(T0 + 20, a_answer("here.example", "192.0.2.2", ttl=10))
    assert counters.get("dnscache.expired") == 1
    assert counters.get("dnscache.evicted") == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_entries": 0}, {"max_names_per_ip": 0}, {"min_ttl": -1}, {"min_ttl": 10, "max_ttl": 5}],
)
def test_bad_bounds_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be|need"):
        IpNameCache(**kwargs)


def test_aaaa_and_a_for_the_same_name_both_recorded() -> None:
    cache = IpNameCache()
    answers = (
        DnsRecord("dual.example", TYPE_A, 60, "192.0.2.130"),
        DnsRecord("dual.example", TYPE_AAAA, 60, "2001:db8::130"),
    )
    cache.on_response(T0, DnsMessage(1, True, 0, 0, (DnsQuestion("dual.example", 255),), answers))
    assert cache.lookup("192.0.2.130", T0) == ("dual.example",)
    assert cache.lookup("2001:db8::130", T0) == ("dual.example",)
