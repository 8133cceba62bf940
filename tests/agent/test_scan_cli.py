"""`lantern scan` output details: progress on request, the summary line, exit statuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from lantern.cli import main
from lantern.output import Progress

SAMPLE = Path(__file__).resolve().parents[2] / "lantern" / "samples" / "ai-sample.pcapng"


def test_progress_line_on_stderr_when_asked() -> None:
    result = CliRunner().invoke(main, ["scan", "--progress", "--json", str(SAMPLE)])
    assert result.exit_code == 0
    assert "scanning" in result.stderr and "100.0%" in result.stderr
    assert "scanning" not in result.stdout  # JSON on stdout stays clean
    assert all(json.loads(line)["service"] for line in result.stdout.splitlines())


def test_no_progress_when_not_a_terminal() -> None:
    result = CliRunner().invoke(main, ["scan", "--json", str(SAMPLE)])
    assert result.exit_code == 0
    assert result.stderr == ""


def test_progress_is_throttled_and_cleared(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(enabled=True)
    for i in range(1000):
        bar("f.pcap", i, 1000, i)
    bar("f.pcap", 1000, 1000, 1000)
    bar.clear()
    written = capsys.readouterr().err
    assert 2 <= written.count("scanning") <= 3  # the first call, maybe one more, the final one
    assert "100.0%" in written
    assert written.endswith("\r\033[K")


def test_summary_line_and_table() -> None:
    result = CliRunner().invoke(main, ["scan", str(SAMPLE)])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "TOOL", "VENDOR", "NAME", "SEEN", "AS", "COUNT"]
    assert "AI sightings of 11 service(s); 0 malformed skipped" in lines[-1]


def test_missing_file_among_good_ones_reports_both(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["scan", "--json", str(tmp_path / "nope.pcap"), str(SAMPLE)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"lantern: {tmp_path / 'nope.pcap'}: no such file"
    assert len(result.stdout.splitlines()) > 10  # the good file was still scanned


@given(
    name=st.text(min_size=1, max_size=40),
    ts=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    port=st.integers(0, 65535),
    matched=st.booleans(),
)
def test_json_lines_equal_json_dumps(name: str, ts: float, port: int, matched: bool) -> None:
    """The fast line builder writes exactly what json.dumps of the documented dict writes."""
    from agent.cli import JsonLines, sighting_json
    from agent.records import Observation
    from agent.scan import Sighting
    from signatures.matcher import Matcher

    m = Matcher.from_catalog().match_name("api.openai.com") if matched else None
    obs = Observation(ts, "192.0.2.1", port, "2001:db8::1", 443, "tls", name)
    s = Sighting('dir/"odd" file.pcap', obs, m)
    line = JsonLines().line(s)
    assert line == json.dumps(sighting_json(s))
    assert json.loads(line)["name"] == name
