"""The mitmproxy addon: meter AI calls as they stream through, report metadata, keep no content.

Loaded by the metering process (`agent.metering.supervisor` starts it)::

    mitmdump -s agent/metering/addon.py --set lantern_channel=/run/lantern/metering/usage.sock

Only catalog hosts are intercepted (``allow_hosts``), never pinned ones (``ignore_hosts``, and
again at the ClientHello); everything else passes through as opaque TLS. Bodies of intercepted
flows are streamed (``flow.request.stream`` / ``flow.response.stream`` callables): each chunk is
handed to a `CallMeter` and forwarded unchanged at once, so no body is buffered and streamed
responses are not delayed. ``X-Lantern-*`` attribution headers are removed before forwarding.
At the end a `MeteredCall` goes to the agent over the Unix socket channel.

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
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import ctx, http, tls

from agent.counters import Counters
from agent.metering.channel import ChannelSender
from agent.metering.detect import DEFAULT_MAX_SCAN_BYTES, Detectors
from agent.metering.hosts import intercept_rules, should_intercept
from agent.metering.identity import HEADERS_TO_STRIP
from agent.metering.lifeline import end_with_parent
from agent.metering.meter import CallMeter
from signatures.loader import load_catalog
from signatures.matcher import Matcher

log = logging.getLogger("lantern.metering.addon")


def _addr(raw: object) -> tuple[str, int]:
    if isinstance(raw, tuple) and len(raw) >= 2:
        return str(raw[0]), int(raw[1])
    return "", 0


class LanternMeter:
    """mitmproxy hooks; one `CallMeter` per metered flow, kept only while the flow runs."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.matcher: Matcher | None = None
        self.detectors: Detectors | None = None
        self.sender: ChannelSender | None = None
        self.key_secret: bytes | None = None
        self.calls: dict[str, CallMeter] = {}  # by flow id, while the flow runs
        self.sockets: dict[str, CallMeter] = {}  # metered WebSockets, by flow id, until closed

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

    def done(self) -> None:
        # WebSockets still open when the proxy stops: report what they carried so far.
        for flow_id in list(self.sockets):
            self._report(self.sockets.pop(flow_id), (), 101)
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
        meter = None
        match = self.matcher.match_name(host) if self.matcher is not None else None
        if match is not None and not match.pinned:
            client = _addr(flow.client_conn.peername)
            mode = getattr(flow.client_conn.proxy_mode, "type_name", "regular")
            dst_raw = flow.client_conn.sockname if mode == "regular" else flow.server_conn.address
            meter = CallMeter.start(
                req.pretty_url,
                host,
                req.headers.items(multi=True),
                detectors=self.detectors,
                key_secret=self.key_secret,
                client=client,
                dst=_addr(dst_raw),
                provider=match.service.vendor_id,
                method=req.method,
                http_version=req.http_version,
            )
        for name in HEADERS_TO_STRIP:
            if name in req.headers:
                del req.headers[name]
        if meter is None:
            req.stream = True  # not metered: pass the body on without buffering it
            return
        self.calls[flow.id] = meter
        self.counters.inc("metering.calls" if meter.metered else "metering.scanned_only")
        if self.sender is not None:
            self.sender.send(meter.start_message())

        def on_chunk(data: bytes) -> bytes:
            meter.request_chunk(data)
            return data

        req.stream = on_chunk

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        resp = flow.response
        if resp is None:
            return
        meter = self.calls.get(flow.id)
        if meter is None:
            resp.stream = True
            return
        meter.response_headers(resp.headers.get("content-encoding"))

        def on_chunk(data: bytes) -> bytes:
            meter.response_chunk(data)
            return data

        resp.stream = on_chunk

    def response(self, flow: http.HTTPFlow) -> None:
        meter = self.calls.pop(flow.id, None)
        if meter is None or flow.response is None:
            return
        if flow.websocket is not None:
            # 101: a WebSocket follows; its messages are metered until it closes.
            meter.websocket_open()
            self.sockets[flow.id] = meter
            return
        if flow.response.raw_content:
            # The response ended with its headers or was not streamed (no body frames).
            meter.response_chunk(flow.response.raw_content)
        self._report(meter, flow.response.headers.items(multi=True), flow.response.status_code)

    # -- WebSockets ----------------------------------------------------------------------------

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        ws = flow.websocket
        if ws is None or not ws.messages:
            return
        meter = self.sockets.get(flow.id)
        if meter is not None:
            message = ws.messages[-1]
            try:
                meter.websocket_message(
                    message.content, from_client=message.from_client, text=message.is_text
                )
            except Exception:  # hooks fail soft: the message is relayed all the same
                self.counters.inc("metering.addon.error")
                log.error("metering hook failed (websocket_message)", exc_info=False)
        # mitmproxy relays the newest message after this hook (it holds its own reference);
        # older ones are never needed again.
        del ws.messages[:-1]

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is not None:
            flow.websocket.messages.clear()
        meter = self.sockets.pop(flow.id, None)
        if meter is not None:
            headers = flow.response.headers.items(multi=True) if flow.response else ()
            self._report(meter, headers, 101)

    def error(self, flow: http.HTTPFlow) -> None:
        socket_meter = self.sockets.pop(flow.id, None)
        if socket_meter is not None:  # the WebSocket broke: report what it carried
            self._report(socket_meter, (), 101)
        meter = self.calls.pop(flow.id, None)
        if meter is not None:
            if flow.response is None:
                meter.exchange_failed()
            status = flow.response.status_code if flow.response is not None else None
            self._report(meter, (), status)

    def _report(self, meter: CallMeter, headers: object, status: int | None) -> None:
        try:
            call = meter.finish(headers, status)  # type: ignore[arg-type]
        except Exception:
            self.counters.inc("metering.addon.error")
            log.error("metering hook failed (finish)", exc_info=False)
            return
        if call is not None and self.sender is not None:
            self.sender.send(call)


addons = [LanternMeter()]
