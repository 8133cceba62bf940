"""Metering plumbing without the proxy: per-call metering, the channel, the receiver, the spool,
the CA, host rules and the supervisor's restart loop."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.attribution.processes import FakeProcessSource, RawProcess
from agent.attribution.sockets import FakeSocketTable, SocketOwner
from agent.counters import Counters
from agent.metering import ca as meter_ca
from agent.metering.channel import (
    CallStart,
    ChannelSender,
    ChannelServer,
    Message,
    MeteredCall,
    decode,
    encode,
)
from agent.metering.detect import Detectors
from agent.metering.encodings import BodyDecoder
from agent.metering.hosts import intercept_rules, should_intercept
from agent.metering.meter import CallMeter
from agent.metering.usage import ClientResolver, UsageReceiver
from agent.records import UsageRecord
from agent.spool import Spool
from signatures.matcher import Matcher
from tests.metering.meterkit import data
from tests.records import make_usage_record

CLIENT = ("127.0.0.1", 40001)
PROXY = ("127.0.0.1", 8118)


def chat_meter(detectors: Detectors | None = None, **headers: str) -> CallMeter:
    meter = CallMeter.start(
        "https://api.openai.com/v1/chat/completions",
        "api.openai.com",
        {"authorization": "Bearer sk-proj-abcdefghijklmnopqrstuvwxyz", **headers},
        detectors=detectors or Detectors(),
        key_secret=b"secret",
        client=CLIENT,
        dst=PROXY,
    )
    assert meter is not None
    return meter


# ------------------------------------------------------------------ CallMeter


def test_call_meter_reads_gzip_bodies_chunk_by_chunk_and_labels_the_request() -> None:
    meter = chat_meter(**{"content-type": "application/json"})
    request = (
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"card 4111 1111 1111 1111"}]}'
    )
    for i in range(0, len(request), 7):
        meter.request_chunk(request[i : i + 7])
    body = gzip.compress(data("openai_chat.json"))
    meter.response_headers("gzip")
    for i in range(0, len(body), 5):
        meter.response_chunk(body[i : i + 5])
    call = meter.finish({"content-type": "application/json"}, 200)
    assert call is not None and call.error is None
    assert call.usage.input_tokens is not None and call.usage.output_tokens is not None
    assert call.usage.key_hint == "sk-proj-...wxyz"
    assert call.labels is not None and call.labels.as_dict() == {"finance.payment_card": 1}
    assert (call.bytes_up, call.bytes_down) == (len(request), len(body))


def test_call_meter_reports_a_bad_body_by_error_kind_only() -> None:
    meter = chat_meter()
    meter.response_headers(None)
    meter.response_chunk(b"<html>CANARY not json</html>")
    call = meter.finish({}, 200)
    assert call is not None and call.error == "MalformedBodyError"
    assert call.usage.input_tokens is None and "CANARY" not in encode(call).decode()


def test_unknown_paths_are_reported_only_when_they_carry_labels_or_files() -> None:
    def upload(body: bytes) -> MeteredCall | None:
        meter = CallMeter.start(
            "https://api.openai.com/v1/files",
            "api.openai.com",
            {"content-type": "text/plain", "content-length": str(len(body))},
            detectors=Detectors(),
            key_secret=None,
            client=CLIENT,
            dst=PROXY,
            provider="openai",
        )
        assert meter is not None and not meter.metered
        meter.request_chunk(body)
        return meter.finish({}, 200)

    assert upload(b"nothing sensitive here") is None
    call = upload(b"pay with 4111 1111 1111 1111")
    assert call is not None
    assert (call.usage.provider, call.usage.endpoint) == ("openai", "other")


def test_label_only_calls_keep_the_requests_tags() -> None:
    meter = CallMeter.start(
        "https://api.openai.com/v1/files",
        "api.openai.com",
        {"content-type": "text/plain", "content-length": "28", "x-lantern-team": "payments"},
        detectors=Detectors(),
        key_secret=None,
        client=CLIENT,
        dst=PROXY,
        provider="openai",
    )
    assert meter is not None and not meter.metered
    meter.request_chunk(b"pay with 4111 1111 1111 1111")
    call = meter.finish({}, 200)
    assert call is not None and call.usage.tags == (("team", "payments"),)


@pytest.mark.parametrize(
    ("method", "version", "headers", "scanned"),
    [
        ("POST", "HTTP/2.0", {}, True),  # h2 frames the body: no length needed
        ("PUT", "HTTP/3", {}, True),
        ("GET", "HTTP/2.0", {}, False),
        ("POST", "HTTP/2.0", {"content-length": "0"}, False),
        ("POST", "HTTP/1.1", {}, False),  # HTTP/1.1 without length or chunking has no body
        ("POST", "HTTP/1.1", {"transfer-encoding": "chunked"}, True),
        ("POST", "HTTP/1.1", {"content-length": "12"}, True),
    ],
)
def test_a_body_without_a_length_is_scanned_when_the_protocol_frames_it(
    method: str, version: str, headers: dict[str, str], scanned: bool
) -> None:
    meter = CallMeter.start(
        "https://api.openai.com/v1/files",
        "api.openai.com",
        {"content-type": "text/plain", **headers},
        detectors=Detectors(),
        key_secret=None,
        client=CLIENT,
        dst=PROXY,
        provider="openai",
        method=method,
        http_version=version,
    )
    assert (meter is not None) is scanned


def test_body_decoder_undoes_stacked_encodings() -> None:
    plain = b"x" * 10_000
    packed = gzip.compress(gzip.compress(plain))
    dec = BodyDecoder("gzip, gzip")
    out = b"".join(dec.feed(packed[i : i + 100]) for i in range(0, len(packed), 100))
    assert out + dec.flush() == plain


# ------------------------------------------------------------------ hosts


def test_intercept_rules_allow_catalog_hosts_and_ignore_pinned(matcher: Matcher) -> None:
    import re

    (allow,), (ignore,) = intercept_rules(matcher)
    assert re.search(allow, "api.openai.com:443", re.I)
    assert re.search(allow, "eu.api.openai.com:443", re.I)
    assert not re.search(allow, "example.com:443", re.I)
    assert not re.search(allow, "notopenai.com:443", re.I)
    assert re.search(ignore, "ios.chat.openai.com:443", re.I)
    assert not re.search(ignore, "api.openai.com:443", re.I)
    assert should_intercept(matcher, "api.openai.com")
    assert not should_intercept(matcher, "ios.chat.openai.com")
    assert not should_intercept(matcher, "example.com")


# ------------------------------------------------------------------ channel and receiver


def test_messages_survive_the_wire() -> None:
    meter = chat_meter()
    meter.response_headers(None)
    meter.response_chunk(data("openai_chat.json"))
    call = meter.finish({}, 200)
    assert call is not None
    for msg in (call, meter.start_message()):
        assert decode(encode(msg)) == msg
    with pytest.raises(ValueError):
        decode(b'{"t": "nope"}')


def _receiver(tmp_path: Path, got: list[UsageRecord], **kw: Any) -> UsageReceiver:
    sockets = FakeSocketTable()
    sockets.add("tcp", *CLIENT, *PROXY, SocketOwner(uid=1000, inode=None, pid=4242))
    procs = FakeProcessSource(RawProcess(4242, "python3", "/usr/bin/python3", 1000, 1, 1.0, "bob"))
    counters = Counters()
    resolver = ClientResolver(Matcher.from_catalog(), counters, sockets=sockets, processes=procs)
    return UsageReceiver(
        tmp_path / "usage.sock",
        os.geteuid(),
        got.append,
        device="dev1",
        resolver=resolver,
        counters=counters,
        **kw,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="SO_PEERCRED")
def test_receiver_attributes_prices_and_hands_on_records(tmp_path: Path) -> None:
    got: list[UsageRecord] = []
    meter = chat_meter()
    meter.response_headers(None)
    meter.response_chunk(data("openai_chat.json"))
    call = meter.finish({}, 200)
    assert call is not None
    with _receiver(tmp_path, got) as receiver:
        sender = ChannelSender(receiver.server.path)
        sender.send(meter.start_message())
        sender.send(call)
        sender.close()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    (rec,) = got
    assert (rec.user, rec.process_name, rec.device) == ("bob", "python3", "dev1")
    assert rec.service_id == "openai-api" and rec.id == call.id
    assert rec.cost_usd is not None and rec.cost_usd > 0


@pytest.mark.skipif(sys.platform != "linux", reason="SO_PEERCRED")
def test_channel_refuses_other_uids_and_skips_garbage(tmp_path: Path) -> None:
    got: list[Message] = []
    counters = Counters()
    path = tmp_path / "c.sock"
    with (
        ChannelServer(path, os.geteuid() + 1, got.append, counters=counters),
        socket.socket(socket.AF_UNIX) as s,
    ):
        s.connect(str(path))
        with contextlib.suppress(OSError):
            s.sendall(encode(CallStart("x", CLIENT, PROXY)))
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""  # closed on us
    assert got == [] and counters.get("metering.channel.refused_peer") == 1
    with ChannelServer(path, os.geteuid(), got.append, counters=counters):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"not json\n" + encode(CallStart("y", CLIENT, PROXY)))
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    assert got == [CallStart("y", CLIENT, PROXY)]
    assert counters.get("metering.channel.malformed") == 1


# ------------------------------------------------------------------ spool


def test_spool_keeps_usage_until_acked(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        rec = make_usage_record()
        spool.put_usage(rec)
        spool.put_usage(rec)  # a repeat is ignored
        assert spool.usage_records() == [rec]
        batch = spool.next_batch()
        assert batch is not None
        assert [(e.kind, e.usage) for e in batch.events] == [("usage", rec)]
        assert spool.next_batch() is None  # leased
        spool.release(batch.id)
        batch = spool.next_batch()
        assert batch is not None
        spool.ack(batch.id)
        assert spool.usage_records() == [] and spool.stats().usage_rows == 0


def test_spool_bounds_usage_rows(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db", max_rows=2) as spool:
        for i in range(3):
            spool.put_usage(make_usage_record(id=f"u{i}"))
        assert [r.id for r in spool.usage_records()] == ["u1", "u2"]
        assert spool.stats().usage_dropped == 1


# ------------------------------------------------------------------ CA


def test_ca_is_made_once_with_a_private_key_and_exported(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    ca = meter_ca.ensure_ca(conf)
    again = meter_ca.ensure_ca(conf)
    assert again.fingerprint_sha256 == ca.fingerprint_sha256
    assert stat.S_IMODE(ca.key_and_cert.stat().st_mode) == 0o600
    assert stat.S_IMODE(conf.stat().st_mode) == 0o700
    assert sorted(p.name for p in conf.iterdir()) == ["mitmproxy-ca-cert.pem", "mitmproxy-ca.pem"]
    pem, der = meter_ca.export_certificate(ca, tmp_path / "out")
    cert = x509.load_der_x509_certificate(der.read_bytes())
    assert cert == x509.load_pem_x509_certificate(pem.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert b"PRIVATE KEY" not in pem.read_bytes() + der.read_bytes()


# ------------------------------------------------------------------ supervisor


def test_supervisor_restarts_with_backoff_and_stops() -> None:
    from agent.metering import supervisor as sup
    from tests.metering.proxykit import remove_workdir, shared_workdir

    tmp_path = shared_workdir()  # the unprivileged user must reach the fake proxy
    try:
        _restarts(tmp_path, sup)
    finally:
        remove_workdir(tmp_path)


def _restarts(tmp_path: Path, sup: Any) -> None:
    from tests.metering.proxykit import metering_options

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "mitmdump").write_text("#!/bin/sh\nexit 1\n")  # proof mitmproxy is there
    fake = venv / "bin" / "python"  # the proxy runs as `python -I -m agent.metering.proxy`
    fake.write_text('#!/bin/sh\necho started >> "$HOME/runs"\nsleep 0.2\nexit 3\n')
    fake.chmod(0o755)
    options = metering_options(tmp_path, {"metering.venv": str(venv)})
    (tmp_path / "state").mkdir()
    counters = Counters()
    s = sup.MeteringSupervisor(options, counters, min_backoff=0.05, max_backoff=0.2)
    s.start()
    deadline = time.monotonic() + 10
    while s.health().restarts < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    s.stop()
    h = s.health()
    assert h.restarts >= 3 and h.state == "stopped" and h.last_exit in (3, -15)
    assert counters.get("metering.process.exited") >= 3
    runs = (tmp_path / "meter" / "runs").read_text().splitlines()
    assert 3 <= len(runs) <= counters.get("metering.process.started")  # the last may be cut short
    assert json.dumps(h.listen) == '["127.0.0.1", 8118]'


@pytest.mark.parametrize(
    ("mode", "host", "listen"),
    [
        ("transparent", "127.0.0.1", ["transparent@127.0.0.1:8118", "transparent@::1:8118"]),
        ("transparent", "10.0.0.1", ["transparent@10.0.0.1:8118"]),
        ("regular", "127.0.0.1", ["regular"]),
    ],
)
def test_a_transparent_proxy_listens_where_redirect_delivers(
    mode: str, host: str, listen: list[str]
) -> None:
    """REDIRECT sends IPv4 to 127.0.0.1 and IPv6 to ::1: a transparent proxy on the default
    loopback listens on both (where this host has ::1)."""
    from agent import state
    from agent.metering import supervisor as sup
    from agent.options import Options

    options = Options()
    state.declare_options(options)
    sup.declare_options(options)
    options.set("metering.mode", mode, "test")
    options.set("metering.listen_host", host, "test")
    options.set("metering.user", "nobody", "test")
    cmd = sup.MeteringSupervisor(options, Counters()).command()
    modes = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--mode"]
    if not sup.ipv6_loopback():
        listen = [m for m in listen if "::1" not in m]
    assert modes == listen
    assert ("--listen-host" in cmd) is (mode == "regular")
