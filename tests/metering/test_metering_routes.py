"""URL routing, attribution tags, API-key fingerprints, and the failure rules of `finish`."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from meterkit import data, make_extractor, run

from agent.metering import HEADERS_TO_STRIP, MalformedBodyError, extractor_for
from agent.metering.identity import key_hint
from agent.metering.routes import route_for


@pytest.mark.parametrize(
    ("url", "provider", "endpoint", "model", "deployment"),
    [
        ("https://api.openai.com/v1/chat/completions", "openai", "chat_completions", None, None),
        ("https://API.OpenAI.com./v1/responses/", "openai", "responses", None, None),
        ("https://api.openai.com/v1/completions", "openai", "completions", None, None),
        (
            "https://eu.openai.azure.com/openai/deployments/my%20dep/embeddings?api-version=1",
            "azure.ai.openai",
            "embeddings",
            None,
            "my dep",
        ),
        (
            "https://x.openai.azure.com/openai/v1/responses",
            "azure.ai.openai",
            "responses",
            None,
            None,
        ),
        (
            "https://x.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview",
            "azure.ai.inference",
            "chat_completions",
            None,
            None,
        ),
        (
            "https://generativelanguage.googleapis.com/v1/tunedModels/my-tuned:generateContent",
            "gcp.gemini",
            "generateContent",
            "my-tuned",
            None,
        ),
        (
            "https://aiplatform.googleapis.com/v1/publishers/google/models/gemini-2.5-flash"
            ":streamGenerateContent?alt=sse",
            "gcp.vertex_ai",
            "streamGenerateContent",
            "gemini-2.5-flash",
            None,
        ),
        (
            "https://us-east5-aiplatform.googleapis.com/v1/projects/p/locations/us-east5"
            "/endpoints/openapi/chat/completions",
            "gcp.vertex_ai",
            "chat_completions",
            None,
            None,
        ),
        (
            "https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com/model/amazon.nova-pro-v1%3A0"
            "/invoke-with-response-stream",
            "aws.bedrock",
            "invoke-with-response-stream",
            "amazon.nova-pro-v1:0",
            None,
        ),
        ("http://localhost:8080/api/generate", "ollama", "api_generate", None, None),
        ("https://api.cohere.ai/v2/chat", "cohere", "chat", None, None),
        ("https://chat.openai.com/backend-anon/conversation", "openai", "chatgpt.web", None, None),
        (
            "https://claude.ai/api/organizations/o/chat_conversations/c/retry_completion",
            "anthropic",
            "claude.web",
            None,
            None,
        ),
    ],
)
def test_routes(
    url: str, provider: str, endpoint: str, model: str | None, deployment: str | None
) -> None:
    route = route_for(url)
    assert route is not None
    assert (route.provider, route.endpoint, route.model, route.deployment) == (
        provider,
        endpoint,
        model,
        deployment,
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1/models",
        "https://api.openai.com/v1/files",
        "https://api.openai.com/v1/responses/resp_123",  # a fetch, not a generation
        "https://api.anthropic.com/v1/messages/count_tokens",  # counting is not usage
        "https://api.anthropic.com/v1/messages/batches",
        "https://chatgpt.com/backend-api/conversation/6730aa00",  # history fetch
        "https://chatgpt.com/",
        "https://claude.ai/api/organizations/o/chat_conversations",
        "http://localhost:8000/v1/chat/completions",  # a local server that is not Ollama
        "https://openai.com.evil.example/v1/chat/completions",
        "https://example.com/v1/chat/completions",
        "not a url",
    ],
)
def test_unmetered_urls(url: str) -> None:
    assert route_for(url) is None
    assert extractor_for(url) is None


def test_request_attribution_tags_come_first_and_stay_small() -> None:
    usage = run(
        "https://api.openai.com/v1/chat/completions",
        data("openai_chat.json"),
        request=data("openai_chat.request.json"),
        request_headers=[
            ("X-Lantern-Feature", "search-summary"),
            ("x-lantern-team", "growth"),
            ("X-Lantern-Customer", "acme"),
            ("X-Lantern-Cost-Center", "CC-42"),
            ("X-Lantern-Team-Secret", "ignored"),
        ],
    )
    assert usage.tags == (
        ("feature", "search-summary"),
        ("team", "growth"),
        ("customer", "acme"),
        ("cost_center", "CC-42"),
        ("user", "user-4711"),
        ("metadata.ticket", "SUP-1234"),
        ("metadata.env", "prod"),
    )


def test_oversized_or_non_string_metadata_is_dropped() -> None:
    meta = {f"k{i}": f"v{i}" for i in range(20)} | {"n": 5, "big": "x" * 1000}
    import json

    request = json.dumps({"model": "gpt-4o", "user": 123, "metadata": meta}).encode()
    usage = run(
        "https://api.openai.com/v1/chat/completions", data("openai_chat.json"), request=request
    )
    assert usage.tags == tuple((f"metadata.k{i}", f"v{i}") for i in range(16))


def test_headers_to_strip() -> None:
    assert HEADERS_TO_STRIP == (
        "x-lantern-feature",
        "x-lantern-team",
        "x-lantern-customer",
        "x-lantern-cost-center",
    )


SECRET = b"device-local-secret"


@pytest.mark.parametrize(
    ("url", "header", "prefix", "key"),
    [
        (
            "https://api.openai.com/v1/chat/completions",
            "Authorization",
            "Bearer ",
            "sk-proj-AbCd1234EfGh5678wxyz",
        ),
        (
            "https://api.anthropic.com/v1/messages",
            "x-api-key",
            "",
            "sk-ant-api03-abcdefghijklmnopqrst-9f3Q",
        ),
        (
            "https://r.openai.azure.com/openai/deployments/d/chat/completions",
            "api-key",
            "",
            "0123456789abcdef0123456789abcdef",
        ),
        (
            "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent",
            "x-goog-api-key",
            "",
            "AIzaSyA-1234567890abcdefghijklmnopqrs",
        ),
    ],
)
def test_key_fingerprint_is_hmac_and_key_never_kept(
    url: str, header: str, prefix: str, key: str
) -> None:
    ex = make_extractor(url, request_headers=[(header, prefix + key)], key_secret=SECRET)
    usage = ex.finish([], 500)
    assert usage.key_fingerprint == hmac.new(SECRET, key.encode(), hashlib.sha256).hexdigest()
    assert key not in repr(usage)
    assert key[:-4] not in repr(usage) and key[-8:] not in repr(usage)


def test_gemini_key_from_query_string() -> None:
    url = (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
        "?key=AIzaSyQueryKey0123456789abcdefghijk"
    )
    usage = run(url, data("gemini_generate.json"), key_secret=SECRET)
    expected = hmac.new(SECRET, b"AIzaSyQueryKey0123456789abcdefghijk", hashlib.sha256)
    assert usage.key_fingerprint == expected.hexdigest()
    assert usage.key_hint == "AIza...hijk"


def test_aws_sigv4_fingerprints_the_access_key_id_only() -> None:
    auth = (
        "AWS4-HMAC-SHA256 "
        "Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/bedrock/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024"
    )
    usage = run(
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse",
        data("bedrock_converse.json"),
        request_headers=[("Authorization", auth)],
        key_secret=SECRET,
    )
    assert usage.key_hint == "AKIA...MPLE"
    fp = hmac.new(SECRET, b"AKIAIOSFODNN7EXAMPLE", hashlib.sha256).hexdigest()
    assert usage.key_fingerprint == fp
    assert "fe5f80f7" not in repr(usage)


def test_no_secret_no_fingerprint_but_hint() -> None:
    ex = make_extractor(
        "https://api.openai.com/v1/chat/completions",
        request_headers=[("authorization", "Bearer sk-abcdefghijklmnopqrstuvwxyz")],
    )
    usage = ex.finish([], 401)
    assert (usage.key_fingerprint, usage.key_hint) == (None, "sk-...wxyz")


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("sk-proj-AbCd1234EfGh5678wxyz", "sk-proj-...wxyz"),
        ("sk-ant-api03-abcdefghijklmnopqrst-9f3Q", "sk-ant-...9f3Q"),
        ("xai-0123456789abcdefghijABCD", "xai-...ABCD"),
        ("gsk_0123456789abcdefghij", "gsk_...ghij"),
        ("0123456789abcdef0123456789abcdef", "...cdef"),
        ("short-key", "short-..."),  # no tail for short keys
    ],
)
def test_key_hints(key: str, hint: str) -> None:
    assert key_hint(key) == hint


# ------------------------------------------------------------------ finish() failure rules


def test_malformed_body_of_successful_call_raises() -> None:
    with pytest.raises(MalformedBodyError):
        run("https://api.openai.com/v1/chat/completions", data("malformed.json"))


def test_truncated_json_body_raises() -> None:
    with pytest.raises(MalformedBodyError):
        run("https://api.anthropic.com/v1/messages", data("truncated.json"))


def test_html_error_page_of_failed_call_is_a_record_without_counts() -> None:
    usage = run(
        "https://api.anthropic.com/v1/messages",
        b"<html><body>502 Bad Gateway</body></html>",
        request=data("anthropic_messages.request.json"),
        status=502,
    )
    assert (usage.status_code, usage.model, usage.input_tokens) == (502, "claude-sonnet-4-5", None)


def test_non_json_body_of_successful_call_raises() -> None:
    with pytest.raises(MalformedBodyError, match="not JSON"):
        run("https://api.openai.com/v1/chat/completions", b"<html>ok</html>")


def test_error_json_of_failed_call_parses_normally() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    usage = run("https://api.anthropic.com/v1/messages", body, status=529)
    assert (usage.status_code, usage.input_tokens, usage.output_tokens) == (529, None, None)


def test_feeding_after_an_error_is_ignored_and_finish_raises() -> None:
    ex = make_extractor("https://api.openai.com/v1/chat/completions")
    ex.feed_response(b'{"usage": [}')
    ex.feed_response(b'{"more": "bytes"}')  # no exception from feeding
    with pytest.raises(MalformedBodyError):
        ex.finish([], 200)


def test_multipart_request_is_ignored_for_api_calls() -> None:
    usage = run(
        "https://api.openai.com/v1/chat/completions",
        data("openai_chat.json"),
        request=b"--boundary\r\nContent-Disposition: form-data; name=file\r\n\r\n...",
    )
    assert usage.input_tokens == 1117
