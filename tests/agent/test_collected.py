"""Every field that leaves an endpoint is declared once, and the notice and self-view follow it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from agent.collected import (
    COLLECTED,
    NOT_COLLECTED,
    CollectedField,
    employee_view,
    fields_of,
    privacy_notice,
    session_view,
    usage_view,
)
from agent.records import Session, UsageRecord
from agent.spool import SpoolEntry
from tests.agent.test_spool import make_session

# The words the schema uses for each Python annotation of a record field.
TYPE_WORDS = {
    "str": "text",
    "str | None": "text or empty",
    "int": "integer",
    "int | None": "integer or empty",
    "float": "time",
    "bool": "yes/no",
    "tuple[str, ...]": "list of text",
    "float | None": "number or empty",
    "tuple[tuple[str, str], ...]": "list of key/value pairs",
    "tuple[tuple[str, int], ...]": "list of label/count pairs",
    "tuple[tuple[str, str, int, int], ...]": "list of file kind/extension class/count/bytes",
}
# Fields whose float is a point in time rather than a number.
TIME_FIELDS = {"first_seen", "last_seen", "started", "ended"}


def test_every_session_field_is_declared_and_nothing_else() -> None:
    declared = [f.name for f in fields_of("Session")]
    assert declared == [f.name for f in fields(Session)]
    assert len(set(declared)) == len(declared)


@pytest.mark.parametrize("field", fields(Session), ids=lambda f: f.name)
def test_declared_type_matches_the_record(field: object) -> None:
    name, annotation = field.name, field.type  # type: ignore[attr-defined]
    (declared,) = [f for f in fields_of("Session") if f.name == name]
    assert declared.type == TYPE_WORDS[str(annotation)]


@pytest.mark.parametrize("f", COLLECTED, ids=lambda f: f"{f.record}.{f.name}")
def test_every_field_is_explained(f: CollectedField) -> None:
    for attr in ("description", "example", "purpose"):
        text = getattr(f, attr)
        assert text.strip() and text == text.strip(), attr
    assert f.description.endswith(".")


def test_only_session_and_usage_leave_the_endpoint() -> None:
    assert {f.record for f in COLLECTED} == {"Session", "UsageRecord"}


def test_every_usage_field_is_declared_and_nothing_else() -> None:
    declared = [f.name for f in fields_of("UsageRecord")]
    assert declared == [f.name for f in fields(UsageRecord)]


@pytest.mark.parametrize("field", fields(UsageRecord), ids=lambda f: f.name)
def test_declared_usage_type_matches_the_record(field: object) -> None:
    name, annotation = field.name, str(field.type)  # type: ignore[attr-defined]
    (declared,) = [f for f in fields_of("UsageRecord") if f.name == name]
    want = "time" if name in TIME_FIELDS else TYPE_WORDS[annotation]
    assert declared.type == want


def test_usage_view_is_exactly_the_schema() -> None:
    from tests.metering.test_metering_usage import make_usage_record

    view = usage_view(make_usage_record())
    assert list(view) == [f.name for f in fields_of("UsageRecord")]
    assert view["labels"] == [["finance.payment_card", 1]]


def test_the_notice_names_every_field_and_everything_not_collected() -> None:
    notice = privacy_notice()
    for f in COLLECTED:
        assert f"  - {f.name} ({f.type}): {f.description}" in notice.replace("\n    ", " ")
    flat = " ".join(notice.split())
    for item in NOT_COLLECTED:
        assert item in flat
    assert "prompts" in flat and "lantern me" in flat
    assert max(len(line) for line in notice.splitlines()) <= 88


def test_session_view_is_exactly_the_schema() -> None:
    s = make_session(hostnames=("a.example", "b.example"))
    view = session_view(s)
    assert list(view) == [f.name for f in fields_of("Session")]
    assert view["hostnames"] == ["a.example", "b.example"]
    assert view["bytes_up"] == 1200


def test_employee_view_shows_only_that_user_with_totals_per_tool() -> None:
    entries = [
        SpoolEntry(make_session(id="a", first_seen=10.0, last_seen=20.0), True, 1),
        SpoolEntry(
            make_session(id="b", first_seen=5.0, last_seen=50.0, bytes_up=None, bytes_down=7),
            False,
            None,
        ),
        SpoolEntry(
            make_session(id="c", tool="Cursor", first_seen=25.0, last_seen=30.0), False, None
        ),
        SpoolEntry(make_session(id="d", user="bob"), True, 1),
    ]
    view = employee_view("alice", entries)
    assert view["user"] == "alice"
    assert [s["id"] for s in view["sessions"]] == ["a", "b", "c"]
    assert [(s["sent"], s["sent_version"]) for s in view["sessions"]] == [
        (True, 1),
        (False, None),
        (False, None),
    ]
    assert view["tools"] == [
        {
            "tool": "ChatGPT",
            "sessions": 2,
            "first_seen": 5.0,
            "last_seen": 50.0,
            "bytes_up": 1200,
            "bytes_down": 54007,
        },
        {
            "tool": "Cursor",
            "sessions": 1,
            "first_seen": 25.0,
            "last_seen": 30.0,
            "bytes_up": 1200,
            "bytes_down": 54000,
        },
    ]
    assert view["privacy_notice"] == privacy_notice()
    assert view["not_collected"] == list(NOT_COLLECTED)


def test_the_notice_also_lists_what_the_agent_reports_about_itself() -> None:
    """Invariant 3: the heartbeat and agent details leave the endpoint too, so the notice that
    is generated from the schema names every one of them."""
    from agent.collected import AGENT_FIELDS, privacy_notice

    notice = privacy_notice()
    assert AGENT_FIELDS
    for f in AGENT_FIELDS:
        assert f"{f.record}.{f.name} (" in notice
