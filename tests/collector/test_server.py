"""The collector over real gRPC on loopback with real certificates (a subprocess collector)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector.api import lantern_pb2 as pb
from collector.api import lantern_pb2_grpc as pbg
from collector.bundle_verify import is_unchanged, load_public_key, verify_bundle
from collector.pki import init_pki
from collector.testing import (
    AgentIdentity,
    CollectorProcess,
    enroll_agent,
    enroll_channel,
    new_key_and_csr,
    running_collector,
)
from tests.collector.conftest import make_batch, submit


def rows(c: CollectorProcess, sql: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(f"file:{c.db_path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def child_pids(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cert_cn(agent: AgentIdentity) -> str:
    cert = x509.load_pem_x509_certificate(agent.cert_pem)
    return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def rpc_error(fn: object, *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


# ---------------------------------------------------------------- enrolment


def test_enrol_then_submit_stores_under_the_certificates_agent_id(
    collector: CollectorProcess,
) -> None:
    agent = enroll_agent(collector, collector.create_token("1h"), hostname="alice-laptop")
    assert cert_cn(agent) == agent.agent_id
    resp = submit(agent, make_batch(3, batch_id="first"))
    assert (resp.batch_id, resp.accepted, resp.duplicates) == ("first", 3, 0)
    stored = rows(
        collector, "SELECT DISTINCT agent_id FROM sessions WHERE agent_id = ?", agent.agent_id
    )
    assert stored == [(agent.agent_id,)]
    (hostname,) = rows(collector, "SELECT hostname FROM agents WHERE id = ?", agent.agent_id)[0]
    assert hostname == "alice-laptop"


def revoked_token(c: CollectorProcess) -> str:
    token = c.create_token("1h")
    c.revoke_token(token)
    return token


# (how to make the token, the status, what the message says); the ids name them
REFUSED_TOKENS = [
    pytest.param(
        lambda c: c.create_token(-10), grpc.StatusCode.PERMISSION_DENIED, "expired at", id="expired"
    ),
    pytest.param(
        lambda c: "lnt_deadbeef_guessed", grpc.StatusCode.UNAUTHENTICATED, "not known", id="unknown"
    ),
    pytest.param(
        revoked_token, grpc.StatusCode.PERMISSION_DENIED, "has been revoked", id="revoked"
    ),
]


@pytest.mark.parametrize(("make_token", "code", "message"), REFUSED_TOKENS)
def test_refused_tokens_say_why(
    collector: CollectorProcess, make_token: object, code: grpc.StatusCode, message: str
) -> None:
    token = make_token(collector)  # type: ignore[operator]
    err = rpc_error(enroll_agent, collector, token)
    assert err.code() == code
    assert message in (err.details() or "")


def used_up_token(c: CollectorProcess) -> str:
    token = c.create_token("1h")
    enroll_agent(c, token)
    return token


@pytest.mark.parametrize(
    ("make_token", "code", "message"),
    [
        *REFUSED_TOKENS,
        pytest.param(
            used_up_token, grpc.StatusCode.PERMISSION_DENIED, "no uses left", id="used-up"
        ),
    ],
)
def test_a_bad_token_is_refused_before_the_csr_is_read(
    collector: CollectorProcess, make_token: object, code: grpc.StatusCode, message: str
) -> None:
    # The CSR is junk: had the collector parsed it (let alone signed it) before looking at the
    # token, the answer would be INVALID_ARGUMENT about the CSR.
    token = make_token(collector)  # type: ignore[operator]
    with enroll_channel(collector) as ch:
        err = rpc_error(
            pbg.EnrollmentStub(ch).Enroll,
            pb.EnrollRequest(token=token, csr_der=b"junk", agent=pb.AgentInfo(hostname="h")),
        )
    assert err.code() == code
    assert message in (err.details() or "")


def test_enrolment_returns_the_ca_and_the_bundle_key(collector: CollectorProcess) -> None:
    _, csr = new_key_and_csr()
    token = collector.create_token("1h")
    with grpc.secure_channel(
        collector.enroll_address, grpc.ssl_channel_credentials(collector.ca_cert_pem)
    ) as ch:
        resp = pbg.EnrollmentStub(ch).Enroll(
            pb.EnrollRequest(token=token, csr_der=csr, agent=pb.AgentInfo(hostname="h")), timeout=10
        )
    ca = x509.load_der_x509_certificate(resp.ca_certificate_der)
    assert ca.public_bytes(serialization.Encoding.PEM) == collector.ca_cert_pem
    x509.load_der_x509_certificate(resp.certificate_der).verify_directly_issued_by(ca)
    assert resp.not_after_unix > time.time() + 29 * 86400
    assert load_public_key(resp.bundle_signing_key) == load_public_key(
        collector.bundle_public_key_pem
    )


def test_a_token_is_spent_by_its_uses(collector: CollectorProcess) -> None:
    token = collector.create_token("1h", uses=2)
    a, b = enroll_agent(collector, token), enroll_agent(collector, token)
    assert a.agent_id != b.agent_id
    err = rpc_error(enroll_agent, collector, token)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no uses left" in (err.details() or "")


def test_a_bad_csr_is_an_invalid_argument(collector: CollectorProcess) -> None:
    token = collector.create_token("1h")
    with grpc.secure_channel(
        collector.enroll_address, grpc.ssl_channel_credentials(collector.ca_cert_pem)
    ) as ch:
        err = rpc_error(
            pbg.EnrollmentStub(ch).Enroll,
            pb.EnrollRequest(token=token, csr_der=b"junk", agent=pb.AgentInfo(hostname="h")),
        )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a DER PKCS#10" in (err.details() or "")


# ---------------------------------------------------------------- mutual TLS


def test_an_agent_cannot_report_for_another(collector: CollectorProcess) -> None:
    alice = enroll_agent(collector, collector.create_token("1h"), hostname="alice")
    mallory = enroll_agent(collector, collector.create_token("1h"), hostname="mallory")
    submit(alice, make_batch(1, id="shared-id", device="alice", version=1))
    # Mallory claims Alice's device and session id, with a higher version. The wire has no
    # agent id field to forge: the collector takes it from Mallory's certificate.
    resp = submit(mallory, make_batch(1, id="shared-id", device="alice", version=9))
    assert resp.accepted == 1
    stored = rows(
        collector, "SELECT agent_id, version FROM sessions WHERE id = 'shared-id' ORDER BY version"
    )
    assert stored == [(alice.agent_id, 1), (mallory.agent_id, 9)]


def test_a_revoked_agent_is_refused_on_every_call(
    collector: CollectorProcess, agent: AgentIdentity
) -> None:
    assert submit(agent, make_batch(1)).accepted == 1
    assert collector.revoke_agent(agent.agent_id)
    err = rpc_error(submit, agent, make_batch(1))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"agent {agent.agent_id} is revoked" in (err.details() or "")
    _, csr = new_key_and_csr()
    with agent.ingest_channel() as ch:
        err = rpc_error(pbg.IngestStub(ch).Renew, pb.RenewRequest(csr_der=csr))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = rpc_error(pbg.BundlesStub(ch).Get, pb.BundleRequest(kind="catalog"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_certificate_from_another_ca_is_refused(
    collector: CollectorProcess, tmp_path: Path
) -> None:
    other = init_pki(tmp_path, ("localhost",))
    key, csr = new_key_and_csr()
    cert = other.issue_agent_certificate(csr, "agt-forged", 30)
    forged = AgentIdentity(
        agent_id="agt-forged",
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_pem=collector.ca_cert_pem,
        address=collector.address,
    )
    err = rpc_error(submit, forged, make_batch(1))
    assert err.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails
    assert rows(collector, "SELECT COUNT(*) FROM sessions WHERE agent_id = 'agt-forged'") == [(0,)]


def test_the_ingest_port_requires_a_client_certificate(collector: CollectorProcess) -> None:
    with grpc.secure_channel(
        collector.address, grpc.ssl_channel_credentials(collector.ca_cert_pem)
    ) as ch:
        err = rpc_error(lambda: pbg.IngestStub(ch).Submit(make_batch(1), timeout=10))
    assert err.code() == grpc.StatusCode.UNAVAILABLE


def test_enrolment_is_not_served_on_the_ingest_port(agent: AgentIdentity) -> None:
    with agent.ingest_channel() as ch:
        err = rpc_error(pbg.EnrollmentStub(ch).Enroll, pb.EnrollRequest(token="x"), 10)
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


# ---------------------------------------------------------------- ingest


def test_the_same_batch_twice_is_stored_once(
    collector: CollectorProcess, agent: AgentIdentity
) -> None:
    req = make_batch(7)
    first, second = submit(agent, req), submit(agent, req)
    assert (first.accepted, first.duplicates) == (7, 0)
    assert (second.accepted, second.duplicates) == (0, 7)
    assert rows(collector, "SELECT COUNT(*) FROM sessions WHERE agent_id = ?", agent.agent_id) == [
        (7,)
    ]


def test_bad_requests_are_invalid_arguments_that_say_what(agent: AgentIdentity) -> None:
    bad = pb.SubmitRequest(
        batch_id="b", events=[pb.Event(event_id="s:2", session=pb.SessionEvent(id="s", version=1))]
    )
    err = rpc_error(submit, agent, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].event_id 's:2' must be '<session id>:<version>'" in (err.details() or "")
    err = rpc_error(submit, agent, make_batch(101))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 100" in (err.details() or "")


def test_an_oversize_request_is_refused_before_parsing(agent: AgentIdentity) -> None:
    big = make_batch(1, hostnames=("x" * 300_000,))
    err = rpc_error(submit, agent, big)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.details() or "")


def test_over_the_rate_limit_answers_with_a_retry_hint(tmp_path: Path) -> None:
    with running_collector(tmp_path, rate_limit_per_second=0.5, rate_limit_burst=2) as c:
        agent = enroll_agent(c, c.create_token("1h"))
        with agent.ingest_channel() as ch:
            stub = pbg.IngestStub(ch)
            for _ in range(2):
                stub.Submit(make_batch(1), timeout=10)
            err = rpc_error(stub.Submit, make_batch(1), 10)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    hint = dict(err.trailing_metadata() or ())["retry-after-ms"]
    assert 1 <= int(hint) <= 2000
    assert f"retry after {hint} ms" in (err.details() or "")


# ---------------------------------------------------------------- renewal and bundles


def test_renewal_issues_a_new_certificate_for_the_same_agent(
    collector: CollectorProcess, agent: AgentIdentity
) -> None:
    key, csr = new_key_and_csr("ignored")
    with agent.ingest_channel() as ch:
        resp = pbg.IngestStub(ch).Renew(pb.RenewRequest(csr_der=csr), timeout=10)
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    renewed = AgentIdentity(
        agent_id=agent.agent_id,
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        ca_pem=agent.ca_pem,
        address=agent.address,
    )
    assert cert_cn(renewed) == agent.agent_id
    assert resp.not_after_unix > time.time() + 29 * 86400
    assert submit(renewed, make_batch(1)).accepted == 1


def test_bundles_are_signed_by_the_collectors_key(
    collector: CollectorProcess, agent: AgentIdentity
) -> None:
    with agent.ingest_channel() as ch:
        stub = pbg.BundlesStub(ch)
        bundle = stub.Get(pb.BundleRequest(kind="catalog"), timeout=10)
        verified = verify_bundle(bundle, collector.bundle_public_key_pem)
        assert any(name.endswith(".yaml") for name in verified.files)
        again = stub.Get(pb.BundleRequest(kind="catalog", have_version=bundle.version), timeout=10)
        assert is_unchanged(again, bundle.version)
        policy = stub.Get(pb.BundleRequest(kind="policy"), timeout=10)
        assert verify_bundle(policy, collector.bundle_public_key_pem).kind == "policy"
        err = rpc_error(stub.Get, pb.BundleRequest(kind="firmware"), 10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown bundle kind 'firmware'" in (err.details() or "")


# ---------------------------------------------------------------- crash safety


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_stop_mid_stream_loses_no_acknowledged_batch(tmp_path: Path, how: str) -> None:
    with running_collector(tmp_path, rate_limit_per_second=1000.0, rate_limit_burst=1000) as c:
        agent = enroll_agent(c, c.create_token("1h"))
        batches = [make_batch(50, batch_id=f"b{i}") for i in range(400)]
        acked: list[int] = []
        stop = threading.Event()

        def send() -> None:
            with agent.ingest_channel() as ch:
                stub = pbg.IngestStub(ch)
                for i, req in enumerate(batches):
                    if stop.is_set():
                        return
                    try:
                        stub.Submit(req, timeout=10)
                    except grpc.RpcError:
                        return
                    acked.append(i)

        sender = threading.Thread(target=send)
        sender.start()
        while len(acked) < 20:
            time.sleep(0.005)
        children = child_pids(c.pid)
        assert children  # the ingest process (and multiprocessing's resource tracker)
        if how == "SIGKILL":
            c.kill()  # while the sender keeps going
        else:
            assert c.stop() == 0  # drains the in-flight batch, closes the store, exits 0
        stop.set()
        sender.join()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "the ingest process outlived the collector"
            time.sleep(0.05)
        k = len(acked)
        assert 20 <= k < len(batches)
        c.start()
        stored = {
            r[0]
            for r in rows(
                c, "SELECT id || ':' || version FROM sessions WHERE agent_id = ?", agent.agent_id
            )
        }
        acked_ids = {e.event_id for i in acked for e in batches[i].events}
        assert acked_ids <= stored  # nothing acknowledged is lost
        in_flight = {e.event_id for e in batches[k].events}
        assert stored - acked_ids <= in_flight  # at most the unacknowledged batch, whole or not
        # The agent resends everything unacknowledged; each event ends up stored exactly once.
        for req in batches[k : k + 3]:
            resp = submit(agent, req)
            assert resp.accepted + resp.duplicates == 50
        total = rows(c, "SELECT COUNT(*) FROM sessions WHERE agent_id = ?", agent.agent_id)[0][0]
        assert total == (k + 3) * 50
        assert c.event_count() == total  # one ledger row each
        assert {(r["agent_id"], r["version"]) for r in c.sessions()} == {(agent.agent_id, 1)}
