"""`lantern collector ...`: initialise, serve, and manage enrolment tokens and agents."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from agent.exceptions import ConfigError
from collector.config import Settings, load_settings
from collector.exceptions import CollectorError
from collector.pki import init_pki, is_initialised, pki_dir
from collector.store import SqliteStore, open_store
from collector.tokens import create_token, parse_duration
from lantern.output import print_table

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"lantern: {message}", err=True)
    sys.exit(code)


def data_options(f: F) -> F:
    f = click.option(
        "--dir",
        "data_dir",
        type=click.Path(path_type=Path, file_okay=False),
        envvar="LANTERN_COLLECTOR_DIR",
        default=None,
        help="The collector's data directory (CA, keys, database); overrides the config's "
        "data_dir. Default: $LANTERN_COLLECTOR_DIR, else the config's, else the current one.",
    )(f)
    return click.option(
        "--config",
        "config",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="The collector's YAML config file.",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")(f)


def _settings(config: Path | None, data_dir: Path | None) -> Settings:
    if config is not None and not config.is_file():
        _fail(f"{config}: no such config file", 2)
    try:
        return load_settings(config, data_dir)
    except ConfigError as exc:
        _fail(str(exc), 2)


def _open_store(s: Settings) -> SqliteStore:
    if not is_initialised(s.data_dir):
        _fail(f"no collector in {s.data_dir}; run `lantern collector init` (or serve) first")
    return open_store(s.data_dir)


def _iso(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


@click.group()
def collector() -> None:
    """The central collector: enrols agents, stores what they report, signs bundles."""


@collector.command()
@data_options
@click.option(
    "--hostname",
    "hostnames",
    multiple=True,
    help="A name agents use to reach the collector (repeatable); default: the config's "
    "hostnames. localhost and 127.0.0.1 are always included.",
)
def init(config: Path | None, data_dir: Path | None, hostnames: tuple[str, ...]) -> None:
    """Create the collector's CA, server certificate and bundle-signing key, and its database."""
    s = _settings(config, data_dir)
    try:
        if is_initialised(s.data_dir):
            _fail(f"{pki_dir(s.data_dir)} is already initialised; nothing changed")
        pki = init_pki(s.data_dir, hostnames or s.hostnames)
        open_store(s.data_dir).close()
    except CollectorError as exc:
        _fail(str(exc))
    click.echo(f"initialised the collector in {s.data_dir}")
    click.echo(f"CA certificate (give it to agents): {pki_dir(s.data_dir) / 'ca.crt'}")
    click.echo(f"bundle-signing public key: {pki_dir(s.data_dir) / 'bundle-signing.pub'}")
    sans = ", ".join(hostnames or s.hostnames)
    click.echo(f"server certificate names: {sans}, localhost, 127.0.0.1, ::1")
    del pki


@collector.command()
@data_options
def serve(config: Path | None, data_dir: Path | None) -> None:
    """Run the collector until SIGTERM or SIGINT, which drain in-flight batches and exit 0.

    An empty data directory is initialised first (CA, keys, database)."""
    # grpc is imported only here: `lantern` must start on endpoints without the collector extra
    from collector.server import Collector  # noqa: PLC0415

    s = _settings(config, data_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = Collector(s)
        bound = server.start()
    except (CollectorError, OSError) as exc:
        _fail(f"cannot start the collector: {exc}")
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    click.echo(
        f"lantern collector: enrolment on {s.listen_host}:{bound.enroll_port} (TLS), "
        f"ingest on {s.listen_host}:{bound.ingest_port} (mutual TLS), data in {s.data_dir}"
    )
    sys.stdout.flush()
    while not stop.wait(3600):
        pass
    click.echo(f"lantern collector: stopping (up to {s.shutdown_grace:g} s for in-flight calls)")
    server.stop()
    click.echo("lantern collector: stopped")


@collector.group()
def token() -> None:
    """Enrolment tokens: create, list, revoke."""


@token.command("create")
@data_options
@click.option("--ttl", default="24h", show_default=True, help="Lifetime: 30m, 24h, 7d, ...")
@click.option("--uses", default=1, show_default=True, type=int, help="How many agents may enrol.")
def token_create(config: Path | None, data_dir: Path | None, ttl: str, uses: int) -> None:
    """Create a token and print it (shown once; only its hash is stored)."""
    try:
        seconds = parse_duration(ttl)
    except ValueError as exc:
        _fail(f"--ttl: {exc}", 2)
    s = _settings(config, data_dir)
    try:
        with _open_store(s) as store:
            click.echo(create_token(store, seconds, uses))
    except CollectorError as exc:
        _fail(str(exc))


@token.command("list")
@data_options
@json_option
def token_list(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """List tokens: id, expiry, uses left, state (never the token itself)."""
    s = _settings(config, data_dir)
    now = time.time()
    try:
        with _open_store(s) as store:
            tokens = store.tokens()
    except CollectorError as exc:
        _fail(str(exc))

    def state(revoked: bool, expires_at: float, uses_left: int) -> str:
        if revoked:
            return "revoked"
        if expires_at <= now:
            return "expired"
        return "used up" if uses_left <= 0 else "active"

    if as_json:
        for t in tokens:
            row = asdict(t) | {"state": state(t.revoked, t.expires_at, t.uses_left)}
            click.echo(json.dumps(row, sort_keys=True))
        return
    print_table(
        ("ID", "CREATED", "EXPIRES", "USES LEFT", "USED", "STATE"),
        [
            (t.id, _iso(t.created_at), _iso(t.expires_at), str(t.uses_left), str(t.used),
             state(t.revoked, t.expires_at, t.uses_left))
            for t in tokens
        ],
    )  # fmt: skip


@token.command("revoke")
@data_options
@click.argument("token_id")
def token_revoke(config: Path | None, data_dir: Path | None, token_id: str) -> None:
    """Revoke a token by its id (from `token list`) so no agent can enrol with it."""
    s = _settings(config, data_dir)
    if token_id.startswith("lnt_"):
        token_id = token_id.split("_")[1]  # the whole token was given: its id is the 2nd part
    try:
        with _open_store(s) as store:
            done = store.revoke_token(token_id)
    except CollectorError as exc:
        _fail(str(exc))
    if not done:
        _fail(f"no active token with id {token_id}")
    click.echo(f"revoked token {token_id}")


@collector.group()
def agents() -> None:
    """Enrolled agents: list, revoke."""


@agents.command("list")
@data_options
@json_option
def agents_list(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """List enrolled agents with their last heartbeat."""
    s = _settings(config, data_dir)
    try:
        with _open_store(s) as store:
            found = store.agents()
    except CollectorError as exc:
        _fail(str(exc))
    if as_json:
        for a in found:
            click.echo(json.dumps(asdict(a), sort_keys=True))
        return
    print_table(
        ("ID", "HOSTNAME", "OS", "VERSION", "MODE", "LAST SEEN", "HEALTH", "CERT EXPIRES",
         "STATE"),
        [
            (a.id, a.hostname, a.os, a.agent_version, a.mode, _iso(a.last_seen), a.health,
             _iso(a.cert_not_after), "revoked" if a.revoked else "active")
            for a in found
        ],
    )  # fmt: skip


@agents.command("revoke")
@data_options
@click.argument("agent_id")
def agents_revoke(config: Path | None, data_dir: Path | None, agent_id: str) -> None:
    """Revoke an agent: every later call with its certificate is refused."""
    s = _settings(config, data_dir)
    try:
        with _open_store(s) as store:
            done = store.revoke_agent(agent_id, time.time())
    except CollectorError as exc:
        _fail(str(exc))
    if not done:
        _fail(f"no active agent with id {agent_id}")
    click.echo(f"revoked agent {agent_id}")


@collector.command()
@data_options
@json_option
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=7.0,
    show_default=True,
    help="Report the calls started in the last DAYS days.",
)
def usage(config: Path | None, data_dir: Path | None, as_json: bool, days: float) -> None:
    """Spend and tokens of metered AI calls per provider and model, and the calls nobody
    could price (an unknown model is counted, never priced by guess)."""
    s = _settings(config, data_dir)
    until = time.time()
    try:
        with _open_store(s) as store:
            rows = store.usage_by_model(until - days * 86400, until)
    except CollectorError as exc:
        _fail(str(exc))
    if as_json:
        for r in rows:
            click.echo(json.dumps(asdict(r), sort_keys=True))
        return
    if not rows:
        click.echo(f"No metered calls in the last {days:g} days.")
        return
    print_table(
        ("PROVIDER", "MODEL", "CALLS", "INPUT TOKENS", "OUTPUT TOKENS", "CACHE READ",
         "REASONING", "COST USD", "UNPRICED"),
        [
            (r.provider, r.model or "-", f"{r.requests:,}", f"{r.input_tokens:,}",
             f"{r.output_tokens:,}", f"{r.cache_read_tokens:,}", f"{r.reasoning_tokens:,}",
             f"{r.cost_usd:,.2f}", f"{r.unpriced:,}")
            for r in rows
        ],
    )  # fmt: skip
    calls = sum(r.requests for r in rows)
    unpriced = [r for r in rows if r.unpriced]
    click.echo()
    click.echo(
        f"{calls:,} call(s) in the last {days:g} days, ${sum(r.cost_usd for r in rows):,.2f} "
        f"priced; {sum(r.estimated for r in rows):,} with tokens estimated from sizes (web apps)."
    )
    if unpriced:
        names = ", ".join(
            f"{r.provider}/{r.model or '(no model named)'} ({r.unpriced:,})" for r in unpriced
        )
        click.echo(
            f"{sum(r.unpriced for r in unpriced):,} call(s) have no price, not guessed: {names}"
        )


if __name__ == "__main__":
    collector()
