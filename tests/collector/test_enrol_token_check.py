"""Enrolment checks the token before the CA does any work: a bad token (unknown, expired, used
up, revoked) is refused before the CSR is parsed or signed, and spends nothing. The spend that
follows signing stays atomic, so a token spent or revoked in between is still refused."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from collector import pki as pki_module
from collector.api import lantern_pb2 as pb
from collector.convert import AgentDetails
from collector.pki import Pki, init_pki
from collector.ratelimit import RateLimiter
from collector.server import EnrollmentService
from collector.store import SqliteStore
from collector.testing import new_key_and_csr
from collector.tokens import create_token, hash_token
from tests.collector.conftest import FakeContext, RefusedError


class CountingPki:
    """The collector's real PKI, counting the CSRs it parses and the certificates it signs."""

    def __init__(self, real: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = real
        self.signed: list[x509.Certificate] = []
        self.parsed = 0
        self.during_signing: Callable[[], None] = lambda: None
        real_load = pki_module.load_csr

        def load_csr(csr_der: bytes) -> x509.CertificateSigningRequest:
            self.parsed += 1
            return real_load(csr_der)

        monkeypatch.setattr(pki_module, "load_csr", load_csr)

    def issue_agent_certificate(self, csr_der: bytes, agent_id: str, days: float) -> Any:
        self.during_signing()
        cert = self.real.issue_agent_certificate(csr_der, agent_id, days)
        self.signed.append(cert)
        return cert

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CountingPki:
    return CountingPki(init_pki(tmp_path / "ca", ("localhost",)), monkeypatch)


@pytest.fixture
def service(ca: CountingPki, store: SqliteStore) -> Iterator[EnrollmentService]:
    limiter = RateLimiter(1000.0, 1000)
    yield EnrollmentService(ca, store, 30.0, limiter)  # type: ignore[arg-type]


def enroll(service: EnrollmentService, token: str) -> pb.EnrollResponse:
    _, csr = new_key_and_csr()
    req = pb.EnrollRequest(token=token, csr_der=csr, agent=pb.AgentInfo(hostname="h"))
    return service.Enroll(req, FakeContext())


def used_up(store: SqliteStore) -> str:
    token = create_token(store, 3600)
    store.enroll(*_spend(token))
    return token


def _spend(token: str) -> tuple[Any, ...]:
    """``store.enroll`` arguments that spend one use of ``token`` for an agent "agt-other"."""
    return (hash_token(token), time.time(), "agt-other", AgentDetails("h", "", "", "", ""), "1", 0)


def revoked(store: SqliteStore) -> str:
    token = create_token(store, 3600)
    assert store.revoke_token(token.split("_")[1])
    return token


BAD_TOKENS: list[Any] = [
    pytest.param(
        lambda s: "lnt_deadbeef_guessed",
        grpc.StatusCode.UNAUTHENTICATED,
        "the enrolment token is not known to this collector",
        id="unknown",
    ),
    pytest.param(
        lambda s: create_token(s, 60, now=time.time() - 120),
        grpc.StatusCode.PERMISSION_DENIED,
        "expired at",
        id="expired",
    ),
    pytest.param(used_up, grpc.StatusCode.PERMISSION_DENIED, "has no uses left", id="used-up"),
    pytest.param(revoked, grpc.StatusCode.PERMISSION_DENIED, "has been revoked", id="revoked"),
]


@pytest.mark.parametrize(("make_token", "code", "message"), BAD_TOKENS)
def test_a_bad_token_is_refused_before_the_csr_is_parsed_or_signed(
    service: EnrollmentService,
    ca: CountingPki,
    store: SqliteStore,
    make_token: Callable[[SqliteStore], str],
    code: grpc.StatusCode,
    message: str,
) -> None:
    token = make_token(store)
    agents_before = store.agents()
    tokens_before = store.tokens()
    with pytest.raises(RefusedError) as err:
        enroll(service, token)
    assert err.value.args[0] == code
    assert message in err.value.args[1]
    assert (ca.parsed, ca.signed) == (0, [])
    assert store.agents() == agents_before
    assert store.tokens() == tokens_before  # checking spends nothing


def test_a_good_token_is_signed_once_and_spent_once(
    service: EnrollmentService, ca: CountingPki, store: SqliteStore
) -> None:
    token = create_token(store, 3600, uses=2)
    resp = enroll(service, token)
    (cert,) = ca.signed
    assert ca.parsed == 1
    assert x509.load_der_x509_certificate(resp.certificate_der) == cert
    (agent,), (t,) = store.agents(), store.tokens()
    assert (agent.id, agent.cert_serial) == (resp.agent_id, format(cert.serial_number, "x"))
    assert (t.uses_left, t.used) == (1, 1)


@pytest.mark.parametrize(
    ("meanwhile", "message", "agents", "used"),
    [
        (lambda s, t: s.revoke_token(t.split("_")[1]), "has been revoked", [], 0),
        (lambda s, t: s.enroll(*_spend(t)), "has no uses left", ["agt-other"], 1),
    ],
    ids=["revoked", "spent"],
)
def test_a_token_revoked_or_spent_while_signing_is_refused_by_the_atomic_spend(
    service: EnrollmentService,
    ca: CountingPki,
    store: SqliteStore,
    meanwhile: Callable[[SqliteStore, str], object],
    message: str,
    agents: list[str],
    used: int,
) -> None:
    token = create_token(store, 3600, uses=1)
    ca.during_signing = lambda: meanwhile(store, token)  # between the check and the spend
    with pytest.raises(RefusedError) as err:
        enroll(service, token)
    assert err.value.args[0] == grpc.StatusCode.PERMISSION_DENIED
    assert message in err.value.args[1]
    assert len(ca.signed) == 1  # the check passed: the race costs one signature, no more
    assert [a.id for a in store.agents()] == agents  # none from this call
    assert store.tokens()[0].used == used
