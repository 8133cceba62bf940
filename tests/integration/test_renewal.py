"""Certificate renewal against a real collector on loopback, with real certificates.

Every renewal makes a new key pair; the new pair replaces the old one on disk without a moment
in which ``load`` could find a key and a certificate that do not belong together, whatever
point a crash cuts it at. An agent whose certificate lives 20 seconds renews on its own, keeps
uploading past the first certificate's expiry (through an outage when renewal falls due, and a
restart after, so the TLS handshake is made again with the new pair), and the collector stores
every event once and still knows one agent.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.enroll import Identity, IdentityStore, build_link, renew
from agent.exceptions import EnrollmentError
from agent.transport import Transport
from collector.api import lantern_pb2 as pb
from collector.api import lantern_pb2_grpc as pbg
from collector.convert import session_to_event
from collector.testing import AgentIdentity, CollectorProcess, running_collector
from tests.integration.agent_harness import (
    agent_options,
    expected_fingerprints,
    make_session,
    put_sessions,
    query,
    running_agent,
    wait_for,
    wait_stored,
)

pytestmark = pytest.mark.slow
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def serial_hex(cert_pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")


def key_matches_cert(key_pem: bytes, cert_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    return bool(cert.public_key().public_bytes(*SPKI) == key.public_key().public_bytes(*SPKI))


def submit_with(c: CollectorProcess, ident: Identity, i: int) -> int:
    """Submit one session over mutual TLS with this key and certificate; events accepted."""
    agent = AgentIdentity(ident.agent_id, ident.key_pem, ident.cert_pem, ident.ca_pem, c.address)
    req = pb.SubmitRequest(batch_id=f"b{i}", events=[session_to_event(make_session(i))])
    with agent.ingest_channel() as ch:
        resp: pb.SubmitResponse = pbg.IngestStub(ch).Submit(req, timeout=10)
    return resp.accepted


def enrolled(tmp_path: Path, c: CollectorProcess) -> tuple[IdentityStore, Identity, Transport]:
    """An agent enrolled through its own link; its store, identity and mutual-TLS transport."""
    options = agent_options(tmp_path / "agent", c, c.create_token("1h"))
    state = Path(options["state.dir"])
    state.mkdir(parents=True, exist_ok=True)
    transport = build_link(options, state).transport()
    store = IdentityStore(state / "identity")
    identity = store.load()
    assert identity is not None
    return store, identity, transport


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_collector(tmp_path_factory.mktemp("renewal")) as c:
        yield c


# ---------------------------------------------------------------------------- one renewal


def test_renewal_switches_to_a_new_key_pair_and_the_old_key_is_gone(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    store, old, transport = enrolled(tmp_path, collector)
    try:
        new = renew(old, store, transport, "test-host")
    finally:
        transport.close()
    assert new.agent_id == old.agent_id
    assert new.key_pem != old.key_pem and new.cert_pem != old.cert_pem
    assert key_matches_cert(new.key_pem, new.cert_pem)
    assert store.key.read_bytes() == new.key_pem and store.cert.read_bytes() == new.cert_pem
    assert stat.S_IMODE(store.key.stat().st_mode) == 0o600
    # no file in the identity directory holds the old key, in any encoding
    old_key = serialization.load_pem_private_key(old.key_pem, None)
    old_der = old_key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files = sorted(p.name for p in store.dir.iterdir())
    assert files == ["agent_id", "ca.pem", "client.key", "client.pem"]
    for p in store.dir.iterdir():
        assert old.key_pem not in p.read_bytes() and old_der not in p.read_bytes(), p
    # the collector knows the new certificate, and takes events made with the new pair
    ((serial,),) = query(collector, "SELECT cert_serial FROM agents WHERE id = ?", new.agent_id)
    assert serial == serial_hex(new.cert_pem)
    assert submit_with(collector, new, 1) == 1


# ---------------------------------------------------------------------------- crashes


class Crash(BaseException):
    """The process dies here: no handler in the code under test runs (not an OSError)."""


def crash_at(n: int) -> Callable[[Any, Any], None]:
    """``os.replace`` that dies at its ``n``th call. A renewal renames four times: staging the
    certificate (1) and the key (2), then the key into place (3) and the certificate (4)."""
    real = os.replace
    calls = [0]

    def replace(src: Any, dst: Any) -> None:
        calls[0] += 1
        if calls[0] == n:
            raise Crash(f"killed before rename {n}: {src} -> {dst}")
        real(src, dst)

    return replace


@pytest.mark.parametrize(
    ("n", "survivor"),
    [(1, "old"), (2, "old"), (3, "old"), (4, "new")],
    ids=["staging-cert", "staging-key", "committing-key", "committing-cert"],
)
def test_a_crash_anywhere_in_the_switch_leaves_a_usable_matching_pair(
    tmp_path: Path,
    collector: CollectorProcess,
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    survivor: str,
) -> None:
    store, old, transport = enrolled(tmp_path, collector)
    try:
        with monkeypatch.context() as m:
            m.setattr(os, "replace", crash_at(n))
            with pytest.raises(Crash):
                renew(old, store, transport, "test-host")
    finally:
        transport.close()
    if n == 4:  # the one state in which the names on disk disagree, until the next load
        assert not key_matches_cert(store.key.read_bytes(), store.cert.read_bytes())
    after = IdentityStore(store.dir).load()  # the next start
    assert after is not None
    assert key_matches_cert(after.key_pem, after.cert_pem)
    if survivor == "old":
        assert (after.key_pem, after.cert_pem) == (old.key_pem, old.cert_pem)
    else:
        assert after.key_pem != old.key_pem and after.cert_pem != old.cert_pem
    assert sorted(p.name for p in store.dir.iterdir()) == [
        "agent_id",
        "ca.pem",
        "client.key",
        "client.pem",
    ]
    assert submit_with(collector, after, 100 + n) == 1  # and it works at the collector


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_a_failed_write_is_a_renewal_error_and_leaves_a_usable_pair(
    tmp_path: Path, collector: CollectorProcess, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    store, old, transport = enrolled(tmp_path, collector)
    real = os.replace
    calls = [0]

    def full_disk(src: Any, dst: Any) -> None:  # from rename n on; cleanup's renames too
        calls[0] += 1
        if calls[0] >= n:
            raise OSError(28, "No space left on device")
        real(src, dst)

    try:
        with monkeypatch.context() as m:
            m.setattr(os, "replace", full_disk)
            with pytest.raises(EnrollmentError, match="cannot store the renewed key"):
                renew(old, store, transport, "test-host")
    finally:
        transport.close()
    after = IdentityStore(store.dir).load()  # the disk has room again
    assert not store.next_key.exists() and not store.next_cert.exists()
    assert after is not None and key_matches_cert(after.key_pem, after.cert_pem)
    # up to and including the key's move (rename 3) the old pair stays; after it, the new one
    assert (after.key_pem == old.key_pem) == (n <= 3)
    assert submit_with(collector, after, 200 + n) == 1


def test_a_temporary_file_left_by_a_crash_is_removed_on_load(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    store, old, transport = enrolled(tmp_path, collector)
    transport.close()
    stale = store.dir / ".client.next.key-abc123.tmp"  # what a crash inside a write leaves
    stale.write_bytes(b"-----BEGIN PRIVATE KEY-----\n...")
    assert IdentityStore(store.dir).load() == old
    assert not stale.exists()


# ---------------------------------------------------------------------------- on its own


LIFETIME = 20.0  # seconds: renewal falls due when a third is left, about 13 s in


def test_a_short_lived_certificate_renews_itself_and_uploading_goes_on(tmp_path: Path) -> None:
    with running_collector(tmp_path, pki_client_cert_days=LIFETIME / 86400) as c:
        options = agent_options(
            tmp_path / "agent", c, c.create_token("1h"), {"collector.batch_size": 10}
        )
        with running_agent(options) as agent:
            ident = agent.identity_dir
            put_sessions(agent.spool, range(20))
            wait_stored(c, agent, 20)
            first_cert = (ident / "client.pem").read_bytes()
            first_key = (ident / "client.key").read_bytes()
            first = x509.load_pem_x509_certificate(first_cert)
            first_expiry = first.not_valid_after_utc.timestamp()
            assert first_expiry - time.time() < LIFETIME
            # The collector is down when renewal falls due: the attempt fails and is shown...
            assert c.stop() == 0
            wait_for(
                lambda: any("renewal failed" in p for p in agent.link.problems()),
                LIFETIME + 10,
                "a failed renewal",
            )
            assert (ident / "client.pem").read_bytes() == first_cert
            c.start()
            # ...and retried within seconds, not minutes, so it renews before it expires.
            wait_for(
                lambda: time.time() > first_expiry + 1 or agent.uploader.state == "stopped",
                LIFETIME + 10,
                "the first certificate to expire",
            )
            assert agent.uploader.state != "stopped", agent.uploader.problem
            assert agent.link.problems() == []
            assert (ident / "client.pem").read_bytes() != first_cert
            # New connections must present the new pair: a restart drops every connection (an
            # established one would outlive its certificate), and the collector checks the
            # client certificate at each handshake.
            assert c.stop() == 0
            c.start()
            put_sessions(agent.spool, range(20, 40))
            wait_stored(c, agent, 40)
            agent_id = (ident / "agent_id").read_text().strip()
            cert_now = (ident / "client.pem").read_bytes()
            key_now = (ident / "client.key").read_bytes()
    assert cert_now != first_cert and key_now != first_key
    assert key_matches_cert(key_now, cert_now)
    ids = [row[0] for row in query(c, "SELECT fingerprint FROM events")]
    assert len(ids) == len(set(ids)) == 40
    assert set(ids) == expected_fingerprints(agent_id, range(40))
    assert query(c, "SELECT COUNT(*) FROM sessions") == [(40,)]
    # still one agent in the inventory, holding the certificate the agent holds
    assert query(c, "SELECT id, cert_serial, revoked FROM agents") == [
        (agent_id, serial_hex(cert_now), 0)
    ]
