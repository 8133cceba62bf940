"""The metering entry point: route a URL to its provider, stream both bodies through, get `Usage`.

    ex = extractor_for(url, request_headers, key_secret=device_secret)
    if ex is not None:                       # None: not a metered endpoint
        for chunk in request_chunks:  ex.feed_request(chunk)
        for chunk in response_chunks: ex.feed_response(chunk)
        usage = ex.finish(response_headers, status_code)

Feeding never raises: the first malformed chunk stops that direction and the error is kept.
`finish` raises it (a `MeteringError`) unless the status says the call failed anyway (>= 400),
in which case a Usage without token counts records the failed call. Bodies must be fed after
content decoding (gzip/br removed), as mitmproxy's ``flow.response.content`` provides them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

from agent.metering.exceptions import MalformedBodyError, MeteringError
from agent.metering.identity import (
    HeaderInput,
    api_key,
    body_tags,
    fingerprint,
    header_tags,
    key_hint,
    normalize_headers,
)
from agent.metering.jsonscan import JsonScanner, Path
from agent.metering.providers.webapps import REQUEST_TEXT, estimate_tokens
from agent.metering.records import Counts, Usage
from agent.metering.routes import Route, route_for
from agent.metering.streams import ResponseBody

PriceFn = Callable[[Usage], float | None]

_MODEL: Path = ("model",)
_STREAM: Path = ("stream",)
_USER: Path = ("user",)
_METADATA: Path = ("metadata",)
_REQUEST_WANTED = frozenset({_MODEL, _STREAM, _USER, _METADATA})
_REQUEST_MAX_CAPTURE = 16 * 1024  # metadata is at most 16 short pairs


class _RequestBody:
    """Scans a request for model/stream/user/metadata and, for web apps, text bytes."""

    __slots__ = ("_head", "_mode", "_scanner", "_text_keys", "text_bytes", "values")

    def __init__(self, text_keys: frozenset[str] | None, *, count_text: bool) -> None:
        self.values: dict[Path, object] = {}
        self.text_bytes = 0
        self._text_keys = text_keys
        self._mode = "new" if count_text else "new-api"
        self._head = b""
        self._scanner = JsonScanner(
            _REQUEST_WANTED,
            self.values.__setitem__,
            on_string=self._on_string if count_text else None,
            multi=count_text,  # a WebSocket app (Copilot) sends one JSON message after another
            max_capture=_REQUEST_MAX_CAPTURE,
        )

    def _on_string(self, key: str | None, nbytes: int) -> None:
        keys = self._text_keys
        if keys is None or (key is not None and key in keys):
            self.text_bytes += nbytes

    def feed(self, chunk: bytes) -> None:
        if self._mode.startswith("new"):
            stripped = chunk.lstrip()
            if not stripped:
                return
            if stripped[:1] in (b"{", b"["):
                self._mode = "json"
            else:
                # Not JSON (form-encoded, multipart): only web apps use its size.
                self._mode = "raw" if self._mode == "new" else "ignore"
        if self._mode == "json":
            self._scanner.feed(chunk)
        elif self._mode == "raw":
            # Form encoding: each %XX stands for one byte of text.
            self.text_bytes += len(chunk) - 2 * chunk.count(b"%")

    def finish(self) -> None:
        if self._mode == "json":
            self._scanner.finish()


class Extractor:
    """Usage extraction for one call. Create with `extractor_for`."""

    __slots__ = (
        "_error",
        "_key_fingerprint",
        "_key_hint",
        "_parser",
        "_price",
        "_request",
        "_response",
        "_route",
        "_tags",
    )

    def __init__(
        self,
        route: Route,
        url: str,
        request_headers: Mapping[str, str],
        *,
        key_secret: bytes | None,
        price: PriceFn | None,
    ) -> None:
        self._route = route
        self._price = price
        self._parser = route.make_parser(route.model)
        web = route.web_app is not None
        self._request = _RequestBody(REQUEST_TEXT.get(route.web_app or ""), count_text=web)
        self._response = ResponseBody(self._parser)
        self._error: MeteringError | None = None
        self._tags = header_tags(request_headers)
        self._key_fingerprint: str | None = None
        self._key_hint: str | None = None
        # Web apps authenticate with session cookies or short-lived tokens, not API keys.
        key = None if web else api_key(request_headers, url)
        if key is not None:
            self._key_hint = key_hint(key)
            if key_secret is not None:
                self._key_fingerprint = fingerprint(key, key_secret)

    @property
    def route(self) -> Route:
        return self._route

    def feed_request(self, chunk: bytes) -> None:
        if self._error is None:
            try:
                self._request.feed(chunk)
            except MalformedBodyError as exc:
                self._error = exc

    def feed_response(self, chunk: bytes) -> None:
        if self._error is None:
            try:
                self._response.feed(chunk)
            except MalformedBodyError as exc:
                self._error = exc

    def finish(self, response_headers: HeaderInput = (), status_code: int | None = None) -> Usage:
        """The call's Usage; raises `MeteringError` when a body of a successful call was bad."""
        headers = normalize_headers(response_headers)
        for part in (self._request, self._response):
            if self._error is None:
                try:
                    part.finish()
                except MalformedBodyError as exc:
                    self._error = exc
        if self._error is None and self._response.raw_rejected:
            self._error = MalformedBodyError(
                "response body is not JSON, SSE or an AWS event stream"
            )
        failed = status_code is not None and status_code >= 400
        if self._error is not None and not failed:
            raise self._error
        counts = Counts(model=self._parser.model) if self._error else self._parser.counts(headers)
        usage = self._usage(counts, status_code)
        if self._price is not None and not usage.estimated:
            usage = replace(usage, cost_usd=self._price(usage))
        return usage

    def _usage(self, counts: Counts, status_code: int | None) -> Usage:
        route = self._route
        req = self._request.values
        req_model = req.get(_MODEL)
        model = counts.model or (
            req_model[:200] if isinstance(req_model, str) and req_model else None
        )
        streaming = route.streaming or req.get(_STREAM) is True or self._response.stream_like
        tags = self._tags + body_tags(req.get(_USER), req.get(_METADATA))
        estimated = route.web_app is not None
        if estimated:
            counts = replace(counts, input_tokens=estimate_tokens(self._request.text_bytes))
        return Usage(
            provider=route.provider,
            model=model,
            operation=route.operation,
            endpoint=route.endpoint,
            streaming=streaming,
            input_tokens=counts.input_tokens,
            output_tokens=counts.output_tokens,
            cache_read_tokens=counts.cache_read_tokens,
            cache_write_tokens=counts.cache_write_tokens,
            reasoning_tokens=counts.reasoning_tokens,
            estimated=estimated,
            status_code=status_code,
            deployment=route.deployment,
            tags=tags,
            key_fingerprint=self._key_fingerprint,
            key_hint=self._key_hint,
        )


def extractor_for(
    url: str,
    request_headers: HeaderInput = (),
    *,
    key_secret: bytes | None = None,
    price: PriceFn | None = None,
) -> Extractor | None:
    """An extractor for a call to ``url``, or None when the URL is not a metered endpoint.

    ``key_secret`` is the device-local HMAC key for API-key fingerprints (None: no fingerprint).
    ``price`` (for example a `cost.Pricer`) fills ``cost_usd``; without it cost stays None, which
    is how the mitmproxy process runs (prices are applied on the agent side).
    """
    route = route_for(url)
    if route is None:
        return None
    return Extractor(
        route, url, normalize_headers(request_headers), key_secret=key_secret, price=price
    )
