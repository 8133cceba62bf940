"""The live agent end to end: real capture in a network namespace, real DNS, TLS and QUIC from
processes of two OS users, sessions in the spool with the right user, process and tool.

Root only (CI runs as root): namespaces, veth, test users. Traffic stays in the namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.agent_harness import wait_for
from tests.netns import NetnsPair, netns_pair, os_users, sh

ROOT = Path(__file__).resolve().parents[2]
LANTERN = str(Path(sys.executable).with_name("lantern"))
CLIENTS = str(ROOT / "tests" / "integration" / "clients.py")
SERVERS = str(ROOT / "tests" / "integration" / "peer_servers.py")
# one address per name, so an `ip` observation can only mean one of them
NAMES = {
    "api.openai.com": "10.231.0.2",
    "claude.ai": "10.231.0.3",
    "chatgpt.com": "10.231.0.4",
    "gemini.google.com": "10.231.0.5",
    "example.org": "10.231.0.6",  # not AI: must leave no trace
}

pytestmark = pytest.mark.root


def make_certs(directory: Path) -> Path:
    """A CA and a server certificate for every name; returns the CA file."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lantern test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "ca.pem"


@pytest.fixture
def world() -> Iterator[tuple[NetnsPair, list[str], Path]]:
    tag = uuid.uuid4().hex[:5]
    with netns_pair() as ns, os_users(f"lt-alice-{tag}", f"lt-bob-{tag}") as users:
        work = Path(tempfile.mkdtemp(prefix="lantern-netns-"))
        work.chmod(0o755)
        resolv = Path("/etc/netns") / ns.agent
        try:
            for ip in list(NAMES.values())[1:]:
                sh("ip", "-n", ns.peer, "addr", "add", f"{ip}/24", "dev", ns.peer_if)
            resolv.mkdir(parents=True, exist_ok=True)
            (resolv / "resolv.conf").write_text(f"nameserver {ns.peer_ip}\n")
            yield ns, users, work
        finally:
            shutil.rmtree(resolv, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)


def start(args: list[str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(args, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def client(ns: NetnsPair, user: str, *args: str) -> str:
    out = sh(*ns.exec_args(ns.agent, sys.executable, CLIENTS, "--as", user, *args), check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_live_agent_sessions_per_user_process_and_tool(
    world: tuple[NetnsPair, list[str], Path],
) -> None:
    ns, (alice, bob), work = world
    ca = make_certs(work)
    peer = start(
        ns.exec_args(
            ns.peer,
            sys.executable,
            SERVERS,
            "--bind",
            ns.peer_ip,
            "--cert",
            str(work / "cert.pem"),
            "--key",
            str(work / "key.pem"),
            *[f"{n}={ip}" for n, ip in NAMES.items()],
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    state = work / "state"
    config = work / "agent.yaml"
    config.write_text(
        json.dumps(
            {
                "state": {"dir": str(state), "runtime_dir": str(work / "run")},
                "capture": {"interfaces": [ns.agent_if]},
                "device": {"name": "test-ws"},
                "sessions": {"update_interval": 0.5},
            }
        )
    )
    log = work / "agent.log"
    with log.open("w") as log_file:
        agent = start(
            ns.exec_args(ns.agent, LANTERN, "agent", "run", "--config", str(config)),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == "ready"
        wait_for((work / "run" / "status.json").exists, 20, "the agent's status file")
        assert "TLSv1.3" in client(ns, alice, "tls", str(ca), "api.openai.com", "example.org")
        assert "TLSv1.3" in client(ns, bob, "tls", str(ca), "claude.ai")
        assert "quic" in client(ns, alice, "quic", "gemini.google.com", NAMES["gemini.google.com"])
        assert "ech" in client(ns, bob, "ech", "chatgpt.com")
        time.sleep(1.5)  # let the agent read the last frames
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=20)
        finally:
            peer.kill()
            peer.communicate()  # reaps it and closes its pipes
    assert agent.returncode == 0, log.read_text()

    out = subprocess.run(
        [LANTERN, "agent", "sessions", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    sessions = [s for s in json.loads(out.stdout)["sessions"] if s["user"] in (alice, bob)]
    got = {(s["user"], s["service_id"]) for s in sessions}
    assert got == {
        (alice, "openai-api"),
        (bob, "anthropic-claude"),
        (alice, "google-gemini"),
        (bob, "openai-chatgpt"),
    }
    by = {(s["user"], s["service_id"]): s for s in sessions}
    for s in sessions:
        assert s["device"] == "test-ws"
        what = (s["service_id"], s["seen_as"], s["tool"])
        assert s["process_name"] and s["process_name"].startswith("python"), what
        assert s["tool"].startswith("python") and " via " in s["tool"], s
        assert s["closed"] is True
    assert by[(alice, "openai-api")]["hostnames"] == ["api.openai.com"]
    assert by[(alice, "openai-api")]["connections"] >= 1
    assert by[(bob, "anthropic-claude")]["hostnames"] == ["claude.ai"]
    assert by[(bob, "openai-chatgpt")]["hostnames"] == ["chatgpt.com"]
    assert "tls" in by[(alice, "openai-api")]["seen_as"]
    assert by[(alice, "openai-api")]["bytes_up"] > 0  # from the kernel's tcp_info
    assert by[(alice, "google-gemini")]["seen_as"] == ["quic"]
    # ECH: the hello named only the public name; the earlier DNS answer named the service
    assert "ip" in by[(bob, "openai-chatgpt")]["seen_as"]

    # Invariant 2: a name that matches no catalog entry leaves no trace anywhere we wrote.
    for path in [*state.rglob("*"), *(work / "run").rglob("*"), log]:
        if path.is_file():
            assert b"example.org" not in path.read_bytes(), path
    assert os.stat(state / "spool.db").st_mode & 0o077 == 0
