"""`lantern scan --all --json` finds every name tshark 4.0 finds in the public captures.

tshark_expected.tsv (beside the captures) lists, per file, the TLS SNIs, QUIC SNIs, gQUIC SNIs
and DNS query names tshark 4.0.17 extracts (run two-pass, `-2`). Lantern must find each of them,
file by file, through the real CLI. Where Lantern finds more, EXTRA below says why; an extra name
that is not explained fails the test, so the list cannot silently grow.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from lantern.cli import main

KIND_TO_PROTO = {
    "tls_sni": "tls",
    "quic_sni": "quic",
    "gquic_sni": "gquic",
    "dns_query": "dns",
    "dns_cname_target": "cname",
}

# (file, proto) -> {name: why Lantern reports it although tshark -2 does not}
EXTRA: dict[tuple[str, str], dict[str, str]] = {
    ("ndpi__teams.pcap", "tls"): {
        "chatsvcagg.teams.microsoft.com": (
            "frame 591 is a complete ClientHello with this SNI; tshark finds it in one pass but "
            "loses it with -2, after the server's out-of-order segment 592 re-runs reassembly"
        ),
    },
}


def expected(pcap_dir: Path) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    with (pcap_dir / "tshark_expected.tsv").open() as f:
        for row in csv.DictReader(f, delimiter="\t"):
            proto = KIND_TO_PROTO.get(row["kind"])
            if proto and row["name"] != "(no-sni)":
                out[row["file"]][proto].add(row["name"].lower())
    return out


def scan_all_json(path: Path) -> dict[str, set[str]]:
    result = CliRunner().invoke(main, ["scan", "--all", "--json", "--no-progress", str(path)])
    assert result.exit_code == 0, result.output
    found: dict[str, set[str]] = defaultdict(set)
    for line in result.stdout.splitlines():
        obj = json.loads(line)
        found[obj["proto"]].add(obj["name"])
    return found


def capture_files() -> list[str]:
    from tests.conftest import PCAPS

    return sorted(p.name for p in PCAPS.glob("*.pcap*"))


@pytest.mark.parametrize("name", capture_files())
def test_scan_finds_what_tshark_finds(pcap_dir: Path, name: str) -> None:
    want = expected(pcap_dir)[name]
    got = scan_all_json(pcap_dir / name)
    for proto in ("tls", "quic", "gquic", "dns"):
        missing = want[proto] - got[proto]
        assert not missing, f"{name}: {proto} names tshark finds but Lantern does not: {missing}"
    for proto in ("tls", "quic", "gquic"):
        extra = got[proto] - want[proto]
        explained = EXTRA.get((name, proto), {})
        assert extra == set(explained), f"{name}: unexplained extra {proto} names: {extra}"
    # Lantern also reports the names on CNAME chains (a company alias can point at an AI
    # service); every extra DNS name must be one tshark shows as a CNAME target.
    extra_dns = got["dns"] - want["dns"]
    assert extra_dns <= want["cname"], (
        f"{name}: DNS names not from CNAMEs: {extra_dns - want['cname']}"
    )


def test_every_capture_is_covered(pcap_dir: Path) -> None:
    """The parametrised list above is the whole directory, and the TSV names only real files."""
    files = set(capture_files())
    assert len(files) == 42
    assert set(expected(pcap_dir)) <= files
