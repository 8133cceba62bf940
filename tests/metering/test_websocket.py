"""WebSockets through the real proxy: relayed unchanged both ways, metered where a web app chats
over one, and no message content in anything Lantern wrote.

A loopback TLS WebSocket server answers for two catalog hosts: ``copilot.microsoft.com`` plays
Copilot's chat socket (JSON events; Lantern records an *estimated* usage record from the text
sizes, as for the web apps' HTTP streams), ``api.openai.com`` echoes whatever it gets (no
metered route: nothing may be recorded). Clients (the `websockets` library) go through the real
mitmdump, trusting only the device's metering CA. Messages carry canaries, a card number and
random binary data; compression (permessage-deflate) is on, as browsers negotiate it.
"""

from __future__ import annotations

import json
import math
import os
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

from agent.records import UsageRecord
from tests.metering.proxykit import (
    METER_TEST_MARKS,
    Meter,
    make_server_pki,
    meter_venv,
    remove_workdir,
    running_meter,
    shared_workdir,
)

pytestmark = METER_TEST_MARKS

C = {name: f"CANARY{name}{uuid.uuid4().hex}" for name in ("prompt", "answer", "echo", "header")}
BINARY = os.urandom(48_000) + C["echo"].encode()  # also crosses several 4 KB fragments
CARD = "4111 1111 1111 1111"
PROMPT = f"{C['prompt']} my card is {CARD}"
ANSWER = [f"{C['answer']} Mount Everest", " is 8,849 metres tall."]
COPILOT_URL = "wss://copilot.microsoft.com/c/api/chat?api-version=2"
REALTIME_URL = "wss://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview"
HOSTS = ("copilot.microsoft.com", "api.openai.com")
HOOKS = Path(__file__).with_name("addon_ws_hooks.py")


def copilot_client_messages() -> list[str]:
    return [
        json.dumps({"event": "setOptions", "supportedCards": ["weather"], "ads": None}),
        json.dumps(
            {
                "event": "send",
                "conversationId": "c1",
                "content": [{"type": "text", "text": PROMPT}],
                "mode": "chat",
            }
        ),
    ]


def copilot_server_messages() -> list[str]:
    events: list[dict[str, object]] = [
        {"event": "received", "id": "0"},
        {"event": "startMessage", "messageId": "m1"},
    ]
    events += [{"event": "appendText", "messageId": "m1", "text": t} for t in ANSWER]
    events += [{"event": "partCompleted", "messageId": "m1"}, {"event": "done", "messageId": "m1"}]
    return [json.dumps(e) for e in events]


@dataclass
class WsServer:
    """What the server got, per (host, path)."""

    server: Server
    port: int
    got: dict[str, list[str | bytes]] = field(default_factory=dict)


def handler(store: dict[str, list[str | bytes]]) -> object:
    def handle(conn: ServerConnection) -> None:
        assert conn.request is not None
        host = conn.request.headers["Host"].split(":")[0]
        got = store.setdefault(f"{host}{conn.request.path}", [])
        for message in conn:
            got.append(message)
            if host == "copilot.microsoft.com":
                if json.loads(message)["event"] == "send":
                    for reply in copilot_server_messages():
                        conn.send(reply)
            else:
                conn.send(message)  # echo, unchanged

    return handle


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[Meter, WsServer, dict[str, UsageRecord]]]:
    work = shared_workdir()
    try:
        up = work / "upstream"
        up.mkdir()
        up.chmod(0o755)
        ca, cert, key = make_server_pki(up, HOSTS)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        store: dict[str, list[str | bytes]] = {}
        with serve(handler(store), "127.0.0.1", 0, ssl=ctx) as server:  # type: ignore[arg-type]
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            ws = WsServer(server, int(server.socket.getsockname()[1]), store)
            try:
                with running_meter(ws.port, ca, work) as m:
                    exercise(m)
                    m.supervisor.stop()  # flushes the addon's channel
                    records = {r.host: r for r in m.spool.usage_records()}
                    yield m, ws, records
            finally:
                server.shutdown()
                thread.join(10)
    finally:
        remove_workdir(work)


def exercise(m: Meter) -> None:
    headers = {"X-Canary": C["header"], "X-Lantern-Team": "support"}
    with connect(
        COPILOT_URL, proxy=m.proxy_url, ssl=m.client_context(), additional_headers=headers
    ) as ws:
        for message in copilot_client_messages():
            ws.send(message)
        replies = [ws.recv(timeout=10) for _ in copilot_server_messages()]
        assert replies == copilot_server_messages()  # forwarded one by one, unchanged
        wait_for_start(m)

    with connect(
        REALTIME_URL, proxy=m.proxy_url, ssl=m.client_context(), additional_headers=headers
    ) as ws:
        # Each echo must come back before the next message is sent: a proxy that held
        # messages back would time out here.
        ws.send(C["echo"])
        assert ws.recv(timeout=10) == C["echo"]
        ws.send(BINARY)
        assert ws.recv(timeout=10) == BINARY
        ws.send([b"fragmented ", b"in three ", C["echo"].encode()])
        assert ws.recv(timeout=10) == b"fragmented in three " + C["echo"].encode()


def wait_for_start(m: Meter, timeout: float = 10.0) -> None:
    """Until the agent has attributed the socket's start (the client's process is found from
    its open socket; the record itself comes when the socket closes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = m.counters.snapshot()
        if snap.get("attribution.cache_hit", 0) + snap.get("attribution.cache_miss", 0):
            return
        time.sleep(0.05)


def test_messages_flow_both_ways_unchanged(
    run: tuple[Meter, WsServer, dict[str, UsageRecord]],
) -> None:
    _, ws, _ = run
    assert ws.got["copilot.microsoft.com/c/api/chat?api-version=2"] == copilot_client_messages()
    assert ws.got["api.openai.com/v1/realtime?model=gpt-4o-realtime-preview"] == [
        C["echo"],
        BINARY,
        b"fragmented in three " + C["echo"].encode(),
    ]


def test_a_copilot_socket_gets_an_estimated_record(
    run: tuple[Meter, WsServer, dict[str, UsageRecord]],
) -> None:
    _, _, records = run
    r = records["copilot.microsoft.com"]
    assert (r.provider, r.endpoint, r.operation) == ("microsoft.copilot", "copilot.web", "chat")
    assert r.estimated is True and r.streaming is True and r.cost_usd is None
    # about four bytes of text per token, text from the apps' "text" keys only
    assert r.input_tokens == math.ceil(len(PROMPT.encode()) / 4)
    assert r.output_tokens == math.ceil(sum(len(t.encode()) for t in ANSWER) / 4)
    assert (r.bytes_up, r.bytes_down) == (
        sum(len(s.encode()) for s in copilot_client_messages()),
        sum(len(s.encode()) for s in copilot_server_messages()),
    )
    assert dict(r.labels) == {"finance.payment_card": 1} and r.data_class == "restricted"
    assert r.status_code == 101 and r.error is None
    assert r.tags == (("team", "support"),)
    me = psutil.Process()
    assert (r.process_name, r.process_exe) == (me.name(), me.exe())


def test_an_unmetered_socket_leaves_no_record(
    run: tuple[Meter, WsServer, dict[str, UsageRecord]],
) -> None:
    _, _, records = run
    assert sorted(records) == ["copilot.microsoft.com"]


def test_no_message_content_in_anything_lantern_wrote(
    run: tuple[Meter, WsServer, dict[str, UsageRecord]],
) -> None:
    m, _, records = run
    files = m.written_files()
    assert "spool.db" in {p.name for p in files} and records
    needles = [c.encode() for c in C.values()] + [BINARY[:32], CARD.encode()]
    for path in files:
        data = Path(path).read_bytes()
        for needle in needles:
            assert needle not in data, f"message content found in {path}"


@pytest.mark.parametrize(
    ("host", "path", "metered"),
    [
        ("copilot.microsoft.com", "/c/api/chat?api-version=2", True),
        ("api.openai.com", "/v1/realtime?model=gpt-4o-realtime-preview", False),
    ],
)
def test_the_addon_holds_no_old_messages(host: str, path: str, metered: bool) -> None:
    """mitmproxy would keep every message of a socket for its lifetime; the addon leaves only
    the one being relayed (1000 messages through the hooks, in mitmproxy's environment)."""
    out = subprocess.run(
        [str(meter_venv() / "bin" / "python"), str(HOOKS), host, path, "1000"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert (got["kept_at_most"], got["kept_at_end"], got["open_sockets"]) == (1, 0, 0)
    if not metered:
        assert got["calls"] == []
        return
    # 500 client messages with 40 bytes of text, 500 server events with 80: ~4 bytes a token
    (call,) = got["calls"]
    assert call["endpoint"] == "copilot.web" and call["estimated"] is True
    assert (call["input_tokens"], call["output_tokens"]) == (500 * 40 // 4, 500 * 80 // 4)
    assert call["error"] is None and call["bytes_up"] > 500 * 40
