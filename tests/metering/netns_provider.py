"""TEST-ONLY: the "internet" of the transparent-mode test, run inside its peer namespace.

    ip netns exec PEER python tests/metering/netns_provider.py CONFIG.json

CONFIG names the servers: ``provider`` (cert, key, the addresses it serves api.openai.com and
api.anthropic.com on, in their formats) and ``site`` (cert, key, address of a non-AI site), and
``answer``, a canary the provider puts in its answers. Prints ``ready`` once every server
listens; when stdin closes, prints what each server received as ``received [...]`` (method,
path, host, header names) and exits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.metering.proxykit import FakeProvider, Received, Reply, Route

MODEL = "gpt-4o-mini-2024-07-18"
CLAUDE = "claude-sonnet-4-5-20250929"


def sse(events: list[dict[str, object]]) -> list[bytes]:
    return [
        f"event: {ev['type']}\n".encode() + b"data: " + json.dumps(ev).encode() + b"\n\n"
        for ev in events
    ]


def provider_route(answer: str) -> Route:
    def route(req: Received) -> Reply:
        host = dict((k.lower(), v) for k, v in req.headers)["host"].split(":")[0]
        if host == "api.openai.com" and req.path == "/v1/chat/completions":
            if json.loads(req.body).get("stream"):
                chunks = [
                    b"data: "
                    + json.dumps(
                        {
                            "object": "chat.completion.chunk",
                            "model": MODEL,
                            "choices": [{"index": 0, "delta": {"content": answer}}],
                        }
                    ).encode()
                    + b"\n\n",
                    b"data: "
                    + json.dumps(
                        {
                            "object": "chat.completion.chunk",
                            "model": MODEL,
                            "choices": [],
                            "usage": {"prompt_tokens": 31, "completion_tokens": 9},
                        }
                    ).encode()
                    + b"\n\n",
                    b"data: [DONE]\n\n",
                ]
                return Reply(
                    headers=[("Content-Type", "text/event-stream")], chunks=chunks, chunked=True
                )
            body = {
                "object": "chat.completion",
                "model": MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26},
            }
            return Reply(
                headers=[("Content-Type", "application/json")], chunks=[json.dumps(body).encode()]
            )
        if host == "api.anthropic.com" and req.path == "/v1/messages":
            events = [
                {
                    "type": "message_start",
                    "message": {"model": CLAUDE, "usage": {"input_tokens": 44, "output_tokens": 1}},
                },
                {"type": "content_block_delta", "delta": {"type": "text_delta", "text": answer}},
                {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 17}},
                {"type": "message_stop"},
            ]
            return Reply(
                headers=[("Content-Type", "text/event-stream")], chunks=sse(events), chunked=True
            )
        return Reply(status=404, chunks=[b"no route"])

    return route


def site_route(req: Received) -> Reply:
    return Reply(headers=[("Content-Type", "text/html")], chunks=[b"<html>a site</html>"])


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    servers: list[tuple[str, FakeProvider]] = []
    p, site = config["provider"], config["site"]
    route = provider_route(config["answer"])
    for address in p["addresses"]:
        servers.append(
            ("provider", FakeProvider(Path(p["cert"]), Path(p["key"]), route, bind=(address, 443)))
        )
    servers.append(
        (
            "site",
            FakeProvider(
                Path(site["cert"]), Path(site["key"]), site_route, bind=(site["address"], 443)
            ),
        )
    )
    for _, server in servers:
        server.__enter__()
    print("ready", flush=True)
    sys.stdin.read()
    received = [
        {
            "server": name,
            "method": r.method,
            "path": r.path,
            "host": dict((k.lower(), v) for k, v in r.headers).get("host"),
            "headers": sorted({k.lower() for k, _ in r.headers}),
        }
        for name, server in servers
        for r in server.received
    ]
    for _, server in servers:
        server.__exit__()
    print("received", json.dumps(received), flush=True)


if __name__ == "__main__":
    main()
