"""The store's record of an agent's certificates across renewals, the rule the gate applies to
it, and the migration that added the columns to an existing database."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from collector.exceptions import AgentRefusedError, CertificateReplacedError
from collector.server import replaced_certificate
from collector.store import MIGRATIONS, SCHEMA_VERSION, AgentRecord, SqliteStore
from tests.collector.test_store import add_agent  # enrols with certificate serial "1"

NOW = 1_760_000_000.0
GRACE = 600.0


def agent(store: SqliteStore, agent_id: str = "agt-1") -> AgentRecord:
    found = store.agent(agent_id)
    assert found is not None
    return found


def certs(store: SqliteStore) -> tuple[str, str | None, float | None, float | None]:
    a = agent(store)
    return (a.cert_serial, a.prev_cert_serial, a.cert_renewed_at, a.cert_first_used_at)


def test_an_enrolled_agent_has_one_certificate(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    assert certs(store) == ("1", None, None, None)
    assert not store.cert_in_use("agt-1", "1", NOW)  # nothing replaced: nothing to note


def test_renewing_with_the_current_certificate_makes_it_the_previous_one(
    store: SqliteStore,
) -> None:
    add_agent(store, "agt-1")
    store.renewed("agt-1", "1", "2", NOW + 86400, NOW)
    assert certs(store) == ("2", "1", NOW, None)
    assert agent(store).cert_not_after == NOW + 86400
    assert store.cert_in_use("agt-1", "2", NOW + 5)
    assert not store.cert_in_use("agt-1", "2", NOW + 9)  # the first use is kept
    assert not store.cert_in_use("agt-1", "1", NOW + 9)  # the old one is not "in use"
    assert certs(store) == ("2", "1", NOW, NOW + 5)
    store.renewed("agt-1", "2", "3", NOW + 2 * 86400, NOW + 100)
    assert certs(store) == ("3", "2", NOW + 100, None)  # "1" is forgotten


def test_renewing_again_with_the_old_certificate_while_the_new_one_is_unused(
    store: SqliteStore,
) -> None:
    # The answer to the first renewal was lost (or the agent crashed before switching): it
    # still holds "1" and asks again. "2" was never used and is dropped; "1" stays accepted.
    add_agent(store, "agt-1")
    store.renewed("agt-1", "1", "2", NOW + 86400, NOW)
    store.renewed("agt-1", "1", "3", NOW + 86400, NOW + 300)
    assert certs(store) == ("3", "1", NOW + 300, None)


@pytest.mark.parametrize("presented", ["1", "ff"], ids=["previous-after-the-switch", "unknown"])
def test_renewing_with_a_replaced_certificate_is_refused_and_records_nothing(
    store: SqliteStore, presented: str
) -> None:
    add_agent(store, "agt-1")
    store.renewed("agt-1", "1", "2", NOW + 86400, NOW)
    assert store.cert_in_use("agt-1", "2", NOW + 1)  # the agent has switched to "2"
    before = certs(store)
    with pytest.raises(CertificateReplacedError, match="was replaced by renewal"):
        store.renewed("agt-1", presented, "3", NOW + 86400, NOW + 2)
    assert certs(store) == before


def test_renewing_an_unknown_or_revoked_agent_is_refused(store: SqliteStore) -> None:
    with pytest.raises(AgentRefusedError, match="not enrolled"):
        store.renewed("agt-nope", "1", "2", NOW, NOW)
    add_agent(store, "agt-1")
    assert store.revoke_agent("agt-1", NOW)
    with pytest.raises(AgentRefusedError, match="is revoked") as err:
        store.renewed("agt-1", "1", "2", NOW, NOW)
    assert not isinstance(err.value, CertificateReplacedError)
    assert certs(store) == ("1", None, None, None)


# ---------------------------------------------------------------- the gate's rule


def record(**fields: object) -> AgentRecord:
    base = AgentRecord(
        "agt-1", "h", "linux", "", "", "endpoint", NOW, NOW, NOW, "2", NOW + 86400, "t", "",
        {}, 0, 0, False, None, None, None,
    )  # fmt: skip
    return replace(base, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "serial", "now", "replaced"),
    [
        ({}, "2", NOW, False),  # never renewed: its one certificate
        ({}, "1", NOW, True),  # never renewed: any other serial of this agent id
        ({"prev_cert_serial": "1"}, "2", NOW, False),
        ({"prev_cert_serial": "1"}, "1", NOW + 86400, False),  # new one unused: old accepted
        ({"prev_cert_serial": "1", "cert_first_used_at": NOW}, "1", NOW + GRACE - 1, False),
        ({"prev_cert_serial": "1", "cert_first_used_at": NOW}, "1", NOW + GRACE, True),
        ({"prev_cert_serial": "1", "cert_first_used_at": NOW}, "2", NOW + 86400, False),
        ({"prev_cert_serial": "1"}, "0", NOW, True),  # replaced two renewals ago
    ],
)
def test_which_certificates_renewal_has_replaced(
    fields: dict[str, object], serial: str, now: float, replaced: bool
) -> None:
    assert replaced_certificate(record(**fields), serial, now, GRACE) is replaced


# ---------------------------------------------------------------- migration


def test_a_database_of_schema_1_is_migrated_and_keeps_its_agents(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO agents (id, hostname, os, os_version, agent_version, mode, enrolled_at, "
        "first_seen, last_seen, cert_serial, cert_not_after, token_id) "
        "VALUES ('agt-old', 'h', 'linux', '', '', 'endpoint', 1, 1, 1, 'abc', 2, 't')"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with SqliteStore(path) as store:
        a = agent(store, "agt-old")
        assert (a.cert_serial, a.prev_cert_serial, a.cert_first_used_at) == ("abc", None, None)
        store.renewed("agt-old", "abc", "def", 3.0, time.time())
        assert agent(store, "agt-old").prev_cert_serial == "abc"
        version = store.db.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 2
