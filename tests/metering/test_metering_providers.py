"""Every provider format: recorded bodies (written from each provider's documented wire format)
give exactly the documented numbers, normalised to the OpenTelemetry GenAI conventions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from meterkit import converse_stream_body, data, invoke_stream_body, run

from agent.metering import Usage


@dataclass(frozen=True)
class Case:
    url: str
    response: str | Callable[[], bytes]
    request: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    expect: dict[str, object] = field(default_factory=dict)

    def body(self) -> bytes:
        return data(self.response) if isinstance(self.response, str) else self.response()


def headers_file(name: str) -> tuple[tuple[str, str], ...]:
    lines = data(name).decode().splitlines()[1:]  # first line is the status line
    return tuple((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines))


OPENAI = "https://api.openai.com/v1"
GEMINI = "https://generativelanguage.googleapis.com/v1beta/models"
VERTEX = "https://us-central1-aiplatform.googleapis.com/v1/projects/p1/locations/us-central1"
BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com/model"
SONNET_V2 = "anthropic.claude-3-5-sonnet-20241022-v2:0"

CASES: dict[str, Case] = {
    "openai-chat": Case(
        f"{OPENAI}/chat/completions",
        "openai_chat.json",
        "openai_chat.request.json",
        expect=dict(
            provider="openai",
            model="gpt-4o-2024-08-06",  # the served model (response) beats the requested alias
            operation="chat",
            endpoint="chat_completions",
            streaming=False,
            input_tokens=1117,  # prompt_tokens already include the 1024 cached ones
            output_tokens=46,
            cache_read_tokens=1024,
            cache_write_tokens=None,  # OpenAI does not report cache writes
            reasoning_tokens=0,
            tags=(("user", "user-4711"), ("metadata.ticket", "SUP-1234"), ("metadata.env", "prod")),
        ),
    ),
    "openai-chat-stream-include-usage": Case(
        f"{OPENAI}/chat/completions",
        "openai_chat_stream.sse",
        "openai_chat_stream.request.json",
        expect=dict(
            model="gpt-4o-mini-2024-07-18",
            streaming=True,
            input_tokens=2006,
            output_tokens=300,
            cache_read_tokens=1920,
            reasoning_tokens=0,
        ),
    ),
    "openai-responses": Case(
        f"{OPENAI}/responses",
        "openai_responses.json",
        expect=dict(
            endpoint="responses",
            model="o4-mini-2025-04-16",
            streaming=False,
            input_tokens=1523,
            output_tokens=812,  # output_tokens already include the 640 reasoning tokens
            cache_read_tokens=1280,
            reasoning_tokens=640,
        ),
    ),
    "openai-responses-stream": Case(
        f"{OPENAI}/responses",
        "openai_responses_stream.sse",
        expect=dict(
            model="gpt-4.1-2025-04-14",
            streaming=True,
            input_tokens=37,
            output_tokens=11,
            cache_read_tokens=0,
            reasoning_tokens=0,
        ),
    ),
    "openai-embeddings": Case(
        f"{OPENAI}/embeddings",
        "openai_embeddings.json",
        expect=dict(
            operation="embeddings",
            model="text-embedding-3-small",
            input_tokens=8,
            output_tokens=None,  # embeddings carry no output count
            cache_read_tokens=None,
            reasoning_tokens=None,
        ),
    ),
    "azure-deployment": Case(
        "https://contoso.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions"
        "?api-version=2024-10-21",
        "azure_chat.json",
        expect=dict(
            provider="azure.ai.openai",
            deployment="prod-gpt4o",
            model="gpt-4o-2024-08-06",
            input_tokens=21,
            output_tokens=9,
            cache_read_tokens=0,
        ),
    ),
    "deepseek-cache-hit": Case(
        "https://api.deepseek.com/chat/completions",
        "deepseek_chat.json",
        expect=dict(
            provider="deepseek",
            model="deepseek-chat",
            input_tokens=1600,  # prompt_tokens = hit 1536 + miss 64
            output_tokens=12,
            cache_read_tokens=1536,
        ),
    ),
    "xai-reasoning-added": Case(
        "https://api.x.ai/v1/chat/completions",
        "xai_chat.json",
        expect=dict(
            provider="x_ai",
            model="grok-3-mini",
            input_tokens=14,
            output_tokens=296,  # completion 10 + reasoning 286 (total_tokens 310 confirms)
            cache_read_tokens=6,
            reasoning_tokens=286,
        ),
    ),
    "groq-x_groq-stream": Case(
        "https://api.groq.com/openai/v1/chat/completions",
        "groq_stream.sse",
        expect=dict(
            provider="groq",
            model="llama-3.3-70b-versatile",
            streaming=True,
            input_tokens=40,
            output_tokens=125,
            cache_read_tokens=None,
            reasoning_tokens=None,
        ),
    ),
    "ollama-native-chat": Case(
        "http://localhost:11434/api/chat",
        "ollama_chat.json",
        expect=dict(
            provider="ollama",
            endpoint="api_chat",
            model="llama3.2",
            streaming=False,
            input_tokens=26,
            output_tokens=298,
        ),
    ),
    "ollama-native-generate-jsonl": Case(
        "http://127.0.0.1:11434/api/generate",
        "ollama_generate_stream.jsonl",
        expect=dict(
            operation="text_completion",
            streaming=True,  # several JSON documents
            input_tokens=26,
            output_tokens=259,
        ),
    ),
    "ollama-v1": Case(
        "http://localhost:11434/v1/chat/completions",
        "ollama_v1_chat.json",
        expect=dict(
            provider="ollama", endpoint="chat_completions", input_tokens=30, output_tokens=7
        ),
    ),
    "anthropic-messages-cache": Case(
        "https://api.anthropic.com/v1/messages",
        "anthropic_messages.json",
        "anthropic_messages.request.json",
        expect=dict(
            provider="anthropic",
            model="claude-sonnet-4-5-20250929",
            endpoint="messages",
            streaming=False,
            input_tokens=21 + 188086 + 0,  # Anthropic leaves cache writes/reads out of input
            output_tokens=393,
            cache_read_tokens=0,
            cache_write_tokens=188086,
            reasoning_tokens=None,
            tags=(("user", "13803d75-b4b5-4c3e-b2a2-6f21399b021b"),),
        ),
    ),
    "anthropic-stream-cumulative-delta": Case(
        "https://api.anthropic.com/v1/messages",
        "anthropic_stream.sse",
        expect=dict(
            streaming=True,
            model="claude-sonnet-4-5-20250929",
            input_tokens=472 + 2048,
            output_tokens=89,  # the last cumulative message_delta, not the first (15)
            cache_read_tokens=2048,
            cache_write_tokens=0,
        ),
    ),
    "gemini-generate": Case(
        f"{GEMINI}/gemini-2.5-flash:generateContent",
        "gemini_generate.json",
        "gemini_generate.request.json",
        expect=dict(
            provider="gcp.gemini",
            operation="generate_content",
            model="gemini-2.5-flash",
            streaming=False,
            input_tokens=1200,  # promptTokenCount already includes the 1024 cached tokens
            output_tokens=85 + 340,  # thoughts are reported beside candidates: added
            cache_read_tokens=1024,
            reasoning_tokens=340,
            cache_write_tokens=None,
        ),
    ),
    "gemini-stream-sse-crlf": Case(
        f"{GEMINI}/gemini-2.5-pro:streamGenerateContent?alt=sse",
        "gemini_stream.sse",
        expect=dict(
            model="gemini-2.5-pro",
            streaming=True,
            input_tokens=9,
            output_tokens=31 + 350,  # the last chunk's usageMetadata
            cache_read_tokens=0,  # proto3 JSON omits zero counts
            reasoning_tokens=350,
        ),
    ),
    "gemini-stream-json-array": Case(
        f"{GEMINI}/gemini-2.5-pro:streamGenerateContent",
        "gemini_stream_array.json",
        expect=dict(streaming=True, input_tokens=9, output_tokens=381, reasoning_tokens=350),
    ),
    "vertex-model-from-path": Case(
        f"{VERTEX}/publishers/google/models/gemini-2.0-flash-001:generateContent",
        "vertex_generate.json",
        expect=dict(
            provider="gcp.vertex_ai",
            model="gemini-2.0-flash-001",  # the body names no modelVersion here
            input_tokens=31,
            output_tokens=8,
            cache_read_tokens=0,
            reasoning_tokens=0,
        ),
    ),
    "vertex-anthropic-stream": Case(
        f"{VERTEX}/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
        "anthropic_stream.sse",
        expect=dict(
            provider="gcp.vertex_ai",
            endpoint="streamRawPredict",
            streaming=True,
            model="claude-sonnet-4-5-20250929",
            input_tokens=2520,
            output_tokens=89,
        ),
    ),
    "bedrock-converse": Case(
        f"{BEDROCK}/anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse",
        "bedrock_converse.json",
        expect=dict(
            provider="aws.bedrock",
            model=SONNET_V2,
            endpoint="converse",
            streaming=False,
            input_tokens=125 + 1404 + 0,  # Bedrock leaves cache reads/writes out of inputTokens
            output_tokens=60,
            cache_read_tokens=1404,
            cache_write_tokens=0,
        ),
    ),
    "bedrock-converse-stream-eventstream": Case(
        f"{BEDROCK}/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream",
        converse_stream_body,
        expect=dict(
            model="us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            endpoint="converse-stream",
            streaming=True,
            input_tokens=30 + 2048,
            output_tokens=628,
            cache_read_tokens=2048,
            cache_write_tokens=0,
        ),
    ),
    "bedrock-invoke-headers": Case(
        f"{BEDROCK}/anthropic.claude-3-5-sonnet-20241022-v2%3A0/invoke",
        "bedrock_invoke.json",
        headers=headers_file("bedrock_invoke.headers"),
        expect=dict(
            operation="invoke_model",
            model=SONNET_V2,
            input_tokens=12,
            output_tokens=6,
            cache_read_tokens=None,
            cache_write_tokens=None,
        ),
    ),
    "bedrock-invoke-stream-metrics": Case(
        f"{BEDROCK}/anthropic.claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
        invoke_stream_body,
        expect=dict(
            streaming=True,
            input_tokens=20 + 100 + 50,
            output_tokens=45,
            cache_read_tokens=100,
            cache_write_tokens=50,
        ),
    ),
    "cohere-v2": Case(
        "https://api.cohere.com/v2/chat",
        "cohere_chat.json",
        "cohere_chat.request.json",
        expect=dict(
            provider="cohere",
            model="command-a-03-2025",  # Cohere's response names no model: the request does
            input_tokens=17,  # billed units, not the 214 template-inflated tokens
            output_tokens=42,
            cache_read_tokens=None,
        ),
    ),
    "cohere-v2-stream-message-end": Case(
        "https://api.cohere.com/v2/chat",
        "cohere_stream.sse",
        "cohere_chat.request.json",
        expect=dict(streaming=True, input_tokens=3, output_tokens=9),
    ),
}

# Web apps: estimated from text bytes, 4 bytes per token, rounded up.
WEB_CASES: dict[str, Case] = {
    "chatgpt-v1-delta": Case(
        "https://chatgpt.com/backend-api/f/conversation",
        "chatgpt_stream.sse",
        "chatgpt.request.json",
        expect=dict(
            provider="openai",
            endpoint="chatgpt.web",
            model="gpt-4o",  # response model_slug beats the request's "auto"
            # "CANARY-chatgpt-in What is the capital of France?" = 48 bytes
            input_tokens=12,
            # appended "v" strings: 30 + 19 + 1 + "finished_successfully" 21 = 71 bytes
            output_tokens=18,
        ),
    ),
    "chatgpt-legacy-snapshots": Case(
        "https://chatgpt.com/backend-api/conversation",
        "chatgpt_legacy_stream.sse",
        "chatgpt.request.json",
        expect=dict(model="gpt-4", input_tokens=12, output_tokens=12),  # largest snapshot: 47 B
    ),
    "claude-web": Case(
        "https://claude.ai/api/organizations/org-1/chat_conversations/conv-1/completion",
        "claude_web_stream.sse",
        "claude_web.request.json",
        expect=dict(
            provider="anthropic",
            endpoint="claude.web",
            model="claude-sonnet-4-5-20250929",  # from the request: the stream names ""
            input_tokens=14,  # prompt 49 B + the style's "prompt": "Normal" 6 B = 55 B
            output_tokens=12,  # text deltas 26 + 20 = 46 B
        ),
    ),
    "gemini-web-batchexecute": Case(
        "https://gemini.google.com/_/BardChatUi/data/assistant.lamda.BardFrontendService/StreamGenerate?bl=boq&rt=c",
        "gemini_web.response.txt",
        "gemini_web.request.txt",
        expect=dict(
            provider="gcp.gemini",
            model=None,
            streaming=True,
            input_tokens=30,  # 175 form bytes, 29 %XX escapes: 117 decoded bytes
            output_tokens=38,  # the longest line (the last snapshot), 149 bytes
        ),
    ),
    "copilot-websocket-messages": Case(
        "https://copilot.microsoft.com/c/api/chat?api-version=2",
        "copilot.response.jsonl",
        "copilot.request.jsonl",
        expect=dict(
            provider="microsoft.copilot", streaming=True, input_tokens=10, output_tokens=14
        ),
    ),
    "perplexity-web": Case(
        "https://www.perplexity.ai/rest/sse/perplexity_ask",
        "perplexity_stream.sse",
        "perplexity.request.json",
        expect=dict(provider="perplexity", model="turbo", input_tokens=8, output_tokens=29),
    ),
}

COMPAT_HOSTS = {
    "https://api.together.xyz/v1/chat/completions": "together",
    "https://api.fireworks.ai/inference/v1/chat/completions": "fireworks",
    "https://openrouter.ai/api/v1/chat/completions": "openrouter",
    "https://api.perplexity.ai/chat/completions": "perplexity",
    "https://api.mistral.ai/v1/chat/completions": "mistral_ai",
    "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions": "gcp.gemini",
    "https://api.cohere.com/compatibility/v1/chat/completions": "cohere",
    "https://ollama.internal:11434/v1/chat/completions": "ollama",
}


def run_case(case: Case) -> Usage:
    request = data(case.request) if case.request else None
    return run(case.url, case.body(), request=request, response_headers=case.headers)


def check(usage: Usage, expect: dict[str, object]) -> None:
    got = {key: getattr(usage, key) for key in expect}
    assert got == expect


@pytest.mark.parametrize("name", sorted(CASES))
def test_provider_format(name: str) -> None:
    usage = run_case(CASES[name])
    check(usage, CASES[name].expect)
    assert usage.estimated is False
    assert usage.status_code == 200


@pytest.mark.parametrize("name", sorted(WEB_CASES))
def test_web_app_estimates(name: str) -> None:
    usage = run_case(WEB_CASES[name])
    check(usage, {"estimated": True, "operation": "chat", **WEB_CASES[name].expect})
    assert usage.cost_usd is None
    assert usage.key_fingerprint is None  # session tokens are not API keys


@pytest.mark.parametrize(("url", "provider"), sorted(COMPAT_HOSTS.items()))
def test_openai_compatible_hosts(url: str, provider: str) -> None:
    usage = run(url, data("compat_chat.json"))
    check(
        usage,
        {
            "provider": provider,
            "model": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            "endpoint": "chat_completions",
            "input_tokens": 42,
            "output_tokens": 9,
            "cache_read_tokens": None,
            "reasoning_tokens": None,
        },
    )


def test_openai_stream_without_include_usage_has_no_counts() -> None:
    """Without stream_options.include_usage OpenAI sends no usage: counts stay None, not 0."""
    body = b"".join(
        line + b"\n\n"
        for line in data("openai_chat_stream.sse").split(b"\n\n")
        if b'"usage":{' not in line and line.strip()
    )
    usage = run(f"{OPENAI}/chat/completions", body)
    assert (usage.model, usage.input_tokens, usage.output_tokens) == (
        "gpt-4o-mini-2024-07-18",
        None,
        None,
    )
    assert usage.streaming is True


def test_xai_gateway_total_that_already_includes_reasoning_is_not_added_twice() -> None:
    body = (
        b'{"model":"grok-4","usage":{"prompt_tokens":163,"completion_tokens":241,'
        b'"total_tokens":404,"completion_tokens_details":{"reasoning_tokens":204}}}'
    )
    usage = run("https://api.x.ai/v1/chat/completions", body)
    assert (usage.output_tokens, usage.reasoning_tokens) == (241, 204)


def test_xai_without_total_follows_the_documented_rule() -> None:
    body = (
        b'{"model":"grok-3-mini","usage":{"prompt_tokens":5,"completion_tokens":7,'
        b'"completion_tokens_details":{"reasoning_tokens":100}}}'
    )
    assert run("https://api.x.ai/v1/chat/completions", body).output_tokens == 107


def test_openai_reasoning_is_never_added() -> None:
    """Even when total_tokens would allow it, OpenAI's own counts are taken as they are."""
    body = (
        b'{"model":"o3","usage":{"prompt_tokens":5,"completion_tokens":107,"total_tokens":112,'
        b'"completion_tokens_details":{"reasoning_tokens":100}}}'
    )
    usage = run(f"{OPENAI}/chat/completions", body)
    assert (usage.output_tokens, usage.reasoning_tokens) == (107, 100)


def test_bedrock_arn_model_id_is_url_decoded() -> None:
    arn = (
        "arn:aws:bedrock:us-east-1:123456789012:"
        "inference-profile/us.meta.llama3-3-70b-instruct-v1:0"
    )
    url = f"{BEDROCK}/{arn.replace(':', '%3A').replace('/', '%2F')}/converse"
    usage = run(url, data("bedrock_converse.json"))
    assert usage.model == arn


def test_gemini_error_event_without_usage_keeps_path_model() -> None:
    usage = run(f"{GEMINI}/gemini-2.5-flash:generateContent", b'{"candidates": []}')
    assert (usage.model, usage.input_tokens, usage.output_tokens) == (
        "gemini-2.5-flash",
        None,
        None,
    )
