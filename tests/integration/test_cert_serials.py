"""Certificates replaced by renewal, against a real collector on loopback with real certificates.

gRPC's TLS accepts any unexpired certificate from the collector's CA, so the collector checks the
serial on every call: an agent's current certificate is accepted, and the one renewal replaced
only until ``pki.replaced_cert_grace_seconds`` after the agent first called with the new one
(calls in flight on the old connection). Until that first call the old one stays accepted: the
agent may never have received, or stored, the new one. An agent that never renewed is not
affected.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.enroll import renew
from collector.api import lantern_pb2 as pb
from collector.api import lantern_pb2_grpc as pbg
from collector.convert import session_to_event
from collector.testing import (
    AgentIdentity,
    CollectorProcess,
    enroll_agent,
    new_key_and_csr,
    running_collector,
)
from tests.integration.agent_harness import (
    agent_options,
    make_session,
    put_sessions,
    query,
    running_agent,
    wait_for,
    wait_stored,
)
from tests.integration.test_renewal import enrolled, serial_hex, submit_with

pytestmark = pytest.mark.slow
GRACE = 3.0  # seconds; calls below take milliseconds, so "within the grace" is far from its end
_numbers = itertools.count(1)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    with running_collector(
        tmp_path_factory.mktemp("serials"), pki_replaced_cert_grace_seconds=GRACE
    ) as c:
        yield c


def renewed(c: CollectorProcess, ident: AgentIdentity) -> AgentIdentity:
    """Renew over mutual TLS with ``ident``'s pair; the new key and certificate."""
    key, csr = new_key_and_csr()
    with ident.ingest_channel() as ch:
        resp: pb.RenewResponse = pbg.IngestStub(ch).Renew(pb.RenewRequest(csr_der=csr), timeout=10)
    cert = x509.load_der_x509_certificate(resp.certificate_der)
    return AgentIdentity(
        ident.agent_id,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
        ident.ca_pem,
        c.address,
    )


def submit_on(ch: Any) -> grpc.RpcError | None:
    """One session over ``ch``: None when stored, the error when refused."""
    req = pb.SubmitRequest(
        batch_id=f"b{next(_numbers)}", events=[session_to_event(make_session(next(_numbers)))]
    )
    try:
        resp: pb.SubmitResponse = pbg.IngestStub(ch).Submit(req, timeout=10)
    except grpc.RpcError as exc:
        return exc
    assert resp.accepted == 1
    return None


def submit(ident: AgentIdentity) -> grpc.RpcError | None:
    """One session on a new connection (a new TLS handshake) with ``ident``'s pair."""
    with ident.ingest_channel() as ch:
        return submit_on(ch)


def assert_replaced(err: grpc.RpcError | None, ident: AgentIdentity) -> None:
    assert err is not None, "the replaced certificate was accepted"
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    serial = serial_hex(ident.cert_pem)
    assert err.details() == (  # type: ignore[attr-defined]
        f"the certificate {serial} of agent {ident.agent_id} was replaced by renewal; "
        "connect with the current one"
    )


def first_used_at(c: CollectorProcess, agent_id: str) -> float:
    ((at,),) = query(c, "SELECT cert_first_used_at FROM agents WHERE id = ?", agent_id)
    assert at is not None
    return float(at)


def test_the_replaced_certificate_is_refused_once_the_new_one_is_in_use_past_the_grace(
    collector: CollectorProcess,
) -> None:
    old = enroll_agent(collector, collector.create_token("1h"))
    bystander = enroll_agent(collector, collector.create_token("1h"), hostname="never-renews")
    with old.ingest_channel() as old_ch:  # a connection made with the old pair, kept open
        assert submit_on(old_ch) is None
        new = renewed(collector, old)
        assert new.cert_pem != old.cert_pem
        assert submit(old) is None  # the new certificate is not in use yet
        assert submit(new) is None  # now it is: the old one's grace period starts
        first_use = first_used_at(collector, old.agent_id)
        assert submit_on(old_ch) is None  # a call in flight on the old connection still works
        refused: list[tuple[float, grpc.RpcError | None]] = []

        def old_refused() -> bool:
            err = submit(old)
            refused.append((time.time(), err))
            return err is not None

        wait_for(old_refused, GRACE + 20, "the replaced certificate to be refused")
        refused_at, err = refused[-1]
        assert refused_at - first_use >= GRACE  # not before the grace period was over
        assert_replaced(err, old)
        assert_replaced(submit_on(old_ch), old)  # checked per call, not per handshake
    _, csr = new_key_and_csr()
    with old.ingest_channel() as ch:
        with pytest.raises(grpc.RpcError) as renewal:  # nor can it renew
            pbg.IngestStub(ch).Renew(pb.RenewRequest(csr_der=csr), timeout=10)
        assert renewal.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert submit(new) is None
    assert submit(bystander) is None  # an agent that never renewed is unaffected
    assert query(
        collector, "SELECT cert_serial, prev_cert_serial FROM agents WHERE id = ?", old.agent_id
    ) == [(serial_hex(new.cert_pem), serial_hex(old.cert_pem))]


def test_an_agent_that_missed_the_answer_renews_again_with_its_old_certificate(
    collector: CollectorProcess,
) -> None:
    old = enroll_agent(collector, collector.create_token("1h"))
    lost = renewed(collector, old)  # issued and recorded, but the agent never got it
    new = renewed(collector, old)  # the agent retries with the pair it still has
    assert submit(old) is None  # still accepted: the agent has not switched yet
    assert submit(new) is None
    assert_replaced(submit(lost), lost)  # never used, superseded: refused at once
    ((serial, prev),) = query(
        collector, "SELECT cert_serial, prev_cert_serial FROM agents WHERE id = ?", old.agent_id
    )
    assert (serial, prev) == (serial_hex(new.cert_pem), serial_hex(old.cert_pem))


def test_a_real_agents_renewal_then_its_old_pair_is_refused(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    store, old, transport = enrolled(tmp_path, collector)
    try:
        new = renew(old, store, transport, "test-host")
    finally:
        transport.close()
    assert submit_with(collector, new, 1) == 1
    numbers = itertools.count(2)
    err: list[grpc.RpcError] = []

    def old_refused() -> bool:
        try:
            submit_with(collector, old, next(numbers))
        except grpc.RpcError as exc:
            err.append(exc)
            return True
        return False

    wait_for(old_refused, GRACE + 20, "the agent's old pair to be refused")
    assert err[0].code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert "was replaced by renewal" in (err[0].details() or "")  # type: ignore[attr-defined]
    assert submit_with(collector, new, 1000) == 1


LIFETIME = 20.0  # seconds, the least pki.client_cert_days allows: renewal is due about 13 s in


def test_an_agent_renewing_on_its_own_keeps_uploading_past_the_old_certificates_grace(
    tmp_path: Path,
) -> None:
    with running_collector(
        tmp_path, pki_client_cert_days=LIFETIME / 86400, pki_replaced_cert_grace_seconds=1.0
    ) as c:
        options = agent_options(
            tmp_path / "agent", c, c.create_token("1h"), {"collector.batch_size": 10}
        )
        with running_agent(options) as agent:
            ident = agent.identity_dir
            put_sessions(agent.spool, range(10))
            wait_stored(c, agent, 10)
            agent_id = (ident / "agent_id").read_text().strip()
            first = AgentIdentity(
                agent_id,
                (ident / "client.key").read_bytes(),
                (ident / "client.pem").read_bytes(),
                c.ca_cert_pem,
                c.address,
            )
            wait_for(
                lambda: (ident / "client.pem").read_bytes() != first.cert_pem,
                LIFETIME + 10,
                "the agent to renew its certificate",
            )
            put_sessions(agent.spool, range(10, 20))  # sent with the new pair
            wait_stored(c, agent, 20)
            used = first_used_at(c, agent_id)
            wait_for(lambda: time.time() > used + 1.5, 10, "the old certificate's grace to pass")
            put_sessions(agent.spool, range(20, 30))
            wait_stored(c, agent, 30)
            assert agent.uploader.state != "stopped", agent.uploader.problem
            assert_replaced(submit(first), first)
            cert_now = (ident / "client.pem").read_bytes()
    # one agent, holding the certificate the agent holds
    assert query(c, "SELECT id, cert_serial FROM agents") == [(agent_id, serial_hex(cert_now))]
