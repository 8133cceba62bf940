"""The one schema of every field that leaves an endpoint, and the notice and self-view made from it.

DESIGN.md invariant 3: a field is collected only if it is listed here. The privacy notice and the
employee view (``lantern me``) are generated from this list, and tests fail when a record grows a
field that is not listed. Only ``Session`` leaves the endpoint today; ``Usage`` (metering) and an
agent heartbeat join this list in the change that first spools them, not before.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.records import Session, UsageRecord
from agent.spool import SpoolEntry


@dataclass(frozen=True, slots=True)
class CollectedField:
    """One field of one record that an endpoint sends to the collector."""

    record: str  # the record class: "Session"
    name: str  # the dataclass field (and wire field) name
    type: str  # in words: "text", "integer", "time", "list of text", "yes/no", "... or empty"
    description: str  # what the value is, in plain language
    example: str
    purpose: str  # why Lantern needs it


def _session(name: str, type_: str, description: str, example: str, purpose: str) -> CollectedField:
    return CollectedField("Session", name, type_, description, example, purpose)


SESSION_FIELDS: tuple[CollectedField, ...] = (
    _session(
        "id",
        "text",
        "A random identifier of this session.",
        "3f2c9a0e5b7d4e1f",
        "To update the same session as it continues instead of counting it twice.",
    ),
    _session(
        "version",
        "integer",
        "How many times this session has been updated.",
        "4",
        "So the collector keeps the newest state of the session and ignores repeats.",
    ),
    _session(
        "user",
        "text",
        "Your login name on this computer.",
        "alice",
        "To show which people use which AI tools.",
    ),
    _session(
        "device",
        "text",
        "The name of this computer.",
        "alice-laptop",
        "To tell computers apart and to check that every agent reports.",
    ),
    _session(
        "tool",
        "text",
        "The AI tool that was used, as people call it.",
        "ChatGPT",
        "To show which AI tools are in use.",
    ),
    _session(
        "service_id",
        "text",
        "The AI service in Lantern's catalog that the tool belongs to.",
        "openai-chatgpt",
        "To apply the organisation's policy for that service.",
    ),
    _session(
        "category",
        "text",
        "The kind of AI tool.",
        "assistant",
        "To group tools in reports (assistants, coding tools, APIs, ...).",
    ),
    _session(
        "process_name",
        "text or empty",
        "The name of the program that connected to the AI service.",
        "firefox",
        "To tell a browser from a desktop app or a script.",
    ),
    _session(
        "process_exe",
        "text or empty",
        "The file path of that program.",
        "/usr/lib/firefox/firefox",
        "To identify the program where its name is ambiguous.",
    ),
    _session(
        "parent_name",
        "text or empty",
        "The name of the program that started that program.",
        "code",
        "To attribute scripts to the tool that ran them (a terminal, an editor).",
    ),
    _session(
        "first_seen",
        "time",
        "When the session started.",
        "2025-01-31 09:12:04",
        "To show when and how long tools are used.",
    ),
    _session(
        "last_seen",
        "time",
        "When the tool was last seen in this session.",
        "2025-01-31 09:40:51",
        "To show when and how long tools are used.",
    ),
    _session(
        "connections",
        "integer",
        "How many network connections the program made to the AI service.",
        "12",
        "To tell a glance from sustained use.",
    ),
    _session(
        "hostnames",
        "list of text",
        "The names of the AI service's servers that were contacted (only catalogued AI services).",
        "chatgpt.com, ab.chatgpt.com",
        "To show which parts of a service are used, such as its API or its web app.",
    ),
    _session(
        "seen_as",
        "list of text",
        "How the connection was recognised: dns, tls, quic, gquic, http or ip.",
        "dns, tls",
        "To judge how reliable the detection is.",
    ),
    _session(
        "bytes_up",
        "integer or empty",
        "How many bytes were sent to the AI service (a size, not the content).",
        "48213",
        "To estimate how much data goes to AI services.",
    ),
    _session(
        "bytes_down",
        "integer or empty",
        "How many bytes came back from the AI service (a size, not the content).",
        "912400",
        "To estimate how much the service is used.",
    ),
    _session(
        "closed",
        "yes/no",
        "Whether the session has ended (the tool was idle long enough).",
        "yes",
        "So the agent and the collector know the session will not change again.",
    ),
)


def _usage(name: str, type_: str, description: str, example: str, purpose: str) -> CollectedField:
    return CollectedField("UsageRecord", name, type_, description, example, purpose)


_TOKENS = "To show how much each model is used and what it costs."
USAGE_FIELDS: tuple[CollectedField, ...] = (
    _usage(
        "id",
        "text",
        "A random identifier of this AI call.",
        "9b1c0e4f2a7d4c3e",
        "So the collector stores each call once.",
    ),
    _usage(
        "user",
        "text",
        "Your login name on this computer.",
        "alice",
        "To show who uses which AI models, and at what cost.",
    ),
    _usage(
        "device", "text", "The name of this computer.", "alice-laptop", "To tell computers apart."
    ),
    _usage(
        "process_name",
        "text or empty",
        "The name of the program that made the call.",
        "python",
        "To tell an editor, a script or a browser apart.",
    ),
    _usage(
        "process_exe",
        "text or empty",
        "The file path of that program.",
        "/usr/bin/python3",
        "To identify the program where its name is ambiguous.",
    ),
    _usage(
        "service_id",
        "text or empty",
        "The AI service in Lantern's catalog that was called.",
        "openai-api",
        "To apply the organisation's policy for that service.",
    ),
    _usage(
        "host",
        "text",
        "The AI service's server name (only catalogued AI services).",
        "api.openai.com",
        "To tell the provider's API from its web app.",
    ),
    _usage(
        "started",
        "time",
        "When the call started.",
        "2025-01-31 09:12:04",
        "To show when AI services are used.",
    ),
    _usage(
        "ended",
        "time",
        "When the call ended.",
        "2025-01-31 09:12:09",
        "To show how long calls take.",
    ),
    _usage("provider", "text", "Who served the call.", "openai", "To show spend per provider."),
    _usage(
        "model",
        "text or empty",
        "The AI model that was used.",
        "gpt-4o-mini",
        "To show which models are used and to price the call.",
    ),
    _usage(
        "operation",
        "text",
        "The kind of call.",
        "chat",
        "To group calls (chat, embeddings, images, ...).",
    ),
    _usage(
        "endpoint",
        "text",
        "The provider's API the call used.",
        "chat_completions",
        "To read the right usage numbers for that API.",
    ),
    _usage(
        "streaming",
        "yes/no",
        "Whether the answer was streamed.",
        "yes",
        "To explain timing and usage differences.",
    ),
    _usage(
        "input_tokens",
        "integer or empty",
        "How many tokens were sent to the model (a count, not the text).",
        "1200",
        _TOKENS,
    ),
    _usage(
        "output_tokens",
        "integer or empty",
        "How many tokens the model produced (a count, not the text).",
        "350",
        _TOKENS,
    ),
    _usage(
        "cache_read_tokens",
        "integer or empty",
        "Of the input, how many tokens came from the provider's cache.",
        "1024",
        _TOKENS,
    ),
    _usage(
        "cache_write_tokens",
        "integer or empty",
        "Of the input, how many tokens were written to the provider's cache.",
        "0",
        _TOKENS,
    ),
    _usage(
        "reasoning_tokens",
        "integer or empty",
        "Of the output, how many tokens the model spent reasoning.",
        "128",
        _TOKENS,
    ),
    _usage(
        "estimated",
        "yes/no",
        "Whether the token counts are estimated from sizes "
        "(web apps) rather than reported by the provider.",
        "no",
        "To mark numbers that are approximate.",
    ),
    _usage(
        "cost_usd",
        "number or empty",
        "The estimated price of the call in US dollars.",
        "0.0042",
        "To show spend and check budgets.",
    ),
    _usage(
        "status_code",
        "integer or empty",
        "The HTTP status of the answer.",
        "200",
        "To count failed calls.",
    ),
    _usage(
        "deployment",
        "text or empty",
        "The Azure OpenAI deployment name, if any.",
        "prod-gpt4o",
        "To attribute spend to an Azure deployment.",
    ),
    _usage(
        "tags",
        "list of key/value pairs",
        "Attribution labels the calling program set "
        "on purpose (X-Lantern-* headers, the API's user or metadata fields).",
        "team=payments",
        "To show spend per team, feature or customer.",
    ),
    _usage(
        "key_fingerprint",
        "text or empty",
        "A keyed hash of the API key (the key itself cannot be recovered from it).",
        "4f9a...e21c",
        "To group calls by API key without keeping the key.",
    ),
    _usage(
        "key_hint",
        "text or empty",
        "The key's provider prefix and last four characters.",
        "sk-proj-...a1b2",
        "So the key's owner can recognise it.",
    ),
    _usage(
        "data_class",
        "text",
        "The most sensitive kind of data found in what was sent "
        "(public, internal, confidential or restricted).",
        "restricted",
        "To check the organisation's data policy.",
    ),
    _usage(
        "labels",
        "list of label/count pairs",
        "Which kinds of sensitive data were found "
        "in what was sent, and how often (never the data itself).",
        "finance.payment_card=1",
        "To check the organisation's data policy.",
    ),
    _usage(
        "labels_truncated",
        "yes/no",
        "Whether what was sent was too long to check whole.",
        "no",
        "To mark data-class results that may be incomplete.",
    ),
    _usage(
        "uploads",
        "list of file kind/extension class/count/bytes",
        "Files uploaded with the call: their kind, a class of their name's extension, how "
        "many and how large (never names or contents).",
        "pdf/document/1/48213",
        "To check the organisation's policy on files sent to AI services.",
    ),
    _usage(
        "bytes_up",
        "integer",
        "How many bytes were sent (a size, not the content).",
        "4821",
        "To estimate how much data goes to AI services.",
    ),
    _usage(
        "bytes_down",
        "integer",
        "How many bytes came back (a size, not the content).",
        "912",
        "To estimate how much the service is used.",
    ),
    _usage(
        "error",
        "text or empty",
        "Why the usage numbers could not be read, if they could "
        "not (an error kind, never content).",
        "MalformedBodyError",
        "To find calls that were not metered fully.",
    ),
)

COLLECTED: tuple[CollectedField, ...] = SESSION_FIELDS + USAGE_FIELDS

NOT_COLLECTED: tuple[str, ...] = (
    "what you type into AI tools (prompts) and what they answer (responses)",
    "the contents of files you upload, download or open",
    "web page contents, and the headers, cookies or passwords of any request",
    "the names of websites that are not AI services (your browsing history); only a count",
    "keystrokes, screenshots or recordings of your screen",
    "the contents of your email, chats or documents",
)


def fields_of(record: str) -> tuple[CollectedField, ...]:
    return tuple(f for f in COLLECTED if f.record == record)


def privacy_notice() -> str:
    """The plain-language notice of what Lantern records, generated from the schema."""
    bullet = textwrap.TextWrapper(width=88, initial_indent="  - ", subsequent_indent="    ")

    def para(text: str) -> str:
        return textwrap.fill(text, 88)

    parts = [
        "What Lantern records on this computer",
        "",
        para(
            "Lantern notes which AI tools are used on this computer, by whom and when. It never "
            "reads or keeps what you type into them or what they answer."
        ),
        "",
        para(
            "For each session of an AI tool (one tool used from one program until it is idle "
            "for a while) Lantern records:"
        ),
    ]
    for f in fields_of("Session"):
        parts.append(
            bullet.fill(
                f"{f.name} ({f.type}): {f.description} Example: {f.example}. Why: {f.purpose}"
            )
        )
    parts += [
        "",
        para(
            "Where metering is turned on, for each call to an AI service's API Lantern also "
            "records:"
        ),
    ]
    for f in fields_of("UsageRecord"):
        parts.append(
            bullet.fill(
                f"{f.name} ({f.type}): {f.description} Example: {f.example}. Why: {f.purpose}"
            )
        )
    parts += [
        "",
        para(
            "About the agent itself, not about you, each computer also reports (so IT can see "
            "that every agent works):"
        ),
    ]
    for f in AGENT_FIELDS:
        parts.append(
            bullet.fill(
                f"{f.record}.{f.name} ({f.type}): {f.description} Example: {f.example}. "
                f"Why: {f.purpose}"
            )
        )
    parts += ["", "Lantern never records:"]
    parts += [bullet.fill(item + ".") for item in NOT_COLLECTED]
    parts += [
        "",
        para(
            "These records are sent to your organisation's Lantern collector, where the people "
            "who run Lantern can see them. You can see yours with `lantern me`; other employees "
            "cannot see them."
        ),
    ]
    return "\n".join(parts)


def session_view(s: Session) -> dict[str, Any]:
    """Exactly the collected fields of ``s``, in schema order (lists for tuples, for JSON)."""
    out: dict[str, Any] = {}
    for f in fields_of("Session"):
        value = getattr(s, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def usage_view(u: UsageRecord) -> dict[str, Any]:
    """Exactly the collected fields of ``u``, in schema order (lists for tuples, for JSON)."""
    out: dict[str, Any] = {}
    for f in fields_of("UsageRecord"):
        value = getattr(u, f.name)
        out[f.name] = _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


def employee_view(user: str, entries: Iterable[SpoolEntry]) -> dict[str, Any]:
    """What ``lantern me`` shows: one user's sessions, per-tool totals and the notice."""
    sessions = []
    tools: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.session.user != user:
            continue  # the caller filters too; this view never shows anyone else
        view = session_view(e.session)
        view["sent"] = e.sent
        view["sent_version"] = e.sent_version
        sessions.append(view)
        s = e.session
        t = tools.setdefault(
            s.tool,
            {
                "tool": s.tool,
                "sessions": 0,
                "first_seen": s.first_seen,
                "last_seen": s.last_seen,
                "bytes_up": None,
                "bytes_down": None,
            },
        )
        t["sessions"] += 1
        t["first_seen"] = min(t["first_seen"], s.first_seen)
        t["last_seen"] = max(t["last_seen"], s.last_seen)
        for key in ("bytes_up", "bytes_down"):
            value = getattr(s, key)
            if value is not None:
                t[key] = (t[key] or 0) + value
    return {
        "user": user,
        "tools": sorted(tools.values(), key=lambda t: (-t["last_seen"], t["tool"])),
        "sessions": sessions,
        "not_collected": list(NOT_COLLECTED),
        "privacy_notice": privacy_notice(),
    }


# ---------------------------------------------------------------- the agent about itself
# What an agent sends about itself when it enrols (AgentInfo) and with every batch (Heartbeat).
# Not yet part of COLLECTED, privacy_notice() or the employee view: folding them in is the
# follow-up (tests/agent/test_collected.py pins COLLECTED to Session and UsageRecord).
# tests/collector/test_wire_schema.py checks every wire field against COLLECTED + AGENT_FIELDS.


def _agent(
    record: str, name: str, type_: str, description: str, example: str, purpose: str
) -> CollectedField:
    return CollectedField(record, name, type_, description, example, purpose)


AGENT_FIELDS: tuple[CollectedField, ...] = (
    _agent("AgentInfo", "hostname", "text", "The name of this computer.", "alice-laptop",
           "To list the computers that run Lantern."),
    _agent("AgentInfo", "os", "text", "The operating system family.", "linux",
           "To keep the right agent version on each kind of computer."),
    _agent("AgentInfo", "os_version", "text", "The operating system version.", "6.1.0",
           "To find computers whose system the agent does not support."),
    _agent("AgentInfo", "agent_version", "text", "The Lantern agent's version.", "0.1.0",
           "To find agents that need an update."),
    _agent("AgentInfo", "mode", "text", "How the agent runs: on a workstation or a gateway.",
           "endpoint", "To read its reports correctly."),
    _agent("Heartbeat", "agent", "the agent details above",
           "This agent's details, repeated so changes (an update) are seen.", "see above",
           "To keep the list of computers current."),
    _agent("Heartbeat", "sent_at", "time", "When the agent sent this report.",
           "2025-01-31 09:41:00", "To see which agents stopped reporting."),
    _agent("Heartbeat", "counters", "list of name/number pairs",
           "The agent's own health counters (packets seen, names dropped, errors), never "
           "names or content.", "capture.packets=120433",
           "To see that the agent works and stays within its limits."),
    _agent("Heartbeat", "health", "text", "The agent's overall state: ok, degraded or stopping.",
           "ok", "To alert IT to agents that need attention."),
    _agent("Heartbeat", "spool_rows", "integer", "How many records wait to be sent.", "12",
           "To see agents that cannot reach the collector."),
    _agent("Heartbeat", "spool_dropped", "integer",
           "How many records the agent had to drop because its spool was full.", "0",
           "To see whether any report was lost."),
)  # fmt: skip
