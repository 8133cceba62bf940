"""HTTP/2 through the real proxy is metered exactly like HTTP/1.1, and keeps no content.

The same calls (a chat completion, a streamed one, a streamed Anthropic message, a file upload
whose body is streamed without a length) go through the real mitmdump twice: from an httpx client
speaking HTTP/1.1, then from one negotiating h2 by ALPN, to a loopback provider that speaks both
(`tests.metering.h2server`), so mitmproxy speaks h2 on both sides. Each client tags its calls
(``X-Lantern-Team: h1`` / ``h2``); the records of the two runs must agree on every field but the
id, the times and that tag. Prompts, answers, header values, the upload and the API key carry
canaries that no file Lantern wrote may contain.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict

import httpx
import pytest

from agent.records import UsageRecord
from tests.metering.proxykit import (
    HOSTS,
    METER_TEST_MARKS,
    FakeProvider,
    Meter,
    Received,
    Reply,
    make_server_pki,
    remove_workdir,
    running_meter,
    shared_workdir,
)

pytestmark = METER_TEST_MARKS

C = {
    name: f"CANARY{name}{uuid.uuid4().hex}"
    for name in ("prompt", "answer", "stream", "claude", "header", "file", "filename")
}
API_KEY = "sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex
ANTHROPIC_KEY = "sk-ant-api03-" + uuid.uuid4().hex + uuid.uuid4().hex
CARD = "4111 1111 1111 1111"  # Luhn-valid test number: a finance.payment_card label
CANARIES = [*C.values(), API_KEY, ANTHROPIC_KEY]
MODEL = "gpt-4o-mini-2024-07-18"
CLAUDE = "claude-sonnet-4-5-20250929"

# A streamed answer's server waits after its first event until the client has that event, for
# up to 15 s; the client's read timeout is 10 s, so a proxy that held the stream back fails.
HOLD = {"HTTP/1.1": threading.Event(), "HTTP/2": threading.Event()}
READ_TIMEOUT = 10.0


def sse(events: list[dict[str, object]], named: bool = False) -> list[bytes]:
    out = []
    for ev in events:
        head = f"event: {ev['type']}\n".encode() if named and "type" in ev else b""
        out.append(head + b"data: " + json.dumps(ev).encode() + b"\n\n")
    return out


def route(req: Received) -> Reply:
    host = dict((k.lower(), v) for k, v in req.headers)["host"].split(":")[0]
    if host == "api.openai.com" and req.path == "/v1/chat/completions":
        if json.loads(req.body).get("stream"):
            events = [
                {
                    "object": "chat.completion.chunk",
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": C["stream"]}}],
                },
                {
                    "object": "chat.completion.chunk",
                    "model": MODEL,
                    "choices": [],
                    "usage": {"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40},
                },
            ]
            return Reply(
                headers=[("Content-Type", "text/event-stream")],
                chunks=[*sse(events), b"data: [DONE]\n\n"],
                chunked=True,
                hold_after_first=HOLD[req.protocol],
            )
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": C["answer"]}}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26},
        }
        return Reply(
            headers=[("Content-Type", "application/json")], chunks=[json.dumps(body).encode()]
        )
    if host == "api.openai.com" and req.path == "/v1/files":
        return Reply(
            headers=[("Content-Type", "application/json")],
            chunks=[json.dumps({"id": "file-1", "object": "file"}).encode()],
        )
    if host == "api.anthropic.com" and req.path == "/v1/messages":
        events = [
            {
                "type": "message_start",
                "message": {"model": CLAUDE, "usage": {"input_tokens": 44, "output_tokens": 1}},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": C["claude"]},
            },
            {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 17}},
            {"type": "message_stop"},
        ]
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=sse(events, named=True),
            chunked=True,
        )
    return Reply(status=404, chunks=[b"no route"])


Run = tuple[Meter, FakeProvider, dict[tuple[str, str, str, bool], UsageRecord], dict[str, set[str]]]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    work = shared_workdir()
    try:
        up = work / "upstream"
        up.mkdir()
        up.chmod(0o755)
        ca, cert, key = make_server_pki(up, HOSTS)
        alpn = ("h2", "http/1.1")
        with (
            FakeProvider(cert, key, route, alpn=alpn) as server,
            # eager, as in the product: mitmproxy learns the server's ALPN (h2) before it
            # answers the client (httpx offers http/1.1 first, h2 second)
            running_meter(server.port, ca, work, connection_strategy="eager") as m,
        ):
            versions = {"h1": exercise(m, "h1"), "h2": exercise(m, "h2")}
            m.supervisor.stop()  # flushes the addon's channel
            records = {}
            for r in m.spool.usage_records():
                team = dict(r.tags)["team"]
                records[(team, r.host, r.endpoint, r.streaming)] = r
            yield m, server, records, versions
    finally:
        remove_workdir(work)


def exercise(m: Meter, team: str) -> set[str]:
    """The four calls from one httpx client (one connection, kept alive); the HTTP versions
    the client saw."""
    seen: set[str] = set()
    timeout = httpx.Timeout(15.0, read=READ_TIMEOUT)
    common = {"X-Lantern-Team": team, "X-Canary": C["header"]}
    openai = {**common, "Authorization": f"Bearer {API_KEY}"}
    prompt = f"{C['prompt']} my card is {CARD}"
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    with httpx.Client(
        http2=team == "h2",  # h2 by ALPN (still HTTP/1.1 for the CONNECT to the proxy)
        proxy=m.proxy_url,
        verify=m.client_context(),
        timeout=timeout,
    ) as client:
        url = "https://api.openai.com/v1/chat/completions"
        r = client.post(url, json=chat, headers=openai)
        assert r.status_code == 200 and C["answer"] in r.text  # forwarded untouched
        seen.add(r.http_version)

        stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", url, json=stream, headers=openai) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line)
            assert C["stream"] in first  # before the server sent the rest
            HOLD["HTTP/2" if team == "h2" else "HTTP/1.1"].set()
            rest = "\n".join(lines)
            assert "[DONE]" in rest
            seen.add(r.http_version)

        msg = {
            "model": "claude-sonnet-4-5",
            "stream": True,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": C["prompt"]}],
        }
        r = client.post(
            "https://api.anthropic.com/v1/messages",
            json=msg,
            headers={**common, "x-api-key": ANTHROPIC_KEY},
        )
        assert r.status_code == 200 and C["claude"] in r.text
        seen.add(r.http_version)

        # A body streamed from a generator has no length: chunked over HTTP/1.1, and over
        # HTTP/2 nothing at all in the headers says that a body follows.
        boundary = "lanternboundary" + uuid.uuid4().hex
        text = f"{C['file']}\nInvoice paid with card {CARD}\n" * 20

        def upload() -> Iterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                f"assistants\r\n--{boundary}\r\nContent-Disposition: form-data; "
                f'name="file"; filename="{C["filename"]}.txt"\r\n'
                "Content-Type: text/plain\r\n\r\n"
            ).encode()
            yield text.encode()
            yield f"\r\n--{boundary}--\r\n".encode()

        r = client.post(
            "https://api.openai.com/v1/files",
            content=upload(),
            headers={**openai, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert r.status_code == 200, r.text[:200]
        seen.add(r.http_version)
        # Keep the connections open until the agent has the records: it finds the client's
        # process from the open socket, and its first price lookup loads genai-prices (~0.2 s).
        wait_for_records(m, 4 if team == "h1" else 8)
    return seen


def wait_for_records(m: Meter, n: int, timeout: float = 10.0) -> None:
    """Until the agent spooled ``n`` records (or the timeout: the tests then say what is
    missing)."""
    deadline = time.monotonic() + timeout
    while m.counters.snapshot().get("metering.usage.records", 0) < n:
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)


def test_h2_is_negotiated_on_both_sides_of_the_proxy(run: Run) -> None:
    _, server, _, versions = run
    assert versions == {"h1": {"HTTP/1.1"}, "h2": {"HTTP/2"}}
    by_protocol: dict[str, int] = {}
    for req in server.received:
        by_protocol[req.protocol] = by_protocol.get(req.protocol, 0) + 1
    assert by_protocol == {"HTTP/1.1": 4, "HTTP/2": 4}
    for req in server.received:
        names = {k.lower() for k, _ in req.headers}
        assert not any(n.startswith("x-lantern-") for n in names)
        assert "x-canary" in names


def test_h2_tokens_model_and_labels(run: Run) -> None:
    _, _, records, _ = run
    chat = records[("h2", "api.openai.com", "chat_completions", False)]
    assert (chat.provider, chat.model) == ("openai", MODEL)
    assert (chat.input_tokens, chat.output_tokens) == (21, 5)
    assert dict(chat.labels) == {"finance.payment_card": 1}
    assert chat.key_hint == f"sk-proj-...{API_KEY[-4:]}"
    assert chat.cost_usd is not None and chat.cost_usd > 0
    assert chat.status_code == 200 and chat.error is None

    streamed = records[("h2", "api.openai.com", "chat_completions", True)]
    assert (streamed.model, streamed.input_tokens, streamed.output_tokens) == (MODEL, 31, 9)

    claude = records[("h2", "api.anthropic.com", "messages", True)]
    assert (claude.provider, claude.model) == ("anthropic", CLAUDE)
    assert (claude.input_tokens, claude.output_tokens) == (44, 17)

    upload = records[("h2", "api.openai.com", "other", False)]
    assert dict(upload.labels)["finance.payment_card"] == 20
    ((kind, ext, count, size),) = upload.uploads
    assert (kind, ext, count) == ("text", "text", 1) and size > 1000


def test_h2_is_metered_exactly_like_http1(run: Run) -> None:
    _, _, records, _ = run
    keys = {team: sorted(k[1:] for k in records if k[0] == team) for team in ("h1", "h2")}
    assert keys["h1"] == keys["h2"] and len(keys["h2"]) == 4, sorted(records)
    volatile = ("id", "started", "ended", "tags")
    for key in keys["h2"]:
        h1 = asdict(records[("h1", *key)])
        h2 = asdict(records[("h2", *key)])
        assert h1["tags"] == (("team", "h1"),) and h2["tags"] == (("team", "h2"),)
        for name in volatile:
            del h1[name], h2[name]
        assert h2 == h1, key


def test_no_canary_in_anything_lantern_wrote(run: Run) -> None:
    m, _, records, _ = run
    files = m.written_files()
    assert "spool.db" in {p.name for p in files} and records
    needles = [c.encode() for c in CANARIES]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"canary found in {path}"
