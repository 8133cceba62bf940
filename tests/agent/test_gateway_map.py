"""Gateway user map: YAML and CSV parsing, longest prefix, reload on change, precise errors."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.attribution.gateway import GatewayAttributor, UserMap, load_user_map
from agent.counters import Counters
from agent.exceptions import ConfigError
from agent.records import Observation
from signatures.matcher import Matcher
from signatures.model import Match

YAML_MAP = """\
# who sits where
users:
  - {ip: 10.0.0.5, user: alice}
  - {cidr: 10.1.0.0/16, user: "dept-eng"}
  - cidr: 10.1.2.0/24
    user: team-ml
  - {cidr: 10.0.0.0/8, user: corp}
  - {cidr: "2001:db8::/32", user: v6-corp}
  - {ip: "2001:db8::5", user: bob}
"""

CSV_MAP = """\
ip_or_cidr,user
10.0.0.5,alice
10.1.0.0/16,dept-eng
10.1.2.0/24,team-ml
10.0.0.0/8,corp
2001:db8::/32,v6-corp
2001:db8::5,bob
"""

EXPECTED = {
    "10.0.0.5": "alice",
    "10.0.0.6": "corp",
    "10.1.9.9": "dept-eng",
    "10.1.2.3": "team-ml",
    "10.200.0.1": "corp",
    "::ffff:10.0.0.5": "alice",
    "2001:db8::5": "bob",
    "2001:db8:ffff::1": "v6-corp",
    "192.0.2.1": None,
    "2001:db9::1": None,
    "not-an-ip": None,
}


@pytest.mark.parametrize(("name", "text"), [("users.yaml", YAML_MAP), ("users.csv", CSV_MAP)])
def test_both_formats_map_by_longest_prefix(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    users = load_user_map(path)
    assert len(users) == 6
    assert {ip: users.lookup(ip) for ip in EXPECTED} == EXPECTED


def _match(matcher: Matcher) -> Match:
    m = matcher.match_name("api.openai.com")
    assert m is not None
    return m


def _obs(src: str) -> Observation:
    return Observation(1.0, src, 50000, "203.0.113.10", 443, "tls", "api.openai.com")


def test_attributor_maps_source_and_marks_unknown(tmp_path: Path, matcher: Matcher) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(YAML_MAP)
    counters = Counters()
    gw = GatewayAttributor(path, counters, "gw-1")
    a = gw.attribute(_obs("10.1.2.3"), _match(matcher), "tcp")
    assert (a.user, a.device, a.tool, a.process, a.service_id) == (
        "team-ml",
        "gw-1",
        "OpenAI API",
        None,
        "openai-api",
    )
    b = gw.attribute(_obs("192.0.2.77"), _match(matcher), "udp")
    assert b.user == "unknown:192.0.2.77"
    assert counters.get("gateway.unmapped") == 1
    without = GatewayAttributor(None, counters, "gw-1")
    assert without.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "unknown:10.0.0.5"


def test_reload_on_change_at_most_once_per_second(tmp_path: Path, matcher: Matcher) -> None:
    now = [0.0]
    path = tmp_path / "users.csv"
    path.write_text("ip_or_cidr,user\n10.0.0.5,alice\n")
    counters = Counters()
    gw = GatewayAttributor(path, counters, "gw", clock=lambda: now[0])
    assert gw.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "alice"
    path.write_text("ip_or_cidr,user\n10.0.0.5,alice-renamed\n")
    now[0] = 0.5
    assert gw.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "alice"  # not yet
    now[0] = 1.1
    assert gw.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "alice-renamed"
    assert counters.get("gateway.map_reloaded") == 1
    # Same size, new mtime: still noticed.
    path.write_text("ip_or_cidr,user\n10.0.0.5,carol-renamed\n")  # as long as alice-renamed
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    now[0] = 2.2
    assert gw.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "carol-renamed"
    now[0] = 3.3
    gw.maybe_reload()  # unchanged: no reload
    assert counters.get("gateway.map_reloaded") == 2


def test_bad_reload_keeps_the_old_map(
    tmp_path: Path, matcher: Matcher, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    path = tmp_path / "users.yaml"
    path.write_text("users:\n  - {ip: 10.0.0.5, user: alice}\n")
    counters = Counters()
    gw = GatewayAttributor(path, counters, "gw", clock=lambda: now[0])
    path.write_text("users:\n  - {ip: 10.0.0.500, user: alice}\n")
    now[0] = 5.0
    with caplog.at_level(logging.WARNING, logger="agent.attribution.gateway"):
        assert gw.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "alice"
    assert counters.get("gateway.map_reload_failed") == 1
    assert "users.yaml:2: field 'ip'" in caplog.text
    path.unlink()
    now[0] = 10.0
    assert gw.attribute(_obs("10.0.0.5"), _match(matcher), "tcp").user == "alice"
    assert counters.get("gateway.map_reload_failed") == 2


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("m.yaml", "users:\n  - {ip: 10.0.0.500, user: a}\n", "m.yaml:2: field 'ip'"),
        ("m.yaml", "users:\n  - {ip: 10.0.0.0/8, user: a}\n", "m.yaml:2: field 'ip'"),
        (
            "m.yaml",
            "users:\n  - ip: 10.0.0.1\n\n  - cidr: 10.1.0.1/16\n    user: b\n",
            "m.yaml:2: field 'user'",
        ),
        (
            "m.yaml",
            "users:\n  - {ip: 10.0.0.1, user: a}\n  - cidr: 10.1.0.1/16\n    user: b\n",
            "m.yaml:3: field 'cidr'",
        ),
        (
            "m.yaml",
            "users:\n  - {ip: 10.0.0.1, cidr: 10.0.0.0/8, user: a}\n",
            "m.yaml:2: field 'ip'",
        ),
        ("m.yaml", "users:\n  - {ip: 10.0.0.1, user: 42}\n", "m.yaml:2: field 'user'"),
        ("m.yaml", "users:\n  - {ip: 10.0.0.1, user: a, team: x}\n", "m.yaml:2: field 'team'"),
        ("m.yaml", "users:\n  - {ip: 10.0.0.1, user: ''}\n", "m.yaml:2: field 'user'"),
        ("m.yaml", "users: 10.0.0.1\n", "m.yaml:1: field 'users'"),
        ("m.yaml", "people: []\n", "m.yaml:1: field 'users'"),
        ("m.yaml", "users:\n  - [10.0.0.1, a]\n", "m.yaml:2: field 'users'"),
        ("m.yaml", "users: [\n", "m.yaml:2: not valid YAML"),
        (
            "m.yaml",
            "users:\n  - {ip: 10.0.0.1, user: a}\n  - {ip: 10.0.0.1, user: b}\n",
            "m.yaml:3: field 'ip'",
        ),
        ("m.csv", "ip,user\n10.0.0.1,a\n", "m.csv:1: field 'header'"),
        ("m.csv", "ip_or_cidr,user\n10.0.0.1,a\n10.0.0.x,b\n", "m.csv:3: field 'ip_or_cidr'"),
        ("m.csv", "ip_or_cidr,user\n10.0.0.1,a,extra\n", "m.csv:2: field 'user'"),
        ("m.csv", "ip_or_cidr,user\n10.0.0.1,\n", "m.csv:2: field 'user'"),
        ("m.csv", "", "m.csv:1: field 'header'"),
    ],
)
def test_bad_files_name_file_line_and_field(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        GatewayAttributor(path, Counters(), "gw")
    assert str(err.value).startswith(f"{tmp_path / where}"), str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        GatewayAttributor(tmp_path / "nope.yaml", Counters(), "gw")


def test_empty_yaml_and_comments(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text("# nobody yet\n")
    assert len(load_user_map(tmp_path / "e.yaml")) == 0
    (tmp_path / "c.csv").write_text("# comment\nip_or_cidr,user\n\n10.0.0.1 , a \n")
    assert load_user_map(tmp_path / "c.csv").lookup("10.0.0.1") == "a"


# --- longest prefix against an ipaddress brute-force oracle ------------------------------------

_v4_nets = st.builds(
    lambda addr, length: ipaddress.ip_network(
        f"{ipaddress.IPv4Address(addr)}/{length}", strict=False
    ),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_v6_nets = st.builds(
    lambda addr, length: ipaddress.ip_network(
        f"{ipaddress.IPv6Address(addr)}/{length}", strict=False
    ),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)


@settings(max_examples=200, deadline=None)
@given(
    nets=st.lists(st.one_of(_v4_nets, _v6_nets), max_size=30, unique=True),
    probes=st.lists(
        st.one_of(
            st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
            st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n))),
        ),
        max_size=20,
    ),
)
def test_lookup_matches_brute_force(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network], probes: list[str]
) -> None:
    entries = [(net, f"user{i}") for i, net in enumerate(nets)]
    users = UserMap(entries)
    # Probe inside every network too, so hits are common, not only misses.
    probes = probes + [str(net.network_address) for net in nets]
    for probe in probes:
        ip = ipaddress.ip_address(probe)
        best = None
        for net, user in entries:
            if (
                ip.version == net.version
                and ip in net
                and (best is None or net.prefixlen > best[0])
            ):
                best = (net.prefixlen, user)
        assert users.lookup(probe) == (best[1] if best else None), probe
