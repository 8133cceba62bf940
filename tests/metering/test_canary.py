"""DESIGN.md invariant 1, end to end: no content Lantern sees through the real proxy is kept.

Real mitmdump (from the metering environment, as an unprivileged user when root) meters real
HTTPS calls from ``http.client`` to a loopback server that answers for catalog hostnames in each
provider's format. Prompts, answers, uploaded files, header values and the API key carry unique
canary strings. Afterwards every byte Lantern wrote (spool database with its -wal/-shm, the
metering log, mitmproxy's confdir, the exported CA, the key secret, anything else under the
state, runtime and metering directories) is searched: no canary may appear. The usage records
must be there, with the right counts, labels and key hint.

The records then go over the real wire (mutual TLS) to a real collector, and its whole data
directory (the SQLite database with its WAL) is searched the same way.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent.records import UsageRecord
from tests.metering import meterkit
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


def canary(tag: str) -> str:
    return f"CANARY{tag}{uuid.uuid4().hex}"


API_KEY = "sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex  # the Authorization key itself
ANTHROPIC_KEY = "sk-ant-api03-" + uuid.uuid4().hex + uuid.uuid4().hex
GOOGLE_KEY = "AIza" + uuid.uuid4().hex[:35]
CARD = "4111 1111 1111 1111"  # Luhn-valid test Visa number: a finance.payment_card label
LEAKED_KEY = "sk-proj-" + uuid.uuid4().hex + "T3BlbkFJ" + uuid.uuid4().hex  # pasted in a prompt

C = {
    name: canary(name)
    for name in (
        "prompt",
        "answer",
        "stream",
        "anthropic_prompt",
        "anthropic_answer",
        "gemini_prompt",
        "gemini_answer",
        "bedrock_prompt",
        "upload_file",
        "upload_name",
        "header",
        "response_header",
        "cookie",
    )
}
CANARIES = [*C.values(), API_KEY, ANTHROPIC_KEY, GOOGLE_KEY, LEAKED_KEY]


def sse(events: list[dict[str, object]], named: bool = False) -> list[bytes]:
    out = []
    for ev in events:
        head = f"event: {ev['type']}\n".encode() if named else b""
        out.append(head + b"data: " + json.dumps(ev).encode() + b"\n\n")
    return out


HOLD = threading.Event()  # the streaming reply waits for the client to have its first event


def route(req: Received) -> Reply:
    host = dict((k.lower(), v) for k, v in req.headers)["host"].split(":")[0]
    cookie_header = [("Set-Cookie", f"session={C['response_header']}")]
    if host == "api.openai.com" and req.path == "/v1/chat/completions":
        if b'"stream": true' in req.body:
            chunks = [
                *sse(
                    [
                        {
                            "object": "chat.completion.chunk",
                            "model": "gpt-4o-mini-2024-07-18",
                            "choices": [{"index": 0, "delta": {"content": C["stream"]}}],
                        },
                        {
                            "object": "chat.completion.chunk",
                            "model": "gpt-4o-mini-2024-07-18",
                            "choices": [],
                            "usage": {
                                "prompt_tokens": 31,
                                "completion_tokens": 9,
                                "total_tokens": 40,
                            },
                        },
                    ]
                ),
                b"data: [DONE]\n\n",
            ]
            return Reply(
                headers=[("Content-Type", "text/event-stream"), *cookie_header],
                chunks=chunks,
                chunked=True,
                hold_after_first=HOLD,
            )
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": C["answer"]}}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 5, "total_tokens": 26},
        }
        return Reply(
            headers=[("Content-Type", "application/json"), *cookie_header],
            chunks=[json.dumps(body).encode()],
        )
    if host == "api.openai.com" and req.path == "/v1/files":
        return Reply(
            headers=[("Content-Type", "application/json")],
            chunks=[json.dumps({"id": "file-1", "filename": C["upload_name"]}).encode()],
        )
    if host == "api.anthropic.com":
        events = [
            {
                "type": "message_start",
                "message": {
                    "model": "claude-sonnet-4-5-20250929",
                    "usage": {"input_tokens": 44, "output_tokens": 1},
                },
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": C["anthropic_answer"]},
            },
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 17},
            },
            {"type": "message_stop"},
        ]
        return Reply(
            headers=[("Content-Type", "text/event-stream")],
            chunks=sse(events, named=True),
            chunked=True,
        )
    if host == "generativelanguage.googleapis.com":
        body = {
            "candidates": [{"content": {"parts": [{"text": C["gemini_answer"]}]}}],
            "usageMetadata": {
                "promptTokenCount": 12,
                "candidatesTokenCount": 3,
                "totalTokenCount": 15,
            },
            "modelVersion": "gemini-2.5-flash",
        }
        return Reply(
            headers=[("Content-Type", "application/json")], chunks=[json.dumps(body).encode()]
        )
    if host.startswith("bedrock-runtime."):
        return Reply(
            headers=[("Content-Type", "application/vnd.amazon.eventstream")],
            chunks=[meterkit.converse_stream_body()],
            chunked=True,
        )
    return Reply(status=404, chunks=[b"no route"])


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[Meter, FakeProvider, dict[str, UsageRecord]]]:
    work = shared_workdir()
    try:
        up = work / "upstream"
        up.mkdir()
        up.chmod(0o755)
        ca, cert, key = make_server_pki(up, HOSTS)
        with FakeProvider(cert, key, route) as server, running_meter(server.port, ca, work) as m:
            records = exercise(m)
            yield m, server, records
    finally:
        remove_workdir(work)


def post(m: Meter, host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    conn = m.connect(host)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data[:200]
        # The agent finds the client's process from its socket while the call is reported; a
        # client that hangs up within microseconds can be gone by then (a known limit, counted
        # as attribution.no_socket). Real clients keep connections alive for reuse.
        time.sleep(0.2)
        return data
    finally:
        conn.close()


def exercise(m: Meter) -> dict[str, UsageRecord]:
    common = {
        "X-Lantern-Team": "payments",
        "X-Canary": C["header"],
        "Cookie": f"sid={C['cookie']}",
    }
    openai = {**common, "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    prompt = f"{C['prompt']} my card is {CARD} and my key is {LEAKED_KEY}"
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    got = post(m, "api.openai.com", "/v1/chat/completions", json.dumps(chat).encode(), openai)
    assert C["answer"].encode() in got  # the proxy forwards content untouched

    # Streaming: the server holds its second event until the client has the first (for up to
    # 15 s), so a proxy that buffered the response would stall here and the client's 10 s read
    # timeout would fail the test.
    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    conn = m.connect("api.openai.com", timeout=10.0)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(stream, separators=(", ", ": ")).encode(),
        headers=openai,
    )
    resp = conn.getresponse()
    first = resp.readline()
    assert C["stream"].encode() in first
    HOLD.set()
    rest = resp.read()
    assert b"[DONE]" in rest
    conn.close()

    anthropic = {**common, "x-api-key": ANTHROPIC_KEY, "Content-Type": "application/json"}
    msg = {
        "model": "claude-sonnet-4-5",
        "stream": True,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": C["anthropic_prompt"]}],
    }
    post(m, "api.anthropic.com", "/v1/messages", json.dumps(msg).encode(), anthropic)

    gemini = {**common, "x-goog-api-key": GOOGLE_KEY, "Content-Type": "application/json"}
    gen = {"contents": [{"parts": [{"text": C["gemini_prompt"]}]}]}
    post(
        m,
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        json.dumps(gen).encode(),
        gemini,
    )

    bedrock = {**common, "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    conv = {"messages": [{"role": "user", "content": [{"text": C["bedrock_prompt"]}]}]}
    post(
        m,
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse-stream",
        json.dumps(conv).encode(),
        bedrock,
    )

    boundary = "lanternboundary" + uuid.uuid4().hex
    file_text = f"{C['upload_file']}\nInvoice paid with card {CARD}\n" * 20
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nassistants\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{C["upload_name"]}.txt"\r\nContent-Type: text/plain\r\n\r\n'
        f"{file_text}\r\n--{boundary}--\r\n"
    ).encode()
    upload = {
        **common,
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    post(m, "api.openai.com", "/v1/files", multipart, upload)

    m.supervisor.stop()  # flushes the addon's channel; the receiver then has every record
    records: dict[str, UsageRecord] = {}
    for r in m.spool.usage_records():
        key = f"{r.host}:{r.endpoint}:{r.streaming}"
        records[key] = r
    return records


def test_every_call_is_metered(run: tuple[Meter, FakeProvider, dict[str, UsageRecord]]) -> None:
    _, _, records = run
    assert sorted(records) == sorted(
        [
            "api.openai.com:chat_completions:False",
            "api.openai.com:chat_completions:True",
            "api.anthropic.com:messages:True",
            "generativelanguage.googleapis.com:generateContent:False",
            "bedrock-runtime.us-east-1.amazonaws.com:converse-stream:True",
            "api.openai.com:other:False",
        ]
    ), records


def test_usage_numbers_labels_and_key_hint(
    run: tuple[Meter, FakeProvider, dict[str, UsageRecord]],
) -> None:
    _, _, records = run
    chat = records["api.openai.com:chat_completions:False"]
    assert (chat.provider, chat.model) == ("openai", "gpt-4o-mini-2024-07-18")
    assert (chat.input_tokens, chat.output_tokens) == (21, 5)
    assert chat.key_hint == f"sk-proj-...{API_KEY[-4:]}"
    assert chat.key_fingerprint is not None and len(chat.key_fingerprint) == 64
    assert dict(chat.labels) == {"finance.payment_card": 1, "secret.openai_api_key": 1}
    assert chat.data_class == "restricted"
    assert chat.tags == (("team", "payments"),)
    assert chat.cost_usd is not None and chat.cost_usd > 0
    assert chat.status_code == 200 and chat.error is None
    # The client socket belongs to this very process: attribution must say so.
    me = psutil.Process()
    assert chat.user == pwd.getpwuid(os.geteuid()).pw_name
    assert (chat.process_name, chat.process_exe) == (me.name(), me.exe())

    streamed = records["api.openai.com:chat_completions:True"]
    assert (streamed.input_tokens, streamed.output_tokens) == (31, 9)
    assert streamed.key_fingerprint == chat.key_fingerprint

    anthropic = records["api.anthropic.com:messages:True"]
    assert (anthropic.input_tokens, anthropic.output_tokens) == (44, 17)
    assert anthropic.key_hint == f"sk-ant-...{ANTHROPIC_KEY[-4:]}"

    gemini = records["generativelanguage.googleapis.com:generateContent:False"]
    assert (gemini.input_tokens, gemini.output_tokens) == (12, 3)

    bedrock = records["bedrock-runtime.us-east-1.amazonaws.com:converse-stream:True"]
    assert (bedrock.input_tokens, bedrock.output_tokens) == (30 + 2048, 628)

    upload = records["api.openai.com:other:False"]
    assert upload.provider == "openai" and upload.input_tokens is None
    assert dict(upload.labels)["finance.payment_card"] == 20
    ((kind, ext, count, size),) = upload.uploads
    assert (kind, ext, count) == ("text", "text", 1) and size > 1000


def test_attribution_headers_are_stripped_and_content_forwarded(
    run: tuple[Meter, FakeProvider, dict[str, UsageRecord]],
) -> None:
    _, server, _ = run
    assert len(server.received) == 6
    for req in server.received:
        names = {k.lower() for k, _ in req.headers}
        assert not any(n.startswith("x-lantern-") for n in names)
        assert "x-canary" in names  # other headers pass untouched
    assert C["prompt"].encode() in server.received[0].body


def test_no_canary_in_anything_lantern_wrote(
    run: tuple[Meter, FakeProvider, dict[str, UsageRecord]],
) -> None:
    m, _, records = run
    files = m.written_files()
    names = {p.name for p in files}
    assert "spool.db" in names and "mitmproxy.log" in names and "mitmproxy-ca.pem" in names
    assert records  # the search below is meaningful only if something was written
    confdir = m.supervisor.paths.confdir
    assert {p.name for p in confdir.iterdir()} <= {
        "mitmproxy-ca.pem",
        "mitmproxy-ca-cert.pem",
        "mitmproxy-dhparam.pem",
    }
    needles = [c.encode() for c in CANARIES]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"canary found in {path}"


def test_the_metering_process_is_unprivileged(
    run: tuple[Meter, FakeProvider, dict[str, UsageRecord]],
) -> None:
    m, _, _ = run
    if os.geteuid() != 0:
        pytest.skip("runs as the agent's own user when the agent is not root")
    assert m.supervisor.owner is not None and m.supervisor.owner[0] != 0
    key = m.supervisor.paths.confdir / "mitmproxy-ca.pem"
    st = key.stat()
    assert st.st_mode & 0o777 == 0o600 and st.st_uid == m.supervisor.owner[0]
    assert Path(m.supervisor.paths.dir).stat().st_mode & 0o777 == 0o700


def test_no_canary_in_the_collector_database(
    run: tuple[Meter, FakeProvider, dict[str, UsageRecord]], tmp_path: Path
) -> None:
    """The records go on to a real collector (mutual TLS, its SQLite store); every byte of its
    data directory is searched for the canaries too, and the usage rows must be there."""
    from agent.transport import AgentInfo, Heartbeat, Submission, to_wire
    from collector import testing
    from collector.api import lantern_pb2_grpc as pb_grpc

    m, _, records = run
    info = AgentInfo("canary-host", "linux", "6.1", "0.1.0", "endpoint")
    sent = 0
    with testing.running_collector(tmp_path) as c:
        agent = testing.enroll_agent(c, c.create_token("1h", uses=1), hostname="canary-host")
        with agent.ingest_channel() as channel:
            stub = pb_grpc.IngestStub(channel)
            while (batch := m.spool.next_batch(200)) is not None:
                hb = Heartbeat(info, time.time(), {}, "ok", 0, 0)
                stub.Submit(to_wire(Submission(batch.id, batch.events, hb)), timeout=15)
                m.spool.ack(batch.id)
                sent += sum(1 for e in batch.events if e.usage is not None)
        assert c.stop() == 0
        data_dir = c.data_dir
        assert sent >= len(records)
        con = sqlite3.connect(c.db_path)
        try:
            (stored,) = con.execute("SELECT count(*) FROM usage").fetchone()
        finally:
            con.close()
        assert stored == sent
        files = [p for p in data_dir.rglob("*") if p.is_file()]
        assert any(p.name.startswith("collector.db") for p in files)
        needles = [cn.encode() for cn in CANARIES]
        for path in files:
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"canary found in {path}"
