"""The shipped sample capture: what `lantern scan` shows, and that its generator still makes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from agent.scan import Scanner
from lantern.cli import main
from signatures.matcher import Matcher

SAMPLES = Path(__file__).resolve().parents[2] / "lantern" / "samples"
SAMPLE = SAMPLES / "ai-sample.pcapng"
GENERATOR = SAMPLES / "make_sample.py"

AI = {
    ("anthropic-api", "api.anthropic.com", "dns"),
    ("anthropic-api", "api.anthropic.com", "tls"),
    ("anthropic-claude", "claude.ai", "dns"),
    ("anthropic-claude", "claude.ai", "tls"),
    ("cursor", "api2.cursor.sh", "dns"),
    ("cursor", "api2.cursor.sh", "tls"),
    ("github-copilot", "api.individual.githubcopilot.com", "dns"),
    ("github-copilot", "api.individual.githubcopilot.com", "tls"),
    ("google-gemini", "gemini.google.com", "dns"),
    ("google-gemini", "gemini.google.com", "quic"),
    ("huggingface-hub", "huggingface.co", "dns"),
    ("huggingface-hub", "huggingface.co", "tls"),
    ("microsoft-azure-openai", "contoso-eastus.openai.azure.com", "dns"),
    ("microsoft-azure-openai", "contoso-eastus.openai.azure.com", "tls"),
    ("microsoft-azure-openai", "contoso-eastus.privatelink.openai.azure.com", "dns"),
    ("mistral-api", "api.mistral.ai", "dns"),
    ("mistral-api", "api.mistral.ai", "tls"),
    ("openai-api", "api.openai.com", "dns"),
    ("openai-api", "api.openai.com", "tls"),
    ("openai-chatgpt", "cdn.oaistatic.com", "dns"),
    ("openai-chatgpt", "cdn.oaistatic.com", "tls"),
    ("openai-chatgpt", "chatgpt.com", "dns"),
    ("openai-chatgpt", "chatgpt.com", "tls"),
    ("perplexity", "www.perplexity.ai", "dns"),
    ("perplexity", "www.perplexity.ai", "ip"),  # the hello hid it behind ECH
}
OTHER = {
    ("cdn.oaistatic.com.cdn.cloudflare.net", "dns"),
    ("cloudflare-ech.com", "tls"),
    ("dyna.wikimedia.org", "dns"),
    ("en.wikipedia.org", "dns"),
    ("en.wikipedia.org", "tls"),
    ("example.net", "dns"),
    ("example.net", "http"),
    ("www.example.com", "dns"),
    ("www.example.com", "tls"),
}


def scan_json(*args: str) -> list[dict[str, object]]:
    result = CliRunner().invoke(main, ["scan", "--json", *args, str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_sample_shows_exactly_these_ai_services(matcher: Matcher) -> None:
    scanner = Scanner(matcher)
    found = list(scanner.scan_file(SAMPLE))
    ai = {(s.match.service.id, s.observation.name, s.observation.proto) for s in found if s.match}
    assert ai == AI
    assert {(s.observation.name, s.observation.proto) for s in found if not s.match} == OTHER
    assert not any("malformed" in k for k in scanner.stats.counters)


def test_sample_ai_services_on_the_cli() -> None:
    rows = scan_json()
    assert {(r["service"], r["name"], r["proto"]) for r in rows} == AI
    assert {r["service"] for r in rows} == {
        "anthropic-api",
        "anthropic-claude",
        "cursor",
        "github-copilot",
        "google-gemini",
        "huggingface-hub",
        "microsoft-azure-openai",
        "mistral-api",
        "openai-api",
        "openai-chatgpt",
        "perplexity",
    }


def test_sample_ordinary_names_only_with_all() -> None:
    every = scan_json("--all")
    assert {(r["name"], r["proto"]) for r in every if r["service"] is None} == OTHER
    table = CliRunner().invoke(main, ["scan", str(SAMPLE)])
    assert table.exit_code == 0, table.output
    for name, _ in OTHER:
        assert f" {name} " not in table.stdout
    assert " chatgpt.com " in table.stdout
    assert "11 service(s)" in table.stdout


def test_sample_is_what_its_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "regenerated.pcapng"
    # another hash seed than the one the shipped file was made with: set order must not leak
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    subprocess.run(
        [sys.executable, str(GENERATOR), str(out)], check=True, capture_output=True, env=env
    )
    assert out.read_bytes() == SAMPLE.read_bytes(), (
        "lantern/samples/ai-sample.pcapng is stale: run "
        ".venv/bin/python lantern/samples/make_sample.py"
    )
    assert SAMPLE.stat().st_size < 60_000
