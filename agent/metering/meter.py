"""One proxied AI call, metered as its bodies stream past: chunks in, a `MeteredCall` out.

A call to an endpoint the extractor knows yields usage and labels. A call to any other path of
a catalog host (a file upload to ``/v1/files``, a web app's attachment endpoint) is scanned for
labels only, and reported only when its request carried a label or a file. An exchange that
becomes a WebSocket (Copilot's chat) is metered message by message and reported when it closes.

No mitmproxy here (the addon is a thin shell around this), so tests drive it with bytes. Each
chunk is decoded (Content-Encoding) and handed to the usage `Extractor` and, for the request, to
the data-class `Scanner`; nothing is kept but their running state. Feeding never raises: the
first failure stops that direction and its class name is reported as the call's ``error``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping

from agent.metering.channel import Address, CallStart, MeteredCall
from agent.metering.detect import Detectors, Labels, Scanner
from agent.metering.encodings import BodyDecoder
from agent.metering.exceptions import MeteringError
from agent.metering.extract import Extractor, extractor_for
from agent.metering.identity import HeaderInput, header_tags, normalize_headers
from agent.metering.records import Tags, Usage

# Methods whose requests carry a body. Over HTTP/2 and HTTP/3 the frames delimit the body, so a
# request may stream one with neither Content-Length nor Transfer-Encoding.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


# Call ids: a random prefix per process and a counter, 32 hex digits like a uuid4 (unique across
# devices and restarts), without a getrandom() system call on every request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def expects_body(headers: dict[str, str], method: str, http_version: str) -> bool:
    """Whether a request with these (lower-cased) headers may carry a body."""
    if "content-length" in headers:
        return headers["content-length"] != "0"
    if "transfer-encoding" in headers:
        return True
    return not http_version.startswith("HTTP/1") and method.upper() in BODY_METHODS


class CallMeter:
    """Meters one request/response exchange. Create with `CallMeter.start`."""

    __slots__ = (
        "_clock",
        "_error",
        "_extractor",
        "_req_decoder",
        "_resp_decoder",
        "_scanner",
        "bytes_down",
        "bytes_up",
        "client",
        "dst",
        "host",
        "id",
        "provider",
        "started",
        "tags",
    )

    def __init__(
        self,
        extractor: Extractor | None,
        scanner: Scanner | None,
        host: str,
        request_encoding: str | None,
        *,
        client: Address,
        dst: Address,
        provider: str = "unknown",
        tags: Tags = (),
        clock: Callable[[], float] = time.time,
        started: float | None = None,
    ) -> None:
        self.id = _new_id()
        self.provider = provider
        self.tags = tags  # the request's X-Lantern-* tags, for calls without an extractor
        self.host = host
        self.client = client
        self.dst = dst
        self._clock = clock
        self.started = clock() if started is None else started
        self._extractor = extractor
        self._scanner = scanner
        self._error: str | None = None
        self._req_decoder: BodyDecoder | None = None
        self._resp_decoder: BodyDecoder | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        try:
            self._req_decoder = BodyDecoder(request_encoding)
        except MeteringError as exc:
            self._fail(exc)

    @classmethod
    def start(
        cls,
        url: str,
        host: str,
        request_headers: HeaderInput,
        *,
        detectors: Detectors | None,
        key_secret: bytes | None,
        client: Address,
        dst: Address,
        provider: str = "unknown",
        method: str = "POST",
        http_version: str = "HTTP/1.1",
        clock: Callable[[], float] = time.time,
        started: float | None = None,
    ) -> CallMeter | None:
        """A meter for a call to ``url``; None when there is neither usage nor a body to read.

        ``provider`` names the vendor for calls the extractor does not know (label-only calls).
        ``method`` and ``http_version`` tell whether a body may follow without a length.
        ``started``: when the request began, if earlier than now (work deferred by the addon).
        """
        headers = normalize_headers(request_headers)
        extractor = extractor_for(url, headers, key_secret=key_secret)
        has_body = expects_body(headers, method, http_version)
        if extractor is None and not (has_body and detectors is not None):
            return None
        scanner = detectors.scanner(headers.get("content-type")) if detectors else None
        return cls(
            extractor,
            scanner,
            host,
            headers.get("content-encoding"),
            client=client,
            dst=dst,
            provider=provider,
            tags=header_tags(headers) if extractor is None else (),
            clock=clock,
            started=started,
        )

    @property
    def metered(self) -> bool:
        """The endpoint's usage is read (not only its request's labels)."""
        return self._extractor is not None

    def start_message(self) -> CallStart:
        return CallStart(self.id, self.client, self.dst)

    def exchange_failed(self) -> None:
        """The exchange broke off before any answer (the server's certificate refused, the
        connection lost): the record says ``NoResponse``, never the reason's text."""
        if self._error is None:
            self._error = "NoResponse"

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = type(exc).__name__

    # -- request -------------------------------------------------------------------------------

    def request_chunk(self, data: bytes) -> None:
        self.bytes_up += len(data)
        self._request_bytes(data)

    def _request_bytes(self, data: bytes) -> None:
        if self._req_decoder is None or not data:
            return
        try:
            plain = self._req_decoder.feed(data)
        except MeteringError as exc:
            self._req_decoder = None
            self._fail(exc)
            return
        self._feed_request(plain)

    def request_end(self) -> None:
        if self._req_decoder is not None:
            try:
                tail = self._req_decoder.flush()
            except MeteringError as exc:
                self._fail(exc)
                tail = b""
            self._feed_request(tail)
            if self._req_decoder.overflowed:
                self._fail(MeteringError("request body expanded past the limit"))
            self._req_decoder = None

    def _feed_request(self, plain: bytes) -> None:
        if plain:
            if self._extractor is not None:
                self._extractor.feed_request(plain)
            if self._scanner is not None:
                self._scanner.feed(plain)

    # -- response ------------------------------------------------------------------------------

    def response_headers(self, content_encoding: str | None) -> None:
        self.request_end()
        try:
            self._resp_decoder = BodyDecoder(content_encoding)
        except MeteringError as exc:
            self._fail(exc)

    def response_chunk(self, data: bytes) -> None:
        self.bytes_down += len(data)
        self._response_bytes(data)

    def _response_bytes(self, data: bytes) -> None:
        if self._resp_decoder is None or not data:
            return
        try:
            plain = self._resp_decoder.feed(data)
        except MeteringError as exc:
            self._resp_decoder = None
            self._fail(exc)
            return
        if plain and self._extractor is not None:
            self._extractor.feed_response(plain)

    # -- WebSocket -----------------------------------------------------------------------------

    def websocket_open(self) -> None:
        """The exchange became a WebSocket (101): its messages are the bodies from now on.

        Each direction is then read as a sequence of documents, one per text message (a web
        app such as Copilot sends one JSON object per message); messages carry no
        Content-Encoding (permessage-deflate is undone by the proxy).
        """
        self.request_end()
        self._req_decoder = BodyDecoder(None)
        self._resp_decoder = BodyDecoder(None)

    def websocket_message(self, data: bytes, *, from_client: bool, text: bool) -> None:
        """One whole message. Text is read (a newline keeps it apart from the next message);
        binary messages are only counted."""
        if from_client:
            self.bytes_up += len(data)
            if text:
                self._request_bytes(data)
                self._request_bytes(b"\n")
        else:
            self.bytes_down += len(data)
            if text:
                self._response_bytes(data)
                self._response_bytes(b"\n")

    # -- end -----------------------------------------------------------------------------------

    def finish(
        self,
        response_headers: HeaderInput | Mapping[str, str],
        status_code: int | None,
        ended: float | None = None,
    ) -> MeteredCall | None:
        """The call's report (None for a label-only call that carried no label or file).

        ``status_code`` None: the exchange failed before a response. ``ended``: when the
        exchange ended, if earlier than now.
        """
        self.request_end()
        if self._resp_decoder is not None:
            try:
                tail = self._resp_decoder.flush()
                if tail and self._extractor is not None:
                    self._extractor.feed_response(tail)
            except MeteringError as exc:
                self._fail(exc)
            if self._resp_decoder.overflowed:
                self._fail(MeteringError("response body expanded past the limit"))
            self._resp_decoder = None
        labels: Labels | None = self._scanner.finish() if self._scanner is not None else None
        if self._extractor is None:
            if labels is None or not (labels.counts or labels.uploads):
                return None
            usage = self._bare_usage(status_code)
        else:
            try:
                usage = self._extractor.finish(response_headers, status_code)
            except MeteringError as exc:
                self._fail(exc)
                usage = self._bare_usage(status_code)
        return MeteredCall(
            id=self.id,
            host=self.host,
            started=self.started,
            ended=self._clock() if ended is None else ended,
            usage=usage,
            labels=labels,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            client=self.client,
            dst=self.dst,
            error=self._error,
        )

    def _bare_usage(self, status_code: int | None) -> Usage:
        if self._extractor is None:
            return Usage(
                provider=self.provider,
                model=None,
                operation="other",
                endpoint="other",
                streaming=False,
                input_tokens=None,
                output_tokens=None,
                cache_read_tokens=None,
                cache_write_tokens=None,
                reasoning_tokens=None,
                status_code=status_code,
                tags=self.tags,
            )
        route = self._extractor.route
        return Usage(
            provider=route.provider,
            model=route.model,
            operation=route.operation,
            endpoint=route.endpoint,
            streaming=route.streaming,
            input_tokens=None,
            output_tokens=None,
            cache_read_tokens=None,
            cache_write_tokens=None,
            reasoning_tokens=None,
            estimated=route.web_app is not None,
            status_code=status_code,
            deployment=route.deployment,
        )
