"""`lantern meter` through click's CliRunner: text and JSON output, one-line errors, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from meterkit import DATA, converse_stream_body, data, run

from agent.metering.cli import JSON_KEYS, meter
from agent.metering.cost import Pricer

ANTHROPIC = "https://api.anthropic.com/v1/messages"
BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com/model"


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(meter, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_text_output() -> None:
    code, out, err = invoke("--url", ANTHROPIC, "--response", str(DATA / "anthropic_stream.sse"))
    assert (code, err) == (0, "")
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert list(lines) == list(JSON_KEYS)
    assert lines["provider"] == "anthropic"
    assert lines["model"] == "claude-sonnet-4-5-20250929"
    assert lines["input_tokens"] == "2520"
    assert lines["output_tokens"] == "89"
    assert lines["cache_read_tokens"] == "2048"
    assert lines["cache_write_tokens"] == "0"
    assert lines["reasoning_tokens"] == "-"  # not reported by Anthropic
    assert lines["estimated"] == "no"
    expected = Pricer()(run(ANTHROPIC, data("anthropic_stream.sse")))
    assert expected is not None
    assert float(lines["cost_usd"]) == pytest.approx(expected, rel=1e-6)


def test_json_output_has_exactly_the_keys() -> None:
    code, out, _ = invoke(
        "--url",
        "https://api.openai.com/v1/chat/completions",
        "--request",
        str(DATA / "openai_chat.request.json"),
        "--response",
        str(DATA / "openai_chat.json"),
        "--json",
    )
    assert code == 0
    obj = json.loads(out)
    assert list(obj) == list(JSON_KEYS)
    assert {k: obj[k] for k in JSON_KEYS if k != "cost_usd"} == {
        "provider": "openai",
        "model": "gpt-4o-2024-08-06",
        "input_tokens": 1117,
        "output_tokens": 46,
        "cache_read_tokens": 1024,
        "cache_write_tokens": None,
        "reasoning_tokens": 0,
        "estimated": False,
    }
    assert obj["cost_usd"] == pytest.approx(
        Pricer()(run("https://api.openai.com/v1/chat/completions", data("openai_chat.json"))) or 0,
        rel=1e-12,
    )


def test_eventstream_binary_and_headers_file(tmp_path: Path) -> None:
    body = tmp_path / "converse.bin"
    body.write_bytes(converse_stream_body())
    code, out, _ = invoke(
        "--url",
        f"{BEDROCK}/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse-stream",
        "--response",
        str(body),
        "--json",
    )
    assert code == 0
    obj = json.loads(out)
    assert (obj["input_tokens"], obj["output_tokens"], obj["cache_read_tokens"]) == (
        2078,
        628,
        2048,
    )

    code, out, _ = invoke(
        "--url",
        f"{BEDROCK}/anthropic.claude-3-5-sonnet-20241022-v2%3A0/invoke",
        "--response",
        str(DATA / "bedrock_invoke.json"),
        "--response-headers",
        str(DATA / "bedrock_invoke.headers"),
        "--json",
    )
    assert code == 0
    assert (json.loads(out)["input_tokens"], json.loads(out)["output_tokens"]) == (12, 6)


def test_jsonl_of_sse_payloads(tmp_path: Path) -> None:
    """A log of SSE payloads, one JSON per line, gives the same usage as the SSE stream."""
    lines = [
        line.removeprefix(b"data: ")
        for line in data("anthropic_stream.sse").splitlines()
        if line.startswith(b"data: ")
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, out, _ = invoke("--url", ANTHROPIC, "--response", str(path), "--json")
    assert code == 0
    assert (json.loads(out)["input_tokens"], json.loads(out)["output_tokens"]) == (2520, 89)


def test_web_app_is_estimated_and_unpriced() -> None:
    code, out, _ = invoke(
        "--url",
        "https://chatgpt.com/backend-api/f/conversation",
        "--request",
        str(DATA / "chatgpt.request.json"),
        "--response",
        str(DATA / "chatgpt_stream.sse"),
        "--json",
    )
    assert code == 0
    obj = json.loads(out)
    assert (obj["estimated"], obj["cost_usd"], obj["input_tokens"]) == (True, None, 12)


def test_error_status_line_makes_a_bad_body_a_record(tmp_path: Path) -> None:
    headers = tmp_path / "h.txt"
    headers.write_text("HTTP/2 503 Service Unavailable\ncontent-type: text/html\n")
    page = tmp_path / "page.html"
    page.write_text("<html>down</html>")
    code, out, _ = invoke(
        "--url", ANTHROPIC, "--response", str(page), "--response-headers", str(headers), "--json"
    )
    assert code == 0
    assert json.loads(out)["input_tokens"] is None


GOOD = str(DATA / "openai_chat.json")
UNKNOWN = "https://example.com/v1/chat?key=SECRET-KEY-123"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", ANTHROPIC, "--response", "/nonexistent/body.json"], "cannot read response"),
        (["--url", ANTHROPIC, "--response", GOOD, "--request", "/nope"], "cannot read request"),
        (["--url", UNKNOWN, "--response", GOOD], "no metered AI endpoint at example.com/v1/chat"),
        (["--url", ANTHROPIC, "--response", str(DATA / "malformed.json")], "not valid JSON"),
        (["--url", ANTHROPIC, "--response", str(DATA / "truncated.json")], "ends inside"),
        (
            ["--url", ANTHROPIC, "--response", GOOD, "--response-headers", GOOD],
            "expected 'Name: value'",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    code, out, err = invoke(*args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err
    assert "Traceback" not in err
    assert "SECRET-KEY-123" not in err


def test_corrupted_eventstream_exit_2(tmp_path: Path) -> None:
    body = bytearray(converse_stream_body())
    body[30] ^= 0xFF
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(body))
    code, _, err = invoke("--url", f"{BEDROCK}/m/converse-stream", "--response", str(path))
    assert code == 2
    assert "CRC" in err
