"""`lantern agent ...` and `lantern me`: run the agent, and see what it keeps and reports."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from agent.collected import employee_view, session_view
from agent.exceptions import (
    AgentError,
    AgentUnavailableError,
    LocalApiError,
    SpoolError,
    StatusError,
)
from agent.localapi import query, user_name
from agent.options import Options
from agent.spool import Spool
from agent.state import AgentStatus, StateDir, client_candidates, read_status
from lantern.output import print_table

# Modules whose declare_options(options) fill the agent's option registry, in this order.
DECLARING_MODULES: tuple[str, ...] = (
    "agent.service",
    "agent.capture.live",
    "agent.watchdog",
    "agent.attribution",
    "agent.sessions",
    "agent.state",
    "agent.enroll",
    "agent.uploader",
    "agent.bundles",
    "agent.metering.supervisor",
)

F = TypeVar("F", bound=Callable[..., Any])


def all_options() -> Options:
    options = Options()
    for name in DECLARING_MODULES:
        importlib.import_module(name).declare_options(options)
    return options


def _fail(message: str) -> NoReturn:
    click.echo(f"lantern: {message}", err=True)
    sys.exit(2)


def state_dir_option(f: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Where the agent keeps its spool, socket and status file "
        "(default: /var/lib/lantern and /run/lantern as root, ~/.local/state/lantern otherwise).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="One JSON object.")(f)


def _explicit(state_dir: Path | None) -> StateDir | None:
    return StateDir.at(state_dir) if state_dir is not None else None


def _open_spool(explicit: StateDir | None) -> Spool:
    """The first spool that exists among the candidates, read-only."""
    candidates = client_candidates(explicit)
    for sd in candidates:
        if sd.spool.exists():
            return Spool(sd.spool, readonly=True)
    where = " or ".join(str(sd.spool) for sd in candidates)
    raise SpoolError(f"no spool at {where}")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def _sent(view: dict[str, Any]) -> str:
    if view["sent"]:
        return "yes"
    if view["sent_version"]:
        return f"v{view['sent_version']} of v{view['version']}"
    return "not yet"


@click.group("agent")
def agent() -> None:
    """Run the Lantern agent and see what it keeps (needs root or the agent's user)."""


@agent.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The agent's YAML config (default: built-in defaults).",
)
@click.option(
    "--pcap",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read packets from this capture file instead of the live interface.",
)
def run(config_path: Path | None, pcap: Path | None) -> None:
    """Run the agent in the foreground until stopped."""
    # imported here: the service pulls in capture, which the other commands do not need
    service = importlib.import_module("agent.service")
    try:
        service.run_agent(config_path, pcap)
    except AgentError as exc:
        _fail(str(exc))


@agent.command()
@json_option
@state_dir_option
def sessions(as_json: bool, state_dir: Path | None) -> None:
    """List every spooled session of every user, and whether the collector has it."""
    try:
        with _open_spool(_explicit(state_dir)) as spool:
            entries = spool.entries()
            path = spool.path
    except SpoolError as exc:
        hint = "" if os.geteuid() == 0 else " (the spool is readable by root only)"
        _fail(f"{exc}{hint}")
    views = []
    for e in entries:
        view = session_view(e.session)
        view["sent"] = e.sent
        view["sent_version"] = e.sent_version
        views.append(view)
    if as_json:
        click.echo(json.dumps({"spool": str(path), "sessions": views}))
        return
    if not views:
        click.echo(f"No sessions in {path}.")
        return
    _session_table(views, with_user=True)
    click.echo(f"\n{len(views)} session(s) in {path}")


def _session_table(views: list[dict[str, Any]], *, with_user: bool) -> None:
    header = ("USER",) if with_user else ()
    rows = [
        (
            *((v["user"],) if with_user else ()),
            v["tool"],
            v["process_name"] or "-",
            _when(v["first_seen"]),
            _when(v["last_seen"]),
            str(v["connections"]),
            _size(v["bytes_up"]),
            _size(v["bytes_down"]),
            "closed" if v["closed"] else "open",
            _sent(v),
        )
        for v in views
    ]
    columns = ("TOOL", "PROCESS", "FIRST SEEN", "LAST SEEN", "CONN", "UP", "DOWN", "STATE", "SENT")
    print_table((*header, *columns), rows)


@agent.command()
@json_option
@state_dir_option
def status(as_json: bool, state_dir: Path | None) -> None:
    """Show whether the agent runs, its health, counters and spool size.

    Exit status: 0 when the agent answers, 3 when only a stale status file was found (shown),
    2 when there is neither.
    """
    tried: list[str] = []
    source, st = None, None
    for sd in client_candidates(_explicit(state_dir)):
        try:
            st = AgentStatus.from_json(query(sd.socket, "status"))
            source = "agent"
            break
        except (LocalApiError, StatusError) as exc:
            tried.append(str(exc))
        try:
            st = read_status(sd.status_file)
            source = "status_file"
            break
        except StatusError as exc:
            tried.append(str(exc))
    if st is None:
        _fail("no agent is running: " + "; ".join(tried))
    running = source == "agent" or st.is_current()
    if as_json:
        click.echo(json.dumps({"running": running, "source": source, "status": st.to_json()}))
    else:
        _print_status(st, running)
    if not running:
        sys.exit(3)


def _print_status(st: AgentStatus, running: bool) -> None:
    if running:
        up = _duration(time.time() - st.started)
        click.echo(f"agent: running (pid {st.pid}, up {up}), health {st.health}")
    else:
        click.echo(f"agent: not running; last status written {_when(st.updated)}")
    for problem in st.problems:
        click.echo(f"  problem: {problem}")
    if st.spool is not None:
        sp = st.spool
        click.echo(
            f"spool: {sp.rows:,} sessions, {sp.unsent:,} unsent, {sp.dropped:,} dropped "
            f"({sp.dropped_unsent:,} never sent), {_size(sp.file_bytes)}"
        )
    if st.counters:
        click.echo("counters:")
        rows = [(f"  {k}", f"{v:,}") for k, v in sorted(st.counters.items())]
        print_table(("  NAME", "COUNT"), rows)


@agent.command("config-keys")
def config_keys() -> None:
    """List every configuration key with its type, default and meaning."""
    for opt in all_options().declared():
        default = "none" if opt.default is None else json.dumps(opt.default, default=str)
        extra = ", secret: use {$env: NAME} or {$file: PATH}" if opt.secret else ""
        click.echo(f"{opt.key}  ({opt.type.__name__.lower()}, default: {default}{extra})")
        click.echo(f"    {opt.help}")


@click.command()
@json_option
@state_dir_option
def me(as_json: bool, state_dir: Path | None) -> None:
    """Show what Lantern records about you on this computer, and what it has sent."""
    explicit = _explicit(state_dir)
    user = user_name(os.geteuid())
    view: dict[str, Any] | None = None
    source = "agent"
    unavailable: list[str] = []
    for sd in client_candidates(explicit):
        try:
            view = query(sd.socket, "me")
            break
        except AgentUnavailableError as exc:
            unavailable.append(str(exc))
        except LocalApiError as exc:
            _fail(f"the agent refused: {exc}")
    if view is None:
        source = "spool"
        try:
            with _open_spool(explicit) as spool:
                view = employee_view(user, spool.entries(user=user))
        except SpoolError as exc:
            _fail(f"no agent is running ({'; '.join(unavailable)}) and {exc}")
    view = {"source": source, **view}
    if as_json:
        click.echo(json.dumps(view))
        return
    _print_me(view)


def _print_me(view: dict[str, Any]) -> None:
    origin = "the running agent" if view["source"] == "agent" else "the spool (agent not running)"
    click.echo(f"What Lantern has recorded about {view['user']} on this computer ({origin})")
    click.echo()
    if not view["sessions"]:
        click.echo("No AI tool use recorded.")
    else:
        print_table(
            ("TOOL", "SESSIONS", "FIRST SEEN", "LAST SEEN", "UP", "DOWN"),
            [
                (
                    t["tool"],
                    str(t["sessions"]),
                    _when(t["first_seen"]),
                    _when(t["last_seen"]),
                    _size(t["bytes_up"]),
                    _size(t["bytes_down"]),
                )
                for t in view["tools"]
            ],
        )
        click.echo()
        _session_table(view["sessions"], with_user=False)
        sent = sum(1 for s in view["sessions"] if s["sent"])
        click.echo(
            f"\n{sent} of {len(view['sessions'])} session(s) sent to the collector as shown; "
            "the others are sent when the agent next reaches it."
        )
    click.echo()
    click.echo(view["privacy_notice"])
