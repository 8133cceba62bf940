"""Runs INSIDE the metering environment (mitmproxy's venv), called by test_websocket.py.

Drives the addon's hooks the way mitmproxy calls them for a WebSocket (request headers, 101,
one hook per message, end) with mitmproxy's own test flows, and prints as JSON how many
messages the flow still held after each hook at most, and what the addon reported.
"""

from __future__ import annotations

import json
import sys

from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from agent.metering.addon import LanternMeter
from agent.metering.channel import MeteredCall


class Collect:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, msg: object) -> None:
        self.sent.append(msg)

    def close(self) -> None:
        pass


def run(host: str, path: str, messages: int) -> dict[str, object]:
    addon = LanternMeter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon)  # loads the catalog
        out = Collect()
        addon.sender = out  # type: ignore[assignment]
        flow = tflow.twebsocketflow(messages=False)
        assert flow.websocket is not None and flow.response is not None
        flow.request.host = host
        flow.request.port = 443
        flow.request.scheme = "https"
        flow.request.path = path
        flow.request.headers["host"] = host
        addon.requestheaders(flow)
        addon.responseheaders(flow)
        addon.response(flow)
        kept = 0
        for i in range(messages):
            from_client = i % 2 == 0
            body = (
                {"event": "send", "content": [{"text": "x" * 40}]}
                if from_client
                else {
                    "event": "appendText",
                    "text": "y" * 80,
                }
            )
            flow.websocket.messages.append(
                WebSocketMessage(Opcode.TEXT, from_client, json.dumps(body).encode())
            )
            addon.websocket_message(flow)
            kept = max(kept, len(flow.websocket.messages))
        addon.websocket_end(flow)
        calls = [m for m in out.sent if isinstance(m, MeteredCall)]
        return {
            "kept_at_most": kept,
            "kept_at_end": len(flow.websocket.messages),
            "open_sockets": len(addon.sockets),
            "calls": [
                {
                    "endpoint": c.usage.endpoint,
                    "estimated": c.usage.estimated,
                    "input_tokens": c.usage.input_tokens,
                    "output_tokens": c.usage.output_tokens,
                    "bytes_up": c.bytes_up,
                    "bytes_down": c.bytes_down,
                    "error": c.error,
                }
                for c in calls
            ],
        }


if __name__ == "__main__":
    host, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print(json.dumps(run(host, path, count)))
