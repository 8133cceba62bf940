"""metering.upstream_ca: which CAs the proxy trusts for AI servers (a TLS-inspecting proxy or a
private CA in front of them needs its own), tested with a real mitmdump and a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import state
from agent.counters import Counters
from agent.exceptions import ConfigError
from agent.metering import supervisor as sup
from agent.options import Options
from tests.metering.proxykit import (
    METER_TEST_MARKS,
    FakeProvider,
    Received,
    Reply,
    make_server_pki,
    meter_user,
    remove_workdir,
    running_meter,
    shared_workdir,
)

pytestmark = METER_TEST_MARKS
HOST = "api.openai.com"
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def route(req: Received) -> Reply:
    return Reply(
        headers=[("Content-Type", "application/json")], chunks=[json.dumps(ANSWER).encode()]
    )


def _call(trust_provider: bool) -> tuple[int, list[tuple[int | None, int | None, bool]]]:
    """The HTTP status the client got, and (status, output tokens, has an error) of each usage
    record, for one chat call with the provider's CA as metering.upstream_ca or mitmproxy's
    own CA list."""
    work = shared_workdir()
    try:
        up = work / "upstream"
        up.mkdir()
        up.chmod(0o755)
        ca, cert, key = make_server_pki(up, [HOST])
        with (
            FakeProvider(cert, key, route) as server,
            running_meter(server.port, ca if trust_provider else None, work) as m,
        ):
            conn = m.connect(HOST)
            body = json.dumps({"model": "gpt-4o-mini", "messages": []})
            conn.request(
                "POST", "/v1/chat/completions", body=body, headers={"Authorization": "Bearer sk-x"}
            )
            status = conn.getresponse().status
            conn.close()
            m.supervisor.stop()
            records = m.spool.usage_records()
            return status, [(r.status_code, r.output_tokens, r.error is not None) for r in records]
    finally:
        remove_workdir(work)


def test_ai_servers_are_verified_against_the_configured_cas() -> None:
    # the provider's CA configured: the call goes through and is metered
    assert _call(trust_provider=True) == (200, [(200, 1, False)])


def test_without_it_a_server_from_a_private_ca_is_refused_not_trusted() -> None:
    status, records = _call(trust_provider=False)
    assert status == 502  # mitmproxy refused the server's certificate: TLS is never weakened
    # the attempt is recorded (the request was read), with no answer: no status, no tokens
    assert records == [(None, None, True)]


def _options(**values: object) -> Options:
    options = Options()
    state.declare_options(options)
    sup.declare_options(options)
    for key, value in values.items():
        options.set(key, value, "test")
    return options


def test_the_option_becomes_mitmproxys_trusted_ca(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("")
    base = {
        "state.dir": str(tmp_path / "s"),
        "metering.dir": str(tmp_path / "m"),
        "metering.user": meter_user(),
    }
    with_ca = sup.MeteringSupervisor(
        _options(**base, **{"metering.upstream_ca": str(bundle)}), Counters()
    )
    assert f"ssl_verify_upstream_trusted_ca={bundle}" in with_ca.command()
    without = sup.MeteringSupervisor(_options(**base), Counters())
    assert not any("ssl_verify_upstream" in arg for arg in without.command())
    with pytest.raises(ConfigError, match=r"metering\.upstream_ca.*no such file"):
        _options(**{"metering.upstream_ca": str(tmp_path / "missing.pem")})
