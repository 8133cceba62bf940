"""Which provider format a URL speaks: host and path to a `Route` (provider, operation, parser).

Only endpoints that bill per token (or, for web apps, carry a conversation turn) are routed;
everything else on an AI host (model lists, file uploads, history fetches) yields None, so the
addon records no usage for it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from agent.metering.providers import webapps
from agent.metering.providers.anthropic import AnthropicParser
from agent.metering.providers.base import Parser
from agent.metering.providers.bedrock import ConverseParser, InvokeParser
from agent.metering.providers.cohere import CohereParser
from agent.metering.providers.gemini import GeminiParser
from agent.metering.providers.ollama import OllamaParser
from agent.metering.providers.openai import DeepSeekParser, OpenAIParser, XaiParser

ParserFactory = Callable[[str | None], Parser]


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    operation: str  # OpenTelemetry gen_ai.operation.name
    endpoint: str
    make_parser: ParserFactory
    model: str | None = None  # named by the URL path (Gemini, Vertex, Bedrock)
    deployment: str | None = None  # Azure OpenAI
    streaming: bool = False  # the URL itself says the response streams
    web_app: str | None = None  # key of webapps.REQUEST_TEXT: counts are estimated


# OpenAI-compatible API hosts: provider name (OpenTelemetry gen_ai.provider.name where one is
# defined) and the parser that knows the host's usage quirks.
_OPENAI_HOSTS: dict[str, tuple[str, ParserFactory]] = {
    "api.openai.com": ("openai", OpenAIParser),
    "api.deepseek.com": ("deepseek", DeepSeekParser),
    "api.x.ai": ("x_ai", XaiParser),
    "api.groq.com": ("groq", OpenAIParser),
    "api.together.xyz": ("together", OpenAIParser),
    "api.together.ai": ("together", OpenAIParser),
    "api.fireworks.ai": ("fireworks", OpenAIParser),
    "openrouter.ai": ("openrouter", OpenAIParser),
    "api.perplexity.ai": ("perplexity", OpenAIParser),
    "api.mistral.ai": ("mistral_ai", OpenAIParser),
}
_AZURE_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
_OLLAMA_PORT = 11434
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")

_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)(/.*)$")
_GEMINI = re.compile(r"/(?:models|tunedModels)/([^/:]+):(generateContent|streamGenerateContent)$")
_VERTEX = re.compile(
    r"/publishers/(google|anthropic)/models/([^/:]+)"
    r":(generateContent|streamGenerateContent|rawPredict|streamRawPredict)$"
)
_BEDROCK = re.compile(
    r"^/model/([^/]+)/(converse|converse-stream|invoke|invoke-with-response-stream)$"
)
_CLAUDE_WEB = re.compile(r"^/api/organizations/[^/]+/chat_conversations/[^/]+/(retry_)?completion$")


def _openai_op(path: str) -> tuple[str, str] | None:
    """(operation, endpoint) of an OpenAI-style path, by its last segments."""
    if path.endswith("/chat/completions"):
        return "chat", "chat_completions"
    if path.endswith("/responses"):
        return "chat", "responses"
    if path.endswith("/completions"):
        return "text_completion", "completions"
    if path.endswith("/embeddings"):
        return "embeddings", "embeddings"
    return None


def _openai_route(
    provider: str, path: str, parser: ParserFactory, deployment: str | None = None
) -> Route | None:
    op = _openai_op(path)
    if op is None:
        return None
    return Route(provider, op[0], op[1], parser, deployment=deployment)


def route_for(url: str) -> Route | None:
    """The route for a request URL, or None when Lantern does not meter that endpoint."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    raw_path = parts.path.rstrip("/") or "/"
    path = unquote(raw_path)
    for route in (_api_route(host, parts.port, raw_path, path), _web_route(host, path)):
        if route is not None:
            return route
    return None


def _api_route(host: str, port: int | None, raw_path: str, path: str) -> Route | None:
    if host in _OPENAI_HOSTS:
        provider, parser = _OPENAI_HOSTS[host]
        return _openai_route(provider, path, parser)
    if host.endswith(_AZURE_SUFFIXES):
        return _azure_route(path)
    if host == "api.anthropic.com":
        if path == "/v1/messages":
            return Route("anthropic", "chat", "messages", AnthropicParser)
        return None
    if host == "generativelanguage.googleapis.com":
        return _gemini_route(path)
    if host == "aiplatform.googleapis.com" or host.endswith("-aiplatform.googleapis.com"):
        return _vertex_route(path)
    if host.startswith(("bedrock-runtime.", "bedrock-runtime-fips.")) and host.endswith(
        ".amazonaws.com"
    ):
        return _bedrock_route(raw_path)
    if host in ("api.cohere.com", "api.cohere.ai"):
        if path == "/v2/chat":
            return Route("cohere", "chat", "chat", CohereParser)
        return _openai_route("cohere", path, OpenAIParser)  # /compatibility/v1/...
    if port == _OLLAMA_PORT or "ollama" in host:
        return _ollama_route(path, openai_too=True)
    if host in _LOCAL_HOSTS:
        # Other local servers (vLLM, LM Studio) also speak /v1; only Ollama's own paths say
        # "Ollama" on an unknown port.
        return _ollama_route(path, openai_too=False)
    return None


def _azure_route(path: str) -> Route | None:
    m = _AZURE_DEPLOYMENT.search(path)
    if m:
        # The deployment is the customer's own name for a model; the body names the model.
        return _openai_route("azure.ai.openai", m.group(2), OpenAIParser, deployment=m.group(1))
    if path.startswith("/openai/"):  # the v1 API: model named in the request body
        return _openai_route("azure.ai.openai", path, OpenAIParser)
    if path.startswith("/models/"):  # Azure AI model inference (Foundry)
        return _openai_route("azure.ai.inference", path, OpenAIParser)
    return None


def _gemini_route(path: str) -> Route | None:
    m = _GEMINI.search(path)
    if m:
        model, method = m.group(1), m.group(2)
        return Route(
            "gcp.gemini",
            "generate_content",
            method,
            GeminiParser,
            model=model,
            streaming=method == "streamGenerateContent",
        )
    if "/openai/" in path:
        return _openai_route("gcp.gemini", path, OpenAIParser)
    return None


def _vertex_route(path: str) -> Route | None:
    m = _VERTEX.search(path)
    if m:
        publisher, model, method = m.groups()
        streaming = method.startswith("stream")
        if publisher == "anthropic":
            return Route(
                "gcp.vertex_ai", "chat", method, AnthropicParser, model=model, streaming=streaming
            )
        return Route(
            "gcp.vertex_ai",
            "generate_content",
            method,
            GeminiParser,
            model=model,
            streaming=streaming,
        )
    if path.endswith("/endpoints/openapi/chat/completions"):
        return Route("gcp.vertex_ai", "chat", "chat_completions", OpenAIParser)
    return None


def _bedrock_route(raw_path: str) -> Route | None:
    m = _BEDROCK.match(raw_path)
    if not m:
        return None
    # Model ids are percent-encoded in the path (":" of versions, "/" of ARNs).
    model, action = unquote(m.group(1)), m.group(2)
    converse = action.startswith("converse")
    return Route(
        "aws.bedrock",
        "chat" if converse else "invoke_model",
        action,
        ConverseParser if converse else InvokeParser,
        model=model,
        streaming=action in ("converse-stream", "invoke-with-response-stream"),
    )


def _ollama_route(path: str, *, openai_too: bool) -> Route | None:
    if path == "/api/chat":
        return Route("ollama", "chat", "api_chat", OllamaParser)
    if path == "/api/generate":
        return Route("ollama", "text_completion", "api_generate", OllamaParser)
    if openai_too and path.startswith("/v1/"):
        return _openai_route("ollama", path, OpenAIParser)
    return None


def _web(
    provider: str, endpoint: str, app: str, text: webapps.WebText, *, streaming: bool = False
) -> Route:
    def make(path_model: str | None) -> Parser:
        return webapps.WebParser(text, path_model)

    return Route(provider, "chat", endpoint, make, streaming=streaming, web_app=app)


def _web_route(host: str, path: str) -> Route | None:
    if host in ("chatgpt.com", "chat.openai.com") and path in (
        "/backend-api/conversation",
        "/backend-api/f/conversation",
        "/backend-anon/conversation",
    ):
        return _web("openai", "chatgpt.web", "chatgpt", webapps.CHATGPT)
    if host == "claude.ai" and _CLAUDE_WEB.match(path):
        return _web("anthropic", "claude.web", "claude.ai", webapps.CLAUDE)
    if host == "gemini.google.com" and path.endswith("/StreamGenerate"):
        return _web("gcp.gemini", "gemini.web", "gemini.web", webapps.GEMINI_WEB, streaming=True)
    if host == "copilot.microsoft.com" and path == "/c/api/chat":
        return _web("microsoft.copilot", "copilot.web", "copilot", webapps.COPILOT, streaming=True)
    if host in ("perplexity.ai", "www.perplexity.ai") and path == "/rest/sse/perplexity_ask":
        return _web("perplexity", "perplexity.web", "perplexity.ai", webapps.PERPLEXITY)
    return None
