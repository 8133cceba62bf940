"""Real agents against a real collector on loopback: enrolment, refusals, tampered bundles, and
crashes on both sides mid-stream. Afterwards the collector holds exactly what the agents
produced: none lost, none twice (DESIGN.md invariants 4 and 6)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.agent_harness import wait_for

pytest.importorskip("grpc")
testing = pytest.importorskip("collector.testing")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "lantern" / "samples" / "ai-sample.pcapng"
pytestmark = pytest.mark.slow
LANTERN = [sys.executable, "-c", "from lantern.cli import main; main()"]


# ---------------------------------------------------------------------------- the agent process

GENERATOR = """
import sys
from tests.integration.test_wire_faults import generator_main
sys.exit(generator_main(sys.argv[1], int(sys.argv[2])))
"""


def generator_main(config: str, n: int) -> int:
    """An agent process: spool ``n`` closed sessions once (g000000..), then upload until empty.

    Uses the agent's own config loading, enrolment, link and uploader: only capture is
    replaced by a generator whose output is known exactly.
    """
    from agent.cli_agent import all_options
    from agent.config import load_config
    from agent.counters import Counters
    from agent.enroll import agent_info, build_link
    from agent.spool import Spool
    from agent.state import StateDir
    from agent.uploader import Uploader, spool_heartbeat

    options = load_config(Path(config), all_options())
    state = StateDir.from_options(options)
    state.create()
    counters = Counters()
    spool = Spool(state.spool, counters=counters)
    marker = state.state / "generated"
    if not marker.exists():
        for i in range(n):
            spool.put_session(_session(i))
        marker.write_text(str(n))
    link = build_link(options, state.state)
    beat = spool_heartbeat(agent_info(options), spool, counters)
    up = Uploader.from_options(options, spool, link, beat, counters)
    up.start()
    try:
        while True:
            if up.state == "stopped":
                print(f"lantern: {up.problem}", file=sys.stderr, flush=True)
                return 3
            if spool.stats().unsent == 0 and spool.in_flight() == 0:
                break
            print(json.dumps(up.counters.snapshot()), flush=True)
            time.sleep(0.2)
    finally:
        up.stop()
    print(json.dumps(counters.snapshot()), flush=True)
    return 0


def _session(i: int) -> Any:
    from tests.records import numbered_session

    return numbered_session(i, device="gen-1")


def write_config(path: Path, c: Any, ca_file: Path, **extra: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "state": {"dir": str(path / "state")},
        "collector": {
            "address": c.address,
            "enroll_address": c.enroll_address,
            "token": {"$env": "LANTERN_TEST_TOKEN"},
            "ca_file": str(ca_file),
            "timeout": 5.0,
            "batch_size": 100,
            "max_events_per_second": 1000,
            "retry_initial_seconds": 0.2,
            "retry_max_seconds": 1.0,
            "drain_seconds": 30.0,
        },
    }
    for key, value in extra.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    config = path / "agent.yaml"
    config.write_text(yaml.safe_dump(cfg))
    return config


def env(token: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e["LANTERN_TEST_TOKEN"] = token
    return e


def run_agent(config: Path, token: str) -> subprocess.CompletedProcess[str]:
    """`lantern agent run --pcap SAMPLE`: the real agent replaying the bundled capture."""
    cmd = [*LANTERN, "agent", "run", "--pcap", str(SAMPLE), "--config", str(config)]
    return subprocess.run(
        cmd, check=False, env=env(token), cwd=ROOT, capture_output=True, text=True, timeout=180
    )


def start_generator(config: Path, n: int, token: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", GENERATOR, str(config), str(n)],
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env(token),
            cwd=ROOT,
        )


def fingerprint(agent_id: str, event_id: str) -> int:
    """The collector's ledger key for an event (collector/store.py): 64-bit BLAKE2b of the
    agent id, a NUL and the event id, as a signed integer."""
    digest = hashlib.blake2b(agent_id.encode() + b"\0" + event_id.encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def stored_event_ids(db: Path) -> list[int]:
    """The ledger's event fingerprints: one row per stored event, resends included never."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in con.execute("SELECT fingerprint FROM events")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def agent_ids(db: Path) -> list[str]:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in con.execute("SELECT id FROM agents")]
    finally:
        con.close()


def session_rows(db: Path) -> list[tuple[str, int, int]]:
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        return list(con.execute("SELECT id, version, closed FROM sessions"))
    finally:
        con.close()


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"agent did not finish:\n{log.read_text()}") from None
    assert code == 0, log.read_text()


def assert_exactly(db: Path, n: int) -> None:
    ids = stored_event_ids(db)
    (agent,) = agent_ids(db)
    expected = {fingerprint(agent, f"g{i:06d}:1") for i in range(n)}
    assert len(ids) == len(set(ids)) == n, f"{len(ids)} stored, {len(set(ids))} distinct, {n} made"
    assert set(ids) == expected
    rows = session_rows(db)
    assert len(rows) == n and all(v == 1 and closed for _, v, closed in rows)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Any]:
    with testing.running_collector(tmp_path, rate_limit_per_second=100.0) as c:
        yield c


@pytest.fixture
def ca_file(tmp_path: Path, collector: Any) -> Path:
    path = tmp_path / "collector-ca.pem"
    path.write_bytes(collector.ca_cert_pem)
    return path


# ---------------------------------------------------------------------------- enrolment


def test_a_real_agent_enrols_replays_a_capture_and_uploads_every_session(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    config = write_config(tmp_path / "agent", collector, ca_file)
    token = collector.create_token("1h", uses=1)
    run = run_agent(config, token)
    assert run.returncode == 0, run.stderr
    identity = tmp_path / "agent" / "state" / "identity"
    assert (identity / "client.key").stat().st_mode & 0o777 == 0o600
    status = json.loads((tmp_path / "agent" / "state" / "status.json").read_text())
    counters = status["counters"]
    assert counters["sessions.opened"] > 0
    assert status["spool"]["rows"] == 0  # all closed and acknowledged, so deleted
    ids = stored_event_ids(collector.db_path)
    assert (
        len(ids)
        == len(set(ids))
        == counters["upload.events"] - counters.get("upload.duplicates", 0)
    )
    # every session the agent opened arrived in its final (closed) state, once
    rows = session_rows(collector.db_path)
    assert len(rows) == len({r[0] for r in rows}) == counters["sessions.opened"]
    assert all(closed for _, _, closed in rows)
    agent_id = (identity / "agent_id").read_text().strip()
    con = sqlite3.connect(collector.db_path)
    (hostname,) = con.execute("SELECT hostname FROM agents WHERE id = ?", (agent_id,)).fetchone()
    con.close()
    assert hostname  # the heartbeat reached the collector


@pytest.mark.parametrize("case", ["expired", "reused", "revoked"])
def test_a_bad_token_is_refused_with_the_collectors_message(
    tmp_path: Path, collector: Any, ca_file: Path, case: str
) -> None:
    if case == "expired":
        token = collector.create_token(-60.0, uses=1)
    else:
        token = collector.create_token("1h", uses=1)
    if case == "reused":
        testing.enroll_agent(collector, token)
    if case == "revoked":
        assert collector.revoke_token(token)
    config = write_config(tmp_path / "agent", collector, ca_file)
    log = tmp_path / "agent.log"
    proc = start_generator(config, 3, token, log)
    assert proc.wait(60) == 3, log.read_text()
    message = log.read_text()
    assert "refused the enrolment token" in message
    assert {"expired": "expired", "reused": "uses", "revoked": "revoked"}[case] in message
    assert stored_event_ids(collector.db_path) == []
    assert not (tmp_path / "agent" / "state" / "identity" / "client.pem").exists()


def test_a_revoked_agent_stops_uploading_and_keeps_its_spool(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    from agent.spool import Spool

    config = write_config(tmp_path / "agent", collector, ca_file)
    token = collector.create_token("1h")
    log = tmp_path / "agent.log"
    finish(start_generator(config, 5, token, log), log)
    agent_id = (tmp_path / "agent" / "state" / "identity" / "agent_id").read_text().strip()
    assert collector.revoke_agent(agent_id)
    with Spool(tmp_path / "agent" / "state" / "spool.db") as spool:
        spool.put_session(_session(99))
    (tmp_path / "agent" / "state" / "generated").write_text("done")
    proc = start_generator(config, 0, token, log)
    assert proc.wait(60) == 3
    assert "refused this agent" in log.read_text() and "revoked" in log.read_text()
    with Spool(tmp_path / "agent" / "state" / "spool.db") as spool:
        assert spool.stats().unsent == 1


# ---------------------------------------------------------------------------- bundles


def test_bundles_verify_and_a_tampered_one_is_refused(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    from agent.bundles import BundleClient
    from agent.counters import Counters
    from agent.transport import GrpcTransport

    ident = testing.enroll_agent(collector, collector.create_token("1h"))
    transport = GrpcTransport(
        collector.address, ca_pem=ident.ca_pem, cert_pem=ident.cert_pem, key_pem=ident.key_pem
    )
    counters = Counters()
    client = BundleClient(
        tmp_path / "bundles", collector.bundle_public_key_pem, kinds=("catalog",), counters=counters
    )
    try:
        assert client.poll(transport) == ["catalog"]
        good = client.version("catalog")
        catalog_dir = client.content_dir("catalog")
        assert catalog_dir is not None and any(catalog_dir.glob("*.yaml"))
        assert client.poll(transport) == []  # unchanged: not fetched again
        bundle = transport.get_bundle("catalog", "")
    finally:
        transport.close()
    payload = bytearray(bundle.payload)
    payload[len(payload) // 2] ^= 0x01
    tampered = dataclasses.replace(bundle, payload=bytes(payload), version="f" * 64)

    class Tampering:
        def get_bundle(self, kind: str, have: str) -> Any:
            return tampered

    assert client.poll(Tampering()) == []  # type: ignore[arg-type]
    assert counters.get("bundles.refused") == 1
    assert "signature does not verify" in client.problems()[0]
    assert client.version("catalog") == good  # the last good one stays


def test_a_real_agent_refuses_bundles_signed_by_another_key(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ed25519.Ed25519PrivateKey.generate().public_key()
    key_file = tmp_path / "wrong.pub"
    key_file.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = write_config(
        tmp_path / "agent", collector, ca_file, bundles__public_key_file=str(key_file)
    )
    token = collector.create_token("1h")
    run = run_agent(config, token)
    assert run.returncode == 0, run.stderr
    assert "refused the catalog bundle" in run.stderr
    status = json.loads((tmp_path / "agent" / "state" / "status.json").read_text())
    assert status["counters"]["bundles.refused"] >= 1
    assert not (tmp_path / "agent" / "state" / "bundles" / "catalog" / "current").exists()
    assert len(session_rows(collector.db_path)) == status["counters"]["sessions.opened"]


# ---------------------------------------------------------------------------- faults mid-stream

N = 4000


def _midway(collector: Any, at: int) -> Callable[[], bool]:
    return lambda: len(stored_event_ids(collector.db_path)) >= at


def test_collector_killed_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    config = write_config(tmp_path / "agent", collector, ca_file)
    log = tmp_path / "agent.log"
    proc = start_generator(config, N, collector.create_token("1h"), log)
    wait_for(_midway(collector, 800), 60, "the first batches")
    collector.kill()  # SIGKILL, batches in flight
    time.sleep(1.5)
    collector.start()
    wait_for(_midway(collector, 2400), 60, "more batches")
    collector.kill()
    collector.start()
    finish(proc, log)
    assert_exactly(collector.db_path, N)
    assert "retry" in log.read_text()  # it did hit the outage


def test_connection_cut_by_a_collector_restart_loses_nothing(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    config = write_config(tmp_path / "agent", collector, ca_file)
    log = tmp_path / "agent.log"
    proc = start_generator(config, N, collector.create_token("1h"), log)
    wait_for(_midway(collector, 1000), 60, "the first batches")
    assert collector.stop() == 0
    time.sleep(2.0)
    collector.start()
    finish(proc, log)
    assert_exactly(collector.db_path, N)


def test_agent_killed_mid_upload_resends_only_what_was_not_acknowledged(
    tmp_path: Path, collector: Any, ca_file: Path
) -> None:
    config = write_config(tmp_path / "agent", collector, ca_file)
    token = collector.create_token("1h", uses=1)
    log = tmp_path / "agent.log"
    proc = start_generator(config, N, token, log)
    wait_for(_midway(collector, 1200), 60, "the first batches")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(stored_event_ids(collector.db_path))
    assert before < N
    # restarted: same identity (the one-use token is spent), same spool
    finish(start_generator(config, N, token, log), log)
    assert_exactly(collector.db_path, N)
