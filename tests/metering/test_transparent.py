"""Transparent mode for real: iptables REDIRECT in a network namespace, SO_ORIGINAL_DST and SNI.

Two namespaces (`tests.netns`): the workstation runs the metering stack in transparent mode
(`netns_meter.py`: the real supervisor, mitmdump as the unprivileged metering user, the agent's
receiver and spool) behind exactly the two iptables rules the README gives, and a client
(`netns_client.py`, as a throwaway OS user) that knows nothing of a proxy: it resolves
api.openai.com, api.anthropic.com (IPv6) and example.org through the namespace's /etc/hosts and
connects to their addresses on port 443, trusting the device's metering CA and the site's own CA
(not the provider's). The peer namespace (`netns_provider.py`) serves the provider in OpenAI's
and Anthropic's formats and the ordinary site.

Catalog calls must be intercepted (the client sees a certificate from the device CA) and metered
with the right model and tokens, attributed to the client's user and process; the site's TLS
must pass through untouched (the client sees the site's own certificate) and leave no trace.
Root only (CI runs as root); no traffic leaves the test's namespaces.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.counters import Counters
from agent.records import UsageRecord
from agent.spool import Spool
from tests.metering.proxykit import make_server_pki, meter_user, meter_venv, shared_workdir
from tests.netns import NetnsPair, need_root_netns, netns_pair, os_users, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="transparent mode is Linux only"),
]

HERE = Path(__file__).resolve().parent
README = HERE.parents[1] / "README.md"
PORT = 8118
SITE_IP = "10.231.0.3"
NAMES = {"api.openai.com": "10.231.0.2", "api.anthropic.com": "fd31::2", "example.org": SITE_IP}
PROMPT = f"CANARYprompt{uuid.uuid4().hex}"
ANSWER = f"CANARYanswer{uuid.uuid4().hex}"
API_KEY = "sk-proj-" + uuid.uuid4().hex + uuid.uuid4().hex
ANTHROPIC_KEY = "sk-ant-api03-" + uuid.uuid4().hex + uuid.uuid4().hex
MODEL = "gpt-4o-mini-2024-07-18"
CLAUDE = "claude-sonnet-4-5-20250929"


def documented_rules(user: str) -> list[list[str]]:
    """The iptables and ip6tables commands from the README, for the test's metering user."""
    rules = re.findall(
        r"^\s*(ip6?tables -t nat .*REDIRECT --to-ports \d+)\s*$", README.read_text(), re.M
    )
    assert len(rules) == 2, rules
    return [r.replace("lantern-meter", user).split() for r in rules]


class Lines:
    """A child process's stdout, read on a thread so the test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log
        self.q: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.q.put(line.rstrip("\n"))
        self.q.put("")  # end of output

    def until(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out waiting for {prefix!r}") from None
            if line.startswith(prefix):
                return line
            if line == "" and self.proc.wait(5) is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise AssertionError(f"exited ({self.proc.returncode}) before {prefix!r}: {tail}")


def spawn(args: list[str], log: Path) -> tuple[subprocess.Popen[str], Lines]:
    with log.open("w") as err:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
    return proc, Lines(proc, log)


def finish(proc: subprocess.Popen[str]) -> None:
    """Closes the child's stdin (its signal to stop) and waits for it."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rule_packets(ns: NetnsPair, tool: str) -> int:
    out = sh(*ns.exec_args(ns.agent, tool, "-t", "nat", "-L", "OUTPUT", "-v", "-x", "-n")).stdout
    (line,) = [ln for ln in out.splitlines() if "REDIRECT" in ln]
    return int(line.split()[0])


def fingerprint(pem: Path) -> str:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def subject(pem: Path) -> str:
    return x509.load_pem_x509_certificate(pem.read_bytes()).subject.rfc4514_string()


@dataclass
class World:
    user: str
    command: list[str]
    results: dict[str, dict[str, Any]]  # the client's view of each call, by name
    records: list[UsageRecord]
    received: list[dict[str, Any]]  # what the peer's servers got
    packets: dict[str, int]  # REDIRECT rule hits: iptables, ip6tables
    files: list[Path]  # everything Lantern wrote
    device_ca: Path
    provider_cert: Path
    site_cert: Path
    site_ca: Path


def client_calls() -> list[dict[str, Any]]:
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    openai = {"Authorization": f"Bearer {API_KEY}", "X-Lantern-Team": "research"}
    return [
        {
            "name": "chat",
            "host": "api.openai.com",
            "path": "/v1/chat/completions",
            "body": chat,
            "headers": openai,
        },
        {
            "name": "stream",
            "host": "api.openai.com",
            "path": "/v1/chat/completions",
            "body": {**chat, "stream": True, "stream_options": {"include_usage": True}},
            "headers": openai,
        },
        {
            "name": "claude",
            "host": "api.anthropic.com",
            "path": "/v1/messages",
            "body": {
                "model": "claude-sonnet-4-5",
                "stream": True,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": PROMPT}],
            },
            "headers": {"x-api-key": ANTHROPIC_KEY},
        },
        {"name": "site", "host": "example.org", "path": "/", "method": "GET"},
    ]


@dataclass
class Namespaces:
    """The workstation and peer namespaces, a throwaway client user, and what to clean up."""

    ns: NetnsPair
    user: str
    work: Path
    etc: Path
    procs: list[Lines]


@contextmanager
def namespaces(user_prefix: str) -> Iterator[Namespaces]:
    need_root_netns()
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `./dev test` installs it (apt package iptables)")
    meter_venv()  # created before the namespaces exist (it may need the package index)
    tag = uuid.uuid4().hex[:5]
    with netns_pair() as ns, os_users(f"{user_prefix}-{tag}") as (user,):
        work = shared_workdir()
        etc = Path("/etc/netns") / ns.agent
        procs: list[Lines] = []
        try:
            yield Namespaces(ns, user, work, etc, procs)
        finally:
            for lines in procs:
                finish(lines.proc)  # closes its stdin (the children's signal to stop), waits
                lines.reader.join(10)
            shutil.rmtree(etc, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with namespaces("lt-tp") as n:
        yield build(n.ns, n.user, n.work, n.etc, n.procs)


@dataclass
class Upstream:
    """The peer namespace's servers and the PKI they answer with."""

    provider_ca: Path
    provider_cert: Path
    site_ca: Path
    site_cert: Path
    out: Lines


def start_upstream(ns: NetnsPair, work: Path, etc: Path, procs: list[Lines]) -> Upstream:
    """/etc/hosts for the workstation namespace, and the provider and the site in the peer."""
    sh("ip", "-n", ns.peer, "addr", "add", f"{SITE_IP}/24", "dev", ns.peer_if)
    etc.mkdir(parents=True, exist_ok=True)
    hosts = "".join(f"{ip} {name}\n" for name, ip in NAMES.items())
    (etc / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n" + hosts)

    up = work / "upstream"
    (up / "provider").mkdir(parents=True)
    (up / "site").mkdir()
    for d in (up, up / "provider", up / "site"):
        d.chmod(0o755)
    provider_ca, provider_cert, provider_key = make_server_pki(
        up / "provider", ["api.openai.com", "api.anthropic.com"]
    )
    site_ca, site_cert, site_key = make_server_pki(up / "site", ["example.org"])
    provider_config = up / "provider.json"
    provider_config.write_text(
        json.dumps(
            {
                "provider": {
                    "cert": str(provider_cert),
                    "key": str(provider_key),
                    "addresses": [NAMES["api.openai.com"], NAMES["api.anthropic.com"]],
                },
                "site": {"cert": str(site_cert), "key": str(site_key), "address": SITE_IP},
                "answer": ANSWER,
            }
        )
    )
    _, provider_out = spawn(
        ns.exec_args(
            ns.peer, sys.executable, str(HERE / "netns_provider.py"), str(provider_config)
        ),
        up / "provider.log",
    )
    procs.append(provider_out)
    provider_out.until("ready", 30)
    return Upstream(provider_ca, provider_cert, site_ca, site_cert, provider_out)


def build(ns: NetnsPair, user: str, work: Path, etc: Path, procs: list[Lines]) -> World:
    upstream = start_upstream(ns, work, etc, procs)
    up = work / "upstream"
    provider_ca, provider_cert = upstream.provider_ca, upstream.provider_cert
    site_ca, site_cert, provider_out = upstream.site_ca, upstream.site_cert, upstream.out
    provider = provider_out.proc
    py = sys.executable

    for rule in documented_rules(meter_user()):
        sh(*ns.exec_args(ns.agent, *rule))

    meter, meter_out = spawn(
        ns.exec_args(
            ns.agent, py, str(HERE / "netns_meter.py"), str(work), str(provider_ca), str(PORT)
        ),
        up / "meter.log",
    )
    procs.append(meter_out)
    command = json.loads(meter_out.until("ready", 90).split(" ", 1)[1])

    device_ca = work / "run" / "lantern-metering-ca.pem"
    client_config = up / "client.json"
    client_config.write_text(
        json.dumps(
            {
                "user": user,
                "cafiles": [str(device_ca), str(site_ca)],  # not the provider's CA
                "answer": ANSWER,
                "calls": client_calls(),
            }
        )
    )
    client, client_out = spawn(
        ns.exec_args(ns.agent, py, str(HERE / "netns_client.py"), str(client_config)),
        up / "client.log",
    )
    procs.append(client_out)
    results = {}
    for _ in client_calls():
        line = client_out.until("{", 60)
        result = json.loads(line)
        results[result["name"]] = result
    client_out.until("done", 30)
    # The client keeps its connections open until the agent has the records (it finds the
    # client's process from them), then closes them.
    meter_out.until("records 3", 30)
    finish(client)
    finish(meter)
    finish(provider)
    received = json.loads(provider_out.until("received", 30).split(" ", 1)[1])
    packets = {tool: rule_packets(ns, tool) for tool in ("iptables", "ip6tables")}

    spool_path = next((work / "state").rglob("spool.db"))
    spool = Spool(spool_path, counters=Counters())
    try:
        records = list(spool.usage_records())
    finally:
        spool.close()
    files = sorted(p for p in work.rglob("*") if p.is_file() and "upstream" not in p.parts)
    return World(
        user,
        command,
        results,
        records,
        received,
        packets,
        files,
        device_ca,
        provider_cert,
        site_cert,
        site_ca,
    )


def test_the_proxy_is_transparent_on_both_loopbacks(world: World) -> None:
    modes = [world.command[i + 1] for i, a in enumerate(world.command) if a == "--mode"]
    assert modes == [f"transparent@127.0.0.1:{PORT}", f"transparent@::1:{PORT}"]


def test_every_https_connection_is_redirected_into_the_proxy(world: World) -> None:
    # One connection per call: chat, stream and the site over IPv4, claude over IPv6. The
    # proxy's own upstream connections (as the metering user) are not redirected.
    assert world.packets == {"iptables": 3, "ip6tables": 1}


def test_catalog_hosts_are_intercepted_with_the_device_ca(world: World) -> None:
    device = subject(world.device_ca)
    provider = fingerprint(world.provider_cert)
    for name, host in (
        ("chat", "api.openai.com"),
        ("stream", "api.openai.com"),
        ("claude", "api.anthropic.com"),
    ):
        r = world.results[name]
        assert r["status"] == 200 and r["answer_seen"] is True, r
        assert r["issuer"] == device and r["cert_sha256"] != provider, r
        # the client's socket is connected to the provider's address: redirected underneath
        assert r["peer"] == [NAMES[host], 443], r
    provider_requests = [r for r in world.received if r["server"] == "provider"]
    assert sorted((r["host"], r["path"]) for r in provider_requests) == [
        ("api.anthropic.com", "/v1/messages"),
        ("api.openai.com", "/v1/chat/completions"),
        ("api.openai.com", "/v1/chat/completions"),
    ]
    for r in provider_requests:
        assert not any(h.startswith("x-lantern-") for h in r["headers"])


def test_usage_records_have_model_tokens_and_the_clients_user(world: World) -> None:
    by = {(r.host, r.streaming): r for r in world.records}
    assert sorted(by) == [
        ("api.anthropic.com", True),
        ("api.openai.com", False),
        ("api.openai.com", True),
    ]
    chat = by[("api.openai.com", False)]
    assert (chat.provider, chat.model, chat.input_tokens, chat.output_tokens) == (
        "openai",
        MODEL,
        21,
        5,
    )
    assert chat.key_hint == f"sk-proj-...{API_KEY[-4:]}" and chat.tags == (("team", "research"),)
    assert chat.cost_usd is not None and chat.cost_usd > 0
    stream = by[("api.openai.com", True)]
    assert (stream.model, stream.input_tokens, stream.output_tokens) == (MODEL, 31, 9)
    claude = by[("api.anthropic.com", True)]
    assert (claude.provider, claude.model) == ("anthropic", CLAUDE)
    assert (claude.input_tokens, claude.output_tokens) == (44, 17)
    for r in world.records:
        # attributed from the client's own socket (address → original destination)
        assert r.user == world.user, r
        assert r.process_name is not None and r.process_name.startswith("python"), r
        assert r.status_code == 200 and r.error is None


def test_a_non_catalog_host_passes_through_untouched(world: World) -> None:
    site = world.results["site"]
    assert site["status"] == 200
    assert site["cert_sha256"] == fingerprint(world.site_cert)  # the site's own certificate
    assert site["issuer"] == subject(world.site_ca)
    assert site["peer"] == [SITE_IP, 443]
    got = [r for r in world.received if r["server"] == "site"]
    assert [(r["host"], r["path"]) for r in got] == [("example.org", "/")]
    assert all(r.host != "example.org" for r in world.records)


def test_nothing_lantern_wrote_holds_content_or_the_other_host(world: World) -> None:
    names = {p.name for p in world.files}
    assert {"spool.db", "mitmproxy.log"} <= names and world.records
    needles = [s.encode() for s in (PROMPT, ANSWER, API_KEY, ANTHROPIC_KEY, "example.org")]
    for path in world.files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle[:16]!r} found in {path}"
