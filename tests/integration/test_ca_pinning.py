"""An agent pinned only by ``collector.ca_sha256`` (no CA file) against a real collector on
loopback: it finds the CA in the chain the collector presents, enrols and uploads; a wrong
fingerprint, or one of a certificate that is no CA, stops it with a message naming the setting,
before its token is spent."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.exceptions import EnrollmentError
from collector.pki import pki_dir
from collector.testing import CollectorProcess, enroll_agent, running_collector
from tests.integration.agent_harness import (
    agent_options,
    expected_fingerprints,
    put_sessions,
    query,
    running_agent,
    wait_stored,
)

pytestmark = pytest.mark.slow


def sha256_of_pem(pem: bytes) -> str:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def with_colons(hexed: str) -> str:
    return ":".join(hexed[i : i + 2] for i in range(0, len(hexed), 2)).upper()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorProcess]:
    with running_collector(tmp_path) as c:
        yield c


def test_only_the_ca_fingerprint_is_enough_to_enrol_and_upload(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    fingerprint = with_colons(sha256_of_pem(collector.ca_cert_pem))  # as an MDM profile has it
    options = agent_options(
        tmp_path / "agent",
        collector,
        collector.create_token("1h"),
        {"collector.ca_sha256": fingerprint},
        ca_file=False,
    )
    assert options["collector.ca_file"] is None
    with running_agent(options) as agent:
        put_sessions(agent.spool, range(5))
        wait_stored(collector, agent, 5)
        agent_id = (agent.identity_dir / "agent_id").read_text().strip()
        # the CA the agent found and now trusts alone is the collector's, byte for byte
        assert (agent.identity_dir / "ca.pem").read_bytes() == collector.ca_cert_pem
        assert agent.uploader.problems() == []
    stored = {row[0] for row in query(collector, "SELECT fingerprint FROM events")}
    assert stored == expected_fingerprints(agent_id, range(5))


def test_a_wrong_fingerprint_stops_enrolment_naming_the_setting(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    token = collector.create_token("1h", uses=1)
    options = agent_options(
        tmp_path / "agent",
        collector,
        token,
        {"collector.ca_sha256": "ab" * 32},
        ca_file=False,
    )
    with running_agent(options, start=False) as agent:
        with pytest.raises(EnrollmentError) as err:
            agent.link.transport()
        message = str(err.value)
        assert "collector.ca_sha256" in message
        assert "ab" * 32 in message and "no CA certificate with fingerprint" in message
        assert not (agent.identity_dir / "client.pem").exists()
        put_sessions(agent.spool, range(1))
        agent.uploader.step()  # the uploader stops visibly instead of retrying forever
        assert agent.uploader.state == "stopped"
        assert "collector.ca_sha256" in (agent.uploader.problem or "")
    # nothing was sent before the CA was pinned: the one-use token is still unspent
    assert enroll_agent(collector, token).agent_id.startswith("agt-")


def test_the_fingerprint_of_the_server_certificate_is_not_taken_for_a_ca(
    tmp_path: Path, collector: CollectorProcess
) -> None:
    leaf = sha256_of_pem((pki_dir(collector.data_dir) / "server.crt").read_bytes())
    options = agent_options(
        tmp_path / "agent",
        collector,
        collector.create_token("1h"),
        {"collector.ca_sha256": leaf},
        ca_file=False,
    )
    with (
        running_agent(options, start=False) as agent,
        pytest.raises(EnrollmentError, match=r"collector\.ca_sha256 is not a CA"),
    ):
        agent.link.transport()
