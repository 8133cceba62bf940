"""A scan shared between processes gives exactly the single-process output and counters."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.scan import Scanner
from lantern.cli import main
from signatures.matcher import Matcher

BIG = [
    "ndpi__teams.pcap",
    "ndpi__sites.pcapng",
    "zeek__quic_chromium-115.0.5790.110-google-de-fragmented.pcap",
    "ndpi__quic_frags_ch_out_of_order_same_packet_craziness.pcapng",
    "ndpi__dns_fragmented.pcap",
    "zeek__ipv6-fragmented-dns.pcap",
    "zeek__tls_tls13-ech.pcap",
]


@pytest.mark.parametrize("name", BIG)
def test_jobs_give_identical_output(pcap_dir: Path, name: str) -> None:
    runs = {}
    for jobs in (1, 2, 3):
        result = CliRunner().invoke(
            main,
            ["scan", "--all", "--json", "--no-progress", "--jobs", str(jobs), str(pcap_dir / name)],
        )
        assert result.exit_code == 0, result.output
        runs[jobs] = result.stdout
    assert runs[1]
    assert runs[1] == runs[2] == runs[3]


def test_jobs_give_identical_counters(pcap_dir: Path, matcher: Matcher) -> None:
    stats = {}
    for jobs in (1, 2):
        scanner = Scanner(matcher)
        for name in BIG:
            list(scanner.scan_file(pcap_dir / name, jobs=jobs))
        stats[jobs] = scanner.stats
    assert stats[1].packets == stats[2].packets > 3000
    assert stats[1].names == stats[2].names
    # TCP/QUIC counters are per shard and add up; DNS counters come from one shard
    assert stats[1].counters == stats[2].counters


def test_bad_file_with_jobs_is_a_clean_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all, just text" * 4)
    result = CliRunner().invoke(main, ["scan", "--jobs", "2", str(bad)])
    assert result.exit_code == 2
    assert "not a pcap or pcapng file" in result.stderr
