"""The ``lantern meter`` command: run usage extraction and pricing on recorded bodies."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import click

from agent.metering.cost import Pricer
from agent.metering.exceptions import MeteringError, UnknownEndpointError
from agent.metering.extract import extractor_for
from agent.metering.records import Usage

CHUNK = 64 * 1024
JSON_KEYS = (
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "estimated",
    "cost_usd",
)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _chunks(path: str, what: str) -> Iterator[bytes]:
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except OSError as exc:
        _fail(f"cannot read {what} file {path}: {exc.strerror or exc}")


def read_headers(path: str) -> tuple[list[tuple[str, str]], int | None]:
    """``Name: value`` lines; an optional first ``HTTP/1.1 200 OK`` line gives the status."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        _fail(f"cannot read headers file {path}: {reason or exc}")
    headers: list[tuple[str, str]] = []
    status: int | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if number == 1 and line.startswith("HTTP/"):
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                _fail(f"headers file {path}, line 1: bad status line")
            status = int(fields[1])
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            _fail(f"headers file {path}, line {number}: expected 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return headers, status


def _where(url: str) -> str:
    # The query string may hold an API key (?key=): never echo it.
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}{parts.path}"


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.8f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


def render(usage: Usage, *, as_json: bool) -> str:
    fields = {key: getattr(usage, key) for key in JSON_KEYS}
    if as_json:
        return json.dumps(fields)
    width = max(len(k) for k in JSON_KEYS)
    return "\n".join(f"{key:<{width}}  {_text(value)}" for key, value in fields.items())


@click.command("meter")
@click.option("--url", required=True, help="URL the call went to; picks the provider format.")
@click.option("--response", "response_file", required=True, help="Recorded response body.")
@click.option("--request", "request_file", default=None, help="Recorded request body.")
@click.option(
    "--response-headers",
    "headers_file",
    default=None,
    help="Response headers as 'Name: value' lines (optional first line 'HTTP/1.1 200 OK').",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def meter(
    url: str,
    response_file: str,
    request_file: str | None,
    headers_file: str | None,
    as_json: bool,
) -> None:
    """Extract usage (provider, model, tokens, cost) from a recorded AI call.

    Bodies may be JSON, server-sent events, JSON lines of SSE payloads or AWS event-stream
    binary; the format is recognised from the bytes.
    """
    headers, status = read_headers(headers_file) if headers_file else ([], None)
    try:
        extractor = extractor_for(url, price=Pricer())
        if extractor is None:
            raise UnknownEndpointError(f"no metered AI endpoint at {_where(url)}")
        if request_file is not None:
            for chunk in _chunks(request_file, "request"):
                extractor.feed_request(chunk)
        for chunk in _chunks(response_file, "response"):
            extractor.feed_response(chunk)
        usage = extractor.finish(headers, status)
    except MeteringError as exc:
        _fail(str(exc))
    click.echo(render(usage, as_json=as_json))
