"""The shipped catalog: size, coverage of what the issue names, no shared infrastructure."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from click.testing import CliRunner

from lantern.cli import main
from signatures.loader import load_catalog, load_shared_infra
from signatures.matcher import Matcher
from signatures.model import CATEGORIES

CATALOG = load_catalog()

# name -> the service it must match: the providers and endpoints the foundation issue lists
REQUIRED = {
    "api.openai.com": "openai-api",
    "chatgpt.com": "openai-chatgpt",
    "api.anthropic.com": "anthropic-api",
    "claude.ai": "anthropic-claude",
    "generativelanguage.googleapis.com": "google-gemini-api",
    "gemini.google.com": "google-gemini",
    "acme-prod.openai.azure.com": "microsoft-azure-openai",
    "acme.cognitiveservices.azure.com": "microsoft-azure-ai-foundry",
    "acme.services.ai.azure.com": "microsoft-azure-ai-foundry",
    "bedrock-runtime.us-east-1.amazonaws.com": "aws-bedrock",
    "bedrock-runtime.ap-southeast-2.amazonaws.com": "aws-bedrock",
    "us-central1-aiplatform.googleapis.com": "google-vertex-ai",
    "europe-west4-aiplatform.googleapis.com": "google-vertex-ai",
    "api.mistral.ai": "mistral-api",
    "api.cohere.com": "cohere-api",
    "api.deepseek.com": "deepseek-api",
    "api.x.ai": "xai-api",
    "api.groq.com": "groq-api",
    "api.together.xyz": "together-api",
    "api.fireworks.ai": "fireworks-api",
    "openrouter.ai": "openrouter",
    "api.perplexity.ai": "perplexity-api",
    "copilot.microsoft.com": "microsoft-copilot",
    "api.individual.githubcopilot.com": "github-copilot",
    "api2.cursor.sh": "cursor",
    "server.codeium.com": "windsurf",
    "api.tabnine.com": "tabnine",
    "huggingface.co": "huggingface-hub",
    "api.elevenlabs.io": "elevenlabs-api",
    "api.replicate.com": "replicate-api",
}
REQUIRED_PROCESSES = {
    "ollama": "ollama",
    "Cursor.exe": "cursor",
    "claude": "anthropic-claude-code",
    "LM Studio": "lmstudio",
    "llama-server": "llamacpp-server",
}
# Never AI on their own: shared infrastructure, ECH public names, big non-AI properties.
NEVER = [
    "cloudflare-ech.com",
    "www.google.com",
    "teams.microsoft.com",
    "substrate.office.com",
    "github.com",
    "api.github.com",
    "login.microsoftonline.com",
    "s3.amazonaws.com",
    "d111111abcdef8.cloudfront.net",
    "www.notion.so",
    "slack.com",
    "zoom.us",
]


@pytest.fixture(scope="module")
def m() -> Matcher:
    return Matcher(CATALOG.services)


def test_at_least_200_services_in_every_category() -> None:
    assert len(CATALOG.services) >= 200
    per_category = Counter(s.category for s in CATALOG.services)
    assert set(per_category) == set(CATEGORIES), set(CATEGORIES) - set(per_category)


@pytest.mark.parametrize(("name", "service"), sorted(REQUIRED.items()))
def test_required_names(m: Matcher, name: str, service: str) -> None:
    hit = m.match_name(name)
    assert hit is not None and hit.service.id == service


@pytest.mark.parametrize(("process", "service"), sorted(REQUIRED_PROCESSES.items()))
def test_required_processes(m: Matcher, process: str, service: str) -> None:
    hit = m.match_process(process)
    assert hit is not None and hit.id == service


@pytest.mark.parametrize("name", NEVER)
def test_shared_and_non_ai_names_never_match(m: Matcher, name: str) -> None:
    assert m.match_name(name) is None


def test_no_shared_infrastructure_domain_matches(m: Matcher) -> None:
    hits = {d: m.match_name(d) for d in load_shared_infra()}
    assert {d: h.service.id for d, h in hits.items() if h} == {}


def test_process_names_are_unique_across_services() -> None:
    owners: dict[str, set[str]] = {}
    for s in CATALOG.services:
        for p in s.processes:
            key = p.lower().removesuffix(".exe")
            owners.setdefault(key, set()).add(s.id)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}


def test_local_runtimes_declare_process_or_port() -> None:
    local = [s for s in CATALOG.services if s.category == "local_runtime"]
    assert len(local) >= 5
    assert all(s.processes and s.ports for s in local if s.id in {"ollama", "lmstudio"})


def test_risk_facts_all_have_https_sources() -> None:
    facts = [f for s in CATALOG.services for f in s.risk]
    assert len(facts) > 100
    assert all(f.source.startswith("https://") for f in facts)


def test_catalog_match_cli_text_and_json() -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["catalog", "match", "api.openai.com", "notopenai.com"])
    assert text.exit_code == 0
    assert text.stdout.splitlines() == ["api.openai.com\topenai-api", "notopenai.com\t-"]
    js = runner.invoke(main, ["catalog", "match", "--json", "API.OpenAI.com.", "example.com"])
    assert js.exit_code == 0
    first, second = (json.loads(line) for line in js.stdout.splitlines())
    assert first["name"] == "API.OpenAI.com."
    assert (first["service"], first["tool"], first["vendor"], first["category"]) == (
        "openai-api",
        "OpenAI API",
        "OpenAI",
        "api",
    )
    assert second == {
        "name": "example.com",
        "service": None,
        "tool": None,
        "vendor": None,
        "category": None,
        "tier": None,
    }


def test_catalog_list_cli() -> None:
    runner = CliRunner()
    js = runner.invoke(main, ["catalog", "list", "--json"])
    assert js.exit_code == 0
    rows = [json.loads(line) for line in js.stdout.splitlines()]
    assert len(rows) == len(CATALOG.services)
    assert {"id", "tool", "vendor", "category", "hosts", "processes", "risk"} <= set(rows[0])
    text = runner.invoke(main, ["catalog", "list"])
    assert text.exit_code == 0
    assert f"{len(CATALOG.services)} services from" in text.stdout
    assert "openai-chatgpt" in text.stdout


def test_bad_extra_catalog_dir_is_a_clean_error(tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["catalog", "list", "--catalog-dir", "/nonexistent/dir"])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.output
