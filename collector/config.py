"""The collector's declared options and its YAML config (``lantern collector serve --config``).

Keys are dotted; YAML may nest them (``listen: {host: ..., enroll_port: ...}``). A bad value
raises ``agent.exceptions.ConfigError`` naming the file, line, key and reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import load_config
from agent.options import Option, Options


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number from 0 (any free port) to 65535"


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


# Agents renew when a third of their certificate's lifetime is left, so a lifetime of seconds
# would have every agent renewing (a new key, a CA signature, a write) every few seconds.
MIN_CLIENT_CERT_SECONDS = 20.0
MIN_CLIENT_CERT_DAYS = MIN_CLIENT_CERT_SECONDS / 86400


def _cert_days(v: Any) -> str | None:
    if v >= MIN_CLIENT_CERT_DAYS:
        return None
    days = math.ceil(MIN_CLIENT_CERT_DAYS * 1e6) / 1e6  # rounded up, so it is enough as written
    return (
        f"must be at least {MIN_CLIENT_CERT_SECONDS:g} seconds ({days:.6f} days), not {v!r}: "
        "agents renew when a third of it is left"
    )


def _hostnames(v: Any) -> str | None:
    if not all(isinstance(h, str) and h and " " not in h for h in v):
        return "must be a list of host names or IP addresses"
    return None


OPTIONS: tuple[Option, ...] = (
    Option(
        "data_dir",
        Path,
        Path("."),
        "Where the CA, keys and database live; relative paths "
        "are relative to the config file. Created and initialised when empty.",
    ),
    Option("listen.host", str, "127.0.0.1", "Address to listen on (0.0.0.0 or :: for all)."),
    Option(
        "listen.enroll_port", int, 7443, "Enrolment port: TLS, no client certificate.", check=_port
    ),
    Option("listen.ingest_port", int, 7444, "Ingest and bundles port: mutual TLS.", check=_port),
    Option(
        "hostnames",
        list,
        ["localhost"],
        "Names agents use to reach the collector; they "
        "go into the server certificate with localhost and 127.0.0.1.",
        check=_hostnames,
    ),
    Option(
        "retention.days",
        float,
        180.0,
        "Delete events and sessions older than this.",
        check=_positive,
    ),
    Option(
        "retention.prune_interval",
        float,
        3600.0,
        "Seconds between retention runs.",
        check=_positive,
    ),
    Option(
        "rate_limit.per_second",
        float,
        20.0,
        "Requests per second each agent may make (token bucket refill rate).",
        check=_positive,
    ),
    Option(
        "rate_limit.burst",
        int,
        40,
        "Requests an agent may make at once (bucket size).",
        check=_positive,
    ),
    Option(
        "rate_limit.enroll_per_second",
        float,
        1.0,
        "Enrolment calls per second each client address may make, refilling its bucket "
        "(an IPv6 client counts as its /64). Agents behind one NAT share it and back off.",
        check=_positive,
    ),
    Option(
        "rate_limit.enroll_burst",
        int,
        20,
        "Enrolment calls one client address may make at once (bucket size).",
        check=_positive,
    ),
    Option(
        "rate_limit.enroll_max_addresses",
        int,
        10000,
        "Client addresses whose enrolment buckets are kept; past this the least recently "
        "seen is forgotten, so the table's memory stays bounded.",
        check=_positive,
    ),
    Option(
        "limits.max_message_bytes",
        int,
        4 * 1024 * 1024,
        "Largest request accepted.",
        check=_positive,
    ),
    Option("limits.max_batch_events", int, 5000, "Most events in one Submit.", check=_positive),
    Option(
        "pki.client_cert_days",
        float,
        30.0,
        "Validity of agent certificates (fractions allowed: 0.0003 is about 26 s; the least "
        "is 20 s, 0.000232); agents renew, with a new key pair, when a third of it is left.",
        check=_cert_days,
    ),
    Option(
        "pki.replaced_cert_grace_seconds",
        float,
        600.0,
        "After renewal, how long the certificate it replaced is still accepted once the agent "
        "has called with its new one (calls in flight on the old connection). Until that "
        "first call the old one stays valid, so an agent that missed the renewal's answer "
        "can retry.",
        check=_positive,
    ),
    Option(
        "server.workers",
        int,
        32,
        "Threads serving ingest calls; more lets more batches share one commit.",
        check=_positive,
    ),
    Option(
        "server.max_concurrent_calls",
        int,
        1024,
        "Calls in progress at once on each port; more are refused with RESOURCE_EXHAUSTED.",
        check=_positive,
    ),
    Option(
        "server.shutdown_grace",
        float,
        10.0,
        "Seconds SIGTERM waits for in-flight requests before closing the store.",
        check=_positive,
    ),
    Option(
        "bundles.catalog_dir",
        Path,
        None,
        "Directory of catalog YAML files sent to agents as the signed catalog bundle "
        "(relative to the config file). Unset: the catalog built into Lantern.",
    ),
    Option(
        "bundles.policy_dir",
        Path,
        None,
        "Directory of the organisation's policy YAML files sent to agents as the signed "
        "policy bundle, e.g. negotiated prices (relative to the config file). Unset: "
        "Lantern's default policies folder.",
    ),
)


def collector_options() -> Options:
    return Options(OPTIONS)


def setting_name(key: str) -> str:
    """The keyword-argument name of a dotted key: ``rate_limit.burst`` → ``rate_limit_burst``."""
    return key.replace(".", "_")


@dataclass(frozen=True, slots=True)
class Settings:
    """Validated collector settings (every path absolute)."""

    data_dir: Path
    listen_host: str
    enroll_port: int
    ingest_port: int
    hostnames: tuple[str, ...]
    retention_days: float
    prune_interval: float
    rate_per_second: float
    rate_burst: int
    enroll_rate_per_second: float
    enroll_rate_burst: int
    enroll_max_addresses: int
    max_message_bytes: int
    max_batch_events: int
    client_cert_days: float
    replaced_cert_grace: float
    workers: int
    max_concurrent_calls: int
    shutdown_grace: float
    bundle_dirs: dict[str, Path]  # kind -> directory; a kind not here uses the built-in one

    @classmethod
    def from_options(cls, o: Options, base: Path) -> Settings:
        data_dir = o["data_dir"]
        dirs = {
            kind: (d if d.is_absolute() else base / d).resolve()
            for kind, d in (
                ("catalog", o["bundles.catalog_dir"]),
                ("policy", o["bundles.policy_dir"]),
            )
            if d is not None
        }
        return cls(
            data_dir=(data_dir if data_dir.is_absolute() else base / data_dir).resolve(),
            listen_host=o["listen.host"],
            enroll_port=o["listen.enroll_port"],
            ingest_port=o["listen.ingest_port"],
            hostnames=tuple(o["hostnames"]),
            retention_days=o["retention.days"],
            prune_interval=o["retention.prune_interval"],
            rate_per_second=o["rate_limit.per_second"],
            rate_burst=o["rate_limit.burst"],
            enroll_rate_per_second=o["rate_limit.enroll_per_second"],
            enroll_rate_burst=o["rate_limit.enroll_burst"],
            enroll_max_addresses=o["rate_limit.enroll_max_addresses"],
            max_message_bytes=o["limits.max_message_bytes"],
            max_batch_events=o["limits.max_batch_events"],
            client_cert_days=o["pki.client_cert_days"],
            replaced_cert_grace=o["pki.replaced_cert_grace_seconds"],
            workers=o["server.workers"],
            max_concurrent_calls=o["server.max_concurrent_calls"],
            shutdown_grace=o["server.shutdown_grace"],
            bundle_dirs=dirs,
        )


def load_settings(path: Path | None, data_dir: Path | None = None) -> Settings:
    """Settings from ``path`` (None: defaults); ``data_dir`` overrides the file's."""
    options = load_config(path, collector_options())
    if data_dir is not None:
        options.set("data_dir", str(data_dir), "--dir")
    base = path.resolve().parent if path is not None else Path.cwd()
    return Settings.from_options(options, base)
