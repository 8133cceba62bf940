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

from agent.records import Session
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

COLLECTED: tuple[CollectedField, ...] = SESSION_FIELDS

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
