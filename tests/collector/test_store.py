"""The SQLite store: idempotent ingest, highest version kept, per-agent scoping, retention."""

from __future__ import annotations

import time

import pytest

from collector.api import lantern_pb2 as pb
from collector.convert import (
    AgentDetails,
    session_from_pb,
    session_to_event,
    session_to_pb,
    submit_to_batch,
)
from collector.exceptions import BadRequestError, StoreError
from collector.store import SqliteStore
from tests.collector.conftest import make_batch, make_session


def add_agent(store: SqliteStore, agent_id: str) -> None:
    from collector.tokens import create_token, hash_token

    token = create_token(store, 60)
    details = AgentDetails("h", "linux", "", "", "endpoint")
    store.enroll(hash_token(token), time.time(), agent_id, details, "1", 0.0)


def ingest(store: SqliteStore, agent_id: str, req: pb.SubmitRequest) -> tuple[int, int]:
    r = store.ingest(submit_to_batch(agent_id, req, time.time(), 1000))
    return r.accepted, r.duplicates


def test_session_round_trips_through_protobuf() -> None:
    s = make_session(parent_name="bash", bytes_down=None, bytes_up=0, hostnames=("a.com", "b.com"))
    m = session_to_pb(s)
    assert not m.HasField("bytes_down") and m.HasField("bytes_up")
    assert session_from_pb(pb.SessionEvent.FromString(m.SerializeToString())) == s


def test_the_same_batch_twice_is_stored_once(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    req = make_batch(5)
    assert ingest(store, "agt-1", req) == (5, 0)
    assert ingest(store, "agt-1", req) == (0, 5)
    assert store.db["events"].count == 5
    assert store.db["sessions"].count == 5


def test_the_highest_version_of_a_session_is_kept(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    v1, v2, v3 = (make_session(id="s", version=v, connections=v) for v in (1, 2, 3))
    for s in (v1, v3, v2):  # v2 arrives after v3: kept as an event, not as the state
        req = pb.SubmitRequest(batch_id=f"b{s.version}", events=[session_to_event(s)])
        assert ingest(store, "agt-1", req) == (1, 0)
    (row,) = store.db["sessions"].rows
    assert (row["version"], row["connections"]) == (3, 3)


def test_records_are_scoped_by_agent(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    add_agent(store, "agt-2")
    s = make_session(id="same")
    req = pb.SubmitRequest(batch_id="b", events=[session_to_event(s)])
    assert ingest(store, "agt-1", req) == (1, 0)
    assert ingest(store, "agt-2", req) == (1, 0)  # not a duplicate of another agent's event
    assert sorted(r["agent_id"] for r in store.db["sessions"].rows) == ["agt-1", "agt-2"]


def test_heartbeat_updates_the_inventory(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    req = pb.SubmitRequest(
        batch_id="hb",
        heartbeat=pb.Heartbeat(
            agent=pb.AgentInfo(hostname="new-name", os="linux", agent_version="0.2.0"),
            sent_at=1.0,
            counters={"capture.packets": 10},
            health="degraded",
            spool_rows=4,
            spool_dropped=1,
        ),
    )
    assert ingest(store, "agt-1", req) == (0, 0)
    a = store.agent("agt-1")
    assert a is not None
    assert (a.hostname, a.agent_version, a.health, a.counters, a.spool_rows, a.spool_dropped) == (
        "new-name",
        "0.2.0",
        "degraded",
        {"capture.packets": 10},
        4,
        1,
    )


def test_prune_removes_only_what_is_older(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    old = make_session(last_seen=1000.0, first_seen=900.0)
    new = make_session(last_seen=time.time())
    req = pb.SubmitRequest(batch_id="b", events=[session_to_event(old), session_to_event(new)])
    ingest(store, "agt-1", req)
    result = store.prune(older_than=2000.0)
    assert (result.sessions, result.events) == (1, 0)
    assert [r["id"] for r in store.db["sessions"].rows] == [new.id]


def test_a_closed_store_refuses_batches(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        ingest(store, "agt-1", make_batch(1))


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (pb.SubmitRequest(), "batch_id must be"),
        (pb.SubmitRequest(batch_id="b"), "neither events nor a heartbeat"),
        (
            pb.SubmitRequest(batch_id="b", events=[pb.Event(event_id="x")]),
            r"events\[0\] has no body",
        ),
        (
            pb.SubmitRequest(
                batch_id="b",
                events=[pb.Event(event_id="s:2", session=pb.SessionEvent(id="s", version=1))],
            ),
            r"events\[0\]\.event_id 's:2' must be",
        ),
        (
            pb.SubmitRequest(
                batch_id="b",
                events=[pb.Event(event_id="s:0", session=pb.SessionEvent(id="s", version=0))],
            ),
            "version must be at least 1",
        ),
        (
            pb.SubmitRequest(
                batch_id="b",
                events=[
                    pb.Event(
                        event_id="u",
                        usage=pb.UsageEvent(id="u", provider="openai", data_class="secret"),
                    )
                ],
            ),
            "data_class 'secret' is not one of",
        ),
    ],
    ids=["no-batch-id", "empty", "no-body", "event-id", "version", "data-class"],
)
def test_bad_batches_say_what_is_wrong(req: pb.SubmitRequest, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        submit_to_batch("agt-1", req, 0.0, 1000)


def test_too_many_events_are_refused() -> None:
    with pytest.raises(BadRequestError, match="the batch has 4 events; at most 3"):
        submit_to_batch("agt-1", make_batch(4), 0.0, 3)


def test_new_databases_get_large_pages(store: SqliteStore) -> None:
    from collector.store import PAGE_SIZE

    assert store.db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE


def _fill(store: SqliteStore, batches: int) -> None:
    add_agent(store, "agt-1")
    for b in range(batches):
        req = make_batch(50, batch_id=f"b{b}")
        assert ingest(store, "agt-1", req) == (50, 0)


def test_the_wal_is_checkpointed_in_the_background(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector.store as st

    monkeypatch.setattr(st, "WAL_CHECKPOINT_BYTES", 64 << 10)
    _fill(store, 20)
    deadline = time.monotonic() + 10
    while store.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.checkpoints >= 1
    assert store.forced_checkpoints == 0  # the writer never had to wait for one
    assert store.db["sessions"].count == 20 * 50


def test_a_wal_past_the_bound_is_checkpointed_by_the_writer(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import collector.store as st

    monkeypatch.setattr(st, "WAL_CHECKPOINT_BYTES", 1 << 40)  # the background one never runs
    monkeypatch.setattr(st, "WAL_FORCE_BYTES", 64 << 10)
    _fill(store, 20)
    assert store.checkpoints == 0
    assert store.forced_checkpoints >= 1
    # RESTART: the next transaction writes the WAL from its start again, so it stays near the
    # bound (without the forced checkpoints these 20 batches leave a WAL of about 3.5 MB)
    assert store._wal.stat().st_size < 1 << 20
    assert store.db["sessions"].count == 20 * 50
