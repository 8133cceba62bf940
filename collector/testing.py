"""A real collector for tests: a subprocess on free loopback ports with real TLS.

    with running_collector(tmp_path, rate_limit_per_second=100.0) as c:
        token = c.create_token("1h", uses=2)
        agent = enroll_agent(c, token)               # real key, CSR and client certificate
        with agent.ingest_channel() as ch:           # mutual TLS to c.address
            stub = lantern_pb2_grpc.IngestStub(ch)
            stub.Submit(pb.SubmitRequest(batch_id="b1", events=[...]), timeout=10)
        c.kill()                                      # SIGKILL, like a crash
        c.start()                                     # same ports, same data

Settings are config keys with dots as underscores (``rate_limit.burst`` → ``rate_limit_burst``;
see ``collector.config.OPTIONS``); the ports default to 0 (any free port) and stay the same
across ``start()`` after ``stop()``/``kill()``.

Stored data: ``event_count()`` (distinct events, resends excluded) and ``sessions()`` (highest
version per session, with the ``agent_id`` taken from the certificate). The ``events`` table holds
64-bit fingerprints of (agent id, event id), not the ids themselves (see ``collector.store``).

Addresses: ``address`` is the **mutual-TLS** endpoint (Ingest, Bundles); ``enroll_address`` the
TLS-only enrolment endpoint. Both are ``127.0.0.1:PORT``; the server certificate has
``127.0.0.1`` and ``localhost`` as SANs, so no target-name override is needed.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from collector.api import lantern_pb2 as pb
from collector.config import OPTIONS, setting_name
from collector.pki import pki_dir
from collector.store import DB_NAME, open_store
from collector.tokens import create_token, parse_duration

_READY = re.compile(r"enrolment on (\S+):(\d+) \(TLS\), ingest on (\S+):(\d+)")
_KEYS = {setting_name(o.key): o.key for o in OPTIONS}
START_TIMEOUT = 60.0
ROOT = Path(__file__).resolve().parent.parent


class CollectorProcess:
    """Handle on a collector subprocess (what ``running_collector`` yields)."""

    def __init__(self, directory: Path, settings: dict[str, Any]) -> None:
        unknown = sorted(set(settings) - set(_KEYS))
        if unknown:
            raise TypeError(f"unknown collector settings: {', '.join(unknown)}")
        self.dir = directory
        self.data_dir = directory / "data"
        self.config_path = directory / "collector.yaml"
        self.log_path = directory / "collector.log"
        self._config: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "listen.host": "127.0.0.1",
            "listen.enroll_port": 0,
            "listen.ingest_port": 0,
            "hostnames": ["localhost"],
            "server.shutdown_grace": 5.0,
        }
        self._config.update({_KEYS[k]: v for k, v in settings.items()})
        self.proc: subprocess.Popen[str] | None = None
        self.enroll_port = 0
        self.ingest_port = 0

    # ---------------------------------------------------------------- what tests use

    @property
    def address(self) -> str:
        """``host:port`` of the mutual-TLS server (Ingest, Bundles)."""
        return f"127.0.0.1:{self.ingest_port}"

    @property
    def enroll_address(self) -> str:
        """``host:port`` of the TLS enrolment server (no client certificate)."""
        return f"127.0.0.1:{self.enroll_port}"

    @property
    def ca_cert_pem(self) -> bytes:
        return (pki_dir(self.data_dir) / "ca.crt").read_bytes()

    @property
    def bundle_public_key_pem(self) -> bytes:
        return (pki_dir(self.data_dir) / "bundle-signing.pub").read_bytes()

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_NAME

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the collector is not running"
        return self.proc.pid

    def create_token(self, ttl: str | float = "1h", uses: int = 1) -> str:
        """A new enrolment token (``ttl`` in seconds or as ``24h``; negative: already expired)."""
        seconds = parse_duration(ttl) if isinstance(ttl, str) else float(ttl)
        with open_store(self.data_dir) as store:
            if seconds > 0:
                return create_token(store, seconds, uses)
            return create_token(store, 1.0, uses, now=time.time() + seconds - 1.0)

    def revoke_token(self, token: str) -> bool:
        with open_store(self.data_dir) as store:
            return store.revoke_token(token.split("_")[1])

    def revoke_agent(self, agent_id: str) -> bool:
        with open_store(self.data_dir) as store:
            return store.revoke_agent(agent_id, time.time())

    def event_count(self) -> int:
        """Distinct events stored (rows of the ``events`` ledger; resends are not counted)."""
        return int(self._query("SELECT COUNT(*) FROM events")[0]["COUNT(*)"])

    def sessions(self) -> list[dict[str, Any]]:
        """Every stored session (its highest version), as column -> value, by agent and id."""
        return self._query("SELECT * FROM sessions ORDER BY agent_id, id")

    def _query(self, sql: str) -> list[dict[str, Any]]:
        db = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute(sql)]
        finally:
            db.close()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start (or restart, on the same ports and data) and wait until it listens."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the collector is already running")
        cfg = dict(self._config)
        if self.ingest_port:
            cfg["listen.enroll_port"] = self.enroll_port
            cfg["listen.ingest_port"] = self.ingest_port
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(_nest(cfg)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "serve", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
            cwd=self.dir,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the collector exited on start:\n{self.log()}")
            m = _READY.search(line)
            if m:
                self.enroll_port, self.ingest_port = int(m.group(2)), int(m.group(4))
                return
        self.kill()
        raise RuntimeError(f"the collector did not start within {START_TIMEOUT:g} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (drain in-flight calls, close the store); returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._close_pipe()
        return code

    def kill(self) -> None:
        """SIGKILL: no draining, no clean close, like a crash or an OOM kill."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


@contextmanager
def running_collector(tmp_path: Path, **settings: Any) -> Iterator[CollectorProcess]:
    """A started collector subprocess in ``tmp_path/collector``; stopped (or killed) on exit."""
    c = CollectorProcess(tmp_path / "collector", settings)
    c.start()
    try:
        yield c
    finally:
        if c.proc is not None and c.proc.poll() is None:
            c.stop(timeout=15)  # a test that cares about the exit code calls stop() itself
        c.kill()


# ---------------------------------------------------------------- a minimal real agent identity


@dataclass
class AgentIdentity:
    """An enrolled agent: its own key, its certificate, and channels to the collector."""

    agent_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    address: str

    def credentials(self) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )

    def ingest_channel(self, **options: Any) -> Any:
        return grpc.secure_channel(self.address, self.credentials(), options=list(options.items()))


def new_key_and_csr(common_name: str = "lantern-agent") -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A fresh P-256 key and a DER CSR for it (the CN is ignored: the collector picks the id)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.DER)


def enroll_channel(c: CollectorProcess) -> Any:
    creds = grpc.ssl_channel_credentials(root_certificates=c.ca_cert_pem)
    return grpc.secure_channel(c.enroll_address, creds)


def enroll_agent(
    c: CollectorProcess, token: str, hostname: str = "test-host", mode: str = "endpoint"
) -> AgentIdentity:
    """Enrol over the real enrolment port with a new key; raises grpc.RpcError when refused."""
    key, csr = new_key_and_csr()
    req = pb.EnrollRequest(
        token=token,
        csr_der=csr,
        agent=pb.AgentInfo(
            hostname=hostname, os="linux", os_version="6.1", agent_version="0.1.0", mode=mode
        ),
    )
    with enroll_channel(c) as ch:
        enroll = ch.unary_unary(
            "/lantern.v1.Enrollment/Enroll",
            request_serializer=pb.EnrollRequest.SerializeToString,
            response_deserializer=pb.EnrollResponse.FromString,
        )
        resp: pb.EnrollResponse = enroll(req, timeout=30)
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    return AgentIdentity(
        agent_id=resp.agent_id,
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_pem=c.ca_cert_pem,
        address=c.address,
    )
