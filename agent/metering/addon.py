"""The mitmproxy addon: meter AI calls as they stream through, report metadata, keep no content.

Loaded by the metering process, `agent.metering.proxy` (the supervisor starts it), and set with
its options (``--set lantern_channel=/run/lantern/metering/usage.sock``, ...).

Only catalog hosts are intercepted (``allow_hosts``), never pinned ones (``ignore_hosts``, and
again at the ClientHello); everything else passes through as opaque TLS. Bodies of intercepted
flows are streamed (``flow.request.stream`` / ``flow.response.stream`` callables): each chunk is
forwarded unchanged at once, so no body is buffered and streamed responses are not delayed.
``X-Lantern-*`` attribution headers are removed before forwarding. What a chunk means to its
`CallMeter` is worked out when the proxy is idle (`agent.metering.idle`, in order, a chunk held
meanwhile); at the end a `MeteredCall` goes to the agent over the Unix socket channel.

WebSockets on intercepted hosts are relayed by mitmproxy message by message, unchanged. A
metered one (a web app's chat socket, such as Copilot's) feeds each message to its `CallMeter`
and is reported once, when it closes (or when the proxy stops). mitmproxy keeps every message
of a flow in ``flow.websocket.messages`` for the flow's lifetime; the addon drops all but the
newest at each message, so a long-lived socket holds no conversation in memory.

Runs inside mitmproxy's own environment (mitmproxy 11.0; the hooks used exist in 12 too) and
imports mitmproxy at module level, so mypy sees it through the ``mitmproxy.*`` override.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx, http, tls

from agent.counters import Counters
from agent.metering import idle
from agent.metering.channel import ChannelSender
from agent.metering.detect import DEFAULT_MAX_SCAN_BYTES, Detectors
from agent.metering.hosts import intercept_rules, should_intercept
from agent.metering.identity import HEADERS_TO_STRIP
from agent.metering.lifeline import end_with_parent
from agent.metering.meter import CallMeter
from signatures.loader import load_catalog
from signatures.matcher import Matcher

log = logging.getLogger("lantern.metering.addon")

_STRIP = frozenset(name.encode() for name in HEADERS_TO_STRIP)


def _addr(raw: object) -> tuple[str, int]:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return str(raw[0]), int(raw[1])
    return "", 0


class _Metered:
    """One intercepted flow's meter. It is made by deferred work, so the hooks that run before
    that (and every chunk callable) hold this; ``meter`` stays None when the call is neither
    metered nor has a body to scan."""

    __slots__ = ("meter",)

    def __init__(self) -> None:
        self.meter: CallMeter | None = None


class LanternMeter:
    """mitmproxy hooks; one `CallMeter` per metered flow, kept only while the flow runs.

    The hooks and chunk callables do only what must happen before mitmproxy forwards: decide
    whether a flow is metered, strip the attribution headers, note what later work needs. The
    metering itself (parsing, scanning, the report) is queued (`agent.metering.idle`) and runs
    when the proxy has nothing to relay: the client never waits for it.
    """

    def __init__(self) -> None:
        self.counters = Counters()
        self.matcher: Matcher | None = None
        self.detectors: Detectors | None = None
        self.sender: ChannelSender | None = None
        self.key_secret: bytes | None = None
        self.calls: dict[str, _Metered] = {}  # by flow id, while the flow runs
        self.sockets: dict[str, _Metered] = {}  # metered WebSockets, by flow id, until closed
        self.work = idle.WORK
        self.work.on_error = self._work_failed

    # -- options -------------------------------------------------------------------------------

    def load(self, loader: object) -> None:
        add = loader.add_option  # type: ignore[attr-defined]
        add("lantern_channel", str, "", "Unix socket of the Lantern agent's usage channel.")
        add("lantern_key_secret", str, "", "File holding the device secret for key fingerprints.")
        add("lantern_catalog_dirs", Sequence[str], [], "Extra catalog directories.")
        add("lantern_max_scan_bytes", int, DEFAULT_MAX_SCAN_BYTES, "Request bytes scanned.")
        add("lantern_agent_pid", int, 0, "The agent's pid: this process ends when it does.")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if "lantern_agent_pid" in updated and opts.lantern_agent_pid > 0:
            end_with_parent(opts.lantern_agent_pid)
        if self.matcher is None or "lantern_catalog_dirs" in updated:
            dirs = [Path(d) for d in opts.lantern_catalog_dirs]
            self.matcher = Matcher(load_catalog(dirs).services)
            allow, ignore = intercept_rules(self.matcher)
            opts.update(allow_hosts=allow, ignore_hosts=ignore)
        if self.detectors is None or "lantern_max_scan_bytes" in updated:
            self.detectors = Detectors(
                max_scan_bytes=opts.lantern_max_scan_bytes, counters=self.counters
            )
        if "lantern_key_secret" in updated:
            path = opts.lantern_key_secret
            self.key_secret = Path(path).read_bytes().strip() if path else None
        if "lantern_channel" in updated:
            if self.sender is not None:
                self.sender.close()
            path = opts.lantern_channel
            self.sender = ChannelSender(Path(path), self.counters) if path else None

    def _work_failed(self, _step: str) -> None:
        self.counters.inc("metering.addon.error")

    def done(self) -> None:
        self.work.run_all()
        # WebSockets still open when the proxy stops: report what they carried so far.
        for flow_id in list(self.sockets):
            self._report(self.sockets.pop(flow_id), [], 101)
        if self.sender is not None:
            self.sender.close()

    # -- connections ---------------------------------------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        # allow_hosts is a regex prefilter; this is the exact, most-specific-match decision.
        sni = data.client_hello.sni
        if self.matcher is not None and sni and not should_intercept(self.matcher, sni):
            data.ignore_connection = True
            self.counters.inc("metering.passthrough")

    # -- flows ---------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        try:
            self._start(flow)
        except Exception:  # hooks fail soft: this flow is not metered, the proxy goes on
            self.counters.inc("metering.addon.error")
            log.error("metering hook failed (requestheaders)", exc_info=False)
            flow.request.stream = True

    def _start(self, flow: http.HTTPFlow) -> None:
        req = flow.request
        host = req.pretty_host
        match = self.matcher.match_name(host) if self.matcher is not None else None
        headers = req.headers.items(multi=True)
        # One pass over the raw names; deleting (rare) goes through mitmproxy's Headers.
        if any(name.lower() in _STRIP for name, _ in req.headers.fields):
            headers = list(headers)  # the tags are read from these, after they are gone
            for name in HEADERS_TO_STRIP:
                req.headers.pop(name, None)
        if match is None or match.pinned:
            req.stream = True  # not metered: pass the body on without buffering it
            return
        held = self.calls[flow.id] = _Metered()
        client = _addr(flow.client_conn.peername)
        mode = getattr(flow.client_conn.proxy_mode, "type_name", "regular")
        dst = _addr(flow.client_conn.sockname if mode == "regular" else flow.server_conn.address)
        self.work.defer(
            self._begin,
            time.time(),
            held,
            req.pretty_url,
            host,
            list(headers),
            client,
            dst,
            match.service.vendor_id,
            req.method,
            req.http_version,
        )

        def on_chunk(data: bytes) -> bytes:
            if data:
                self.work.defer(_request_chunk, held, data)
            return data

        req.stream = on_chunk

    def _begin(
        self,
        started: float,
        held: _Metered,
        url: str,
        host: str,
        headers: list[tuple[str, str]],
        client: tuple[str, int],
        dst: tuple[str, int],
        provider: str,
        method: str,
        http_version: str,
    ) -> None:
        meter = CallMeter.start(
            url,
            host,
            headers,
            detectors=self.detectors,
            key_secret=self.key_secret,
            client=client,
            dst=dst,
            provider=provider,
            method=method,
            http_version=http_version,
            started=started,
        )
        if meter is None:
            return
        held.meter = meter
        self.counters.inc("metering.calls" if meter.metered else "metering.scanned_only")
        if self.sender is not None:
            self.sender.send(meter.start_message())

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None:
            return
        held = self.calls.get(flow.id)
        if held is None:
            resp.stream = True
            return
        self.work.defer(_response_headers, held, resp.headers.get("content-encoding"))

        def on_chunk(data: bytes) -> bytes:
            if data:
                self.work.defer(_response_chunk, held, data)
            return data

        resp.stream = on_chunk

    def response(self, flow: http.HTTPFlow) -> None:
        held = self.calls.pop(flow.id, None)
        if held is None or flow.response is None:
            return
        if flow.websocket is not None:
            # 101: a WebSocket follows; its messages are metered until it closes.
            self.work.defer(_websocket_open, held)
            self.sockets[flow.id] = held
            return
        if flow.response.raw_content:
            # The response ended with its headers or was not streamed (no body frames).
            self.work.defer(_response_chunk, held, flow.response.raw_content)
        headers = flow.response.headers.items(multi=True)
        self.work.defer(self._report, held, list(headers), flow.response.status_code, time.time())

    # -- WebSockets ----------------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ws = flow.websocket
        if ws is None or not ws.messages:
            return
        held = self.sockets.get(flow.id)
        if held is not None:
            message = ws.messages[-1]
            self.work.defer(
                _websocket_message, held, message.content, message.from_client, message.is_text
            )
        # mitmproxy relays the newest message after this hook (it holds its own reference);
        # older ones are never needed again.
        del ws.messages[:-1]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:
            flow.websocket.messages.clear()
        held = self.sockets.pop(flow.id, None)
        if held is not None:
            headers = list(flow.response.headers.items(multi=True)) if flow.response else []
            self.work.defer(self._report, held, headers, 101, time.time())

    def error(self, flow: http.HTTPFlow) -> None:
        socket_held = self.sockets.pop(flow.id, None)
        if socket_held is not None:  # the WebSocket broke: report what it carried
            self.work.defer(self._report, socket_held, [], 101, time.time())
        held = self.calls.pop(flow.id, None)
        if held is not None:
            status = flow.response.status_code if flow.response is not None else None
            if flow.response is None:
                self.work.defer(_exchange_failed, held)
            self.work.defer(self._report, held, [], status, time.time())

    def _report(
        self,
        held: _Metered,
        headers: list[tuple[str, str]],
        status: int | None,
        ended: float | None = None,
    ) -> None:
        meter = held.meter
        if meter is None:
            return
        held.meter = None  # reported once
        try:
            call = meter.finish(headers, status, ended)
        except Exception:
            self.counters.inc("metering.addon.error")
            log.error("metering hook failed (finish)", exc_info=False)
            return
        if call is not None and self.sender is not None:
            self.sender.send(call)


# The deferred steps of a flow (no-ops when the call turned out not to be metered).


def _request_chunk(held: _Metered, data: bytes) -> None:
    if held.meter is not None:
        held.meter.request_chunk(data)


def _response_headers(held: _Metered, content_encoding: str | None) -> None:
    if held.meter is not None:
        held.meter.response_headers(content_encoding)


def _response_chunk(held: _Metered, data: bytes) -> None:
    if held.meter is not None:
        held.meter.response_chunk(data)


def _websocket_open(held: _Metered) -> None:
    if held.meter is not None:
        held.meter.websocket_open()


def _websocket_message(held: _Metered, content: bytes, from_client: bool, text: bool) -> None:
    if held.meter is not None:
        held.meter.websocket_message(content, from_client=from_client, text=text)


def _exchange_failed(held: _Metered) -> None:
    if held.meter is not None:
        held.meter.exchange_failed()


addons = [LanternMeter()]
