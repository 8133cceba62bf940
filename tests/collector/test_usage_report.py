"""`lantern collector usage`: spend per provider and model, and the calls nobody could price."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.records import UsageRecord
from collector.api import lantern_pb2 as pb
from collector.convert import submit_to_batch, usage_to_event
from collector.pki import init_pki
from collector.store import SqliteStore, open_store
from lantern.cli import main
from tests.collector.test_store import add_agent
from tests.records import make_usage_record

NOW = time.time()


def _ingest(store: SqliteStore, *records: UsageRecord) -> None:
    req = pb.SubmitRequest(batch_id="b1", events=[usage_to_event(r) for r in records])
    store.ingest(submit_to_batch("agt-1", req, NOW, 1000))


def _fill(store: SqliteStore) -> None:
    add_agent(store, "agt-1")
    _ingest(
        store,
        make_usage_record(id="a", started=NOW - 60, input_tokens=100, output_tokens=10,
                          cost_usd=0.25),
        make_usage_record(id="b", started=NOW - 120, input_tokens=50, output_tokens=5,
                          cache_read_tokens=20, cost_usd=0.5),
        # a model genai-prices does not know: counted, no cost
        make_usage_record(id="c", started=NOW - 30, model="gpt-9-preview", input_tokens=7,
                          output_tokens=3, cost_usd=None),
        make_usage_record(id="d", started=NOW - 40, model="gpt-9-preview", input_tokens=None,
                          output_tokens=None, cost_usd=None, estimated=True),
        # older than the window
        make_usage_record(id="e", started=NOW - 30 * 86400, cost_usd=100.0),
        make_usage_record(id="f", started=NOW - 10, provider="anthropic",
                          model="claude-sonnet-4", input_tokens=1000, output_tokens=200,
                          reasoning_tokens=50, cost_usd=0.1),
    )  # fmt: skip


def test_usage_is_summed_per_model_and_unpriced_calls_are_counted(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "c.db") as store:
        _fill(store)
        rows = store.usage_by_model(NOW - 7 * 86400, NOW + 1)
    by = {(r.provider, r.model): r for r in rows}
    assert set(by) == {
        ("openai", "gpt-4o-mini"),
        ("openai", "gpt-9-preview"),
        ("anthropic", "claude-sonnet-4"),
    }
    mini = by["openai", "gpt-4o-mini"]
    assert (mini.requests, mini.input_tokens, mini.output_tokens, mini.cache_read_tokens) == (
        2,
        150,
        15,
        20,
    )
    assert mini.cost_usd == pytest.approx(0.75)
    assert mini.unpriced == 0
    unknown = by["openai", "gpt-9-preview"]
    assert (unknown.requests, unknown.unpriced, unknown.cost_usd, unknown.estimated) == (
        2,
        2,
        0.0,
        1,
    )
    assert unknown.input_tokens == 7  # only the call that reported tokens
    assert by["anthropic", "claude-sonnet-4"].reasoning_tokens == 50
    assert rows[0].model == "gpt-4o-mini"  # costliest first


def test_the_cli_prints_spend_and_names_the_unpriced_models(tmp_path: Path) -> None:
    data = tmp_path / "collector"
    init_pki(data, ("localhost",))
    with open_store(data) as store:
        _fill(store)
    runner = CliRunner()
    out = runner.invoke(main, ["collector", "usage", "--dir", str(data)])
    assert out.exit_code == 0, out.output
    assert "gpt-4o-mini" in out.stdout and "claude-sonnet-4" in out.stdout
    assert "5 call(s) in the last 7 days, $0.85 priced" in out.stdout
    assert "2 call(s) have no price, not guessed: openai/gpt-9-preview (2)" in out.stdout

    as_json = runner.invoke(main, ["collector", "usage", "--dir", str(data), "--json"])
    assert as_json.exit_code == 0
    objs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {o["model"]: o["unpriced"] for o in objs} == {
        "gpt-4o-mini": 0,
        "gpt-9-preview": 2,
        "claude-sonnet-4": 0,
    }

    wide = runner.invoke(main, ["collector", "usage", "--dir", str(data), "--days", "60"])
    assert "6 call(s) in the last 60 days, $100.85 priced" in wide.stdout


def test_an_empty_period_says_so(tmp_path: Path) -> None:
    data = tmp_path / "collector"
    init_pki(data, ("localhost",))
    with open_store(data):
        pass
    out = CliRunner().invoke(main, ["collector", "usage", "--dir", str(data), "--days", "1"])
    assert out.exit_code == 0
    assert "No metered calls in the last 1 days." in out.stdout


def test_a_missing_collector_is_a_clear_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["collector", "usage", "--dir", str(tmp_path / "none")])
    assert out.exit_code != 0
    assert "no collector in" in out.stderr
