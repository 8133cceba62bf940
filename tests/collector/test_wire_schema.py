"""DESIGN.md invariant 3: every field an agent sends is declared in agent/collected.py.

Transport-only fields carry no information about people or their use of AI; they are listed
here with the reason, and nothing else may be left out.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from agent import collected
from collector.api import lantern_pb2 as pb

# Which record of the schema each message an agent sends is declared under.
RECORD_OF = {
    "SessionEvent": "Session",
    "UsageEvent": "UsageRecord",
    "AgentInfo": "AgentInfo",
    "Heartbeat": "Heartbeat",
}
# Messages that only carry others (every field is transport or a declared record).
TRANSPORT_FIELDS = {
    ("EnrollRequest", "token"): "the one-time enrolment token: proves the right to enrol",
    ("EnrollRequest", "csr_der"): "the agent's public key to certify; the key is the device's own",
    ("EnrollRequest", "agent"): "an AgentInfo, declared field by field",
    ("SubmitRequest", "batch_id"): "random, names the batch in the acknowledgement",
    ("SubmitRequest", "events"): "the Event envelopes, checked below",
    ("SubmitRequest", "heartbeat"): "a Heartbeat, declared field by field",
    ("Event", "event_id"): "the record's id (and version): the collector dedups on it",
    ("Event", "session"): "a SessionEvent, declared field by field",
    ("Event", "usage"): "a UsageEvent, declared field by field",
    ("RenewRequest", "csr_der"): "the agent's public key to certify",
    ("BundleRequest", "kind"): "which bundle: catalog or policy",
    ("BundleRequest", "have_version"): "the content hash the agent already has",
}
# Sub-messages that are one declared field's value (their parts are described with it).
PART_OF_FIELD = {"Upload": ("UsageRecord", "uploads")}

SENT = ("EnrollRequest", "SubmitRequest", "RenewRequest", "BundleRequest")


def declared() -> set[tuple[str, str]]:
    fields = collected.COLLECTED + getattr(collected, "AGENT_FIELDS", ())
    return {(f.record, f.name) for f in fields}


def sent_fields() -> list[tuple[str, str]]:
    """(message, field) for every field of every message reachable from what agents send."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()

    def walk(d: Descriptor) -> None:
        if d.name in seen or d.GetOptions().map_entry:
            return
        seen.add(d.name)
        for f in d.fields:
            out.append((d.name, f.name))
            if f.type == FieldDescriptor.TYPE_MESSAGE and not f.message_type.GetOptions().map_entry:
                walk(f.message_type)

    for name in SENT:
        walk(pb.DESCRIPTOR.message_types_by_name[name])
    return out


@pytest.mark.parametrize(
    ("message", "field"),
    [mf for mf in sent_fields() if mf[0] != "UsageEvent"],
    ids=str,
)
def test_every_sent_field_is_declared_or_transport(message: str, field: str) -> None:
    if (message, field) in TRANSPORT_FIELDS:
        return
    if message in PART_OF_FIELD:
        assert PART_OF_FIELD[message] in declared()
        return
    assert message in RECORD_OF, f"{message} is sent but maps to no record of agent/collected.py"
    assert (RECORD_OF[message], field) in declared(), (
        f"{message}.{field} leaves the endpoint but is not declared in agent/collected.py"
    )


@pytest.mark.parametrize("field", [f for m, f in sent_fields() if m == "UsageEvent"], ids=str)
def test_every_usage_wire_field_is_declared(field: str) -> None:
    assert ("UsageRecord", field) in declared(), (
        f"UsageEvent.{field} leaves the endpoint but is not declared in agent/collected.py"
    )


def test_every_declared_record_field_is_on_the_wire() -> None:
    """The converse: the wire carries exactly the declared records, nothing left behind."""
    wire = {(RECORD_OF[m], f) for m, f in sent_fields() if m in RECORD_OF}
    assert declared() - wire == set()


def test_transport_allow_list_names_real_fields() -> None:
    assert set(TRANSPORT_FIELDS) <= set(sent_fields())
