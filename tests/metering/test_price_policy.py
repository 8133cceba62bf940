"""The organisation's prices come in a signed policy bundle and price the next usage records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agent.bundles import BundleClient, all_of, catalog_applier, prices_applier
from agent.exceptions import BundleError
from agent.metering.cost import Pricer, overrides_from_policy
from agent.metering.exceptions import PricingError
from collector.bundles import build_payload, sign_bundle
from tests.metering.test_metering_cost import make_usage

POLICY = """\
# negotiated with OpenAI for 2026
prices:
  openai/gpt-4o-2024-08-06: {discount: 0.8}
  anthropic/*: {input_per_mtok: 2.4, output_per_mtok: 12.0}
"""


def _write(d: Path, **files: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / f"{name}.yaml").write_text(text)
    return d


def test_prices_are_read_from_every_policy_file(tmp_path: Path) -> None:
    d = _write(
        tmp_path / "p",
        prices=POLICY,
        seats="seats: {cursor: 40}\n",  # another policy section: not ours to read
        mistral="prices:\n  mistral_ai/*: {discount: 0.5}\n",
    )
    got = overrides_from_policy(d)
    assert set(got) == {"openai/gpt-4o-2024-08-06", "anthropic/*", "mistral_ai/*"}
    assert got["openai/gpt-4o-2024-08-06"].discount == 0.8
    assert got["anthropic/*"].input_per_mtok == 2.4


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a": POLICY, "b": "prices:\n  anthropic/*: {discount: 0.9}\n"}, "also in a.yaml"),
        ({"a": "prices:\n  gpt-4o: {discount: 0.9}\n"}, "a.yaml: price override 'gpt-4o'"),
        ({"a": "prices: [1, 2]\n"}, "a.yaml: prices: must map"),
        ({"a": "- just a list\n"}, "a.yaml: a policy file is a mapping"),
        ({"a": "prices: {openai/x: {discount: -1}}\n"}, "discount must be >= 0"),
        ({"a": "prices: {openai/x: {discount: 1}\n"}, "a.yaml: cannot read it"),
    ],
)
def test_a_bad_price_policy_names_the_file_and_the_entry(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(PricingError, match=re.escape(message)):
        overrides_from_policy(_write(tmp_path / "p", **files))


def _client(tmp_path: Path, key: ed25519.Ed25519PrivateKey, prices: list[object]) -> BundleClient:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    apply = all_of(catalog_applier(lambda m: None, []), prices_applier(prices.append))
    return BundleClient(tmp_path / "bundles", public, apply=apply)


def test_a_signed_policy_bundle_reprices_usage(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    applied: list[object] = []
    client = _client(tmp_path, key, applied)
    policy = _write(tmp_path / "policies", prices=POLICY)
    bundle = sign_bundle("policy", build_payload(policy, "policy"), key)
    client.accept("policy", bundle)
    (overrides,) = applied
    usage = make_usage()
    list_price = Pricer()(usage)
    assert list_price is not None
    assert Pricer(overrides)(usage) == pytest.approx(list_price * 0.8, rel=1e-12)
    assert client.version("policy") == bundle.version

    # a later bundle with a bad price is refused, whole: the last good prices stay in use
    _write(policy, prices="prices:\n  openai/*: {discount: lots}\n")
    bad = sign_bundle("policy", build_payload(policy, "policy"), key)
    with pytest.raises(BundleError, match=r"prices\.yaml"):
        client.accept("policy", bad)
    assert len(applied) == 1
    assert client.version("policy") == bundle.version


def test_the_agent_hands_new_prices_to_the_running_receiver(tmp_path: Path) -> None:
    from agent.service import Agent

    class Receiver:
        pricer = Pricer()

    agent = Agent.__new__(Agent)  # only the price plumbing is under test here
    agent.price_overrides = {}
    agent.usage_receiver = Receiver()
    overrides = overrides_from_policy(_write(tmp_path / "p", prices=POLICY))
    agent.set_prices(overrides)
    assert agent.price_overrides is overrides
    usage = make_usage()
    list_price = Pricer()(usage)
    assert list_price is not None
    assert agent.usage_receiver.pricer(usage) == pytest.approx(list_price * 0.8, rel=1e-12)


def test_prices_in_the_collectors_policy_dir_reach_the_agent_over_mtls(tmp_path: Path) -> None:
    """The real path: collector config bundles.policy_dir, signed bundle over mutual TLS, the
    agent's BundleClient with the prices applier."""
    from agent.counters import Counters
    from agent.transport import GrpcTransport
    from collector import testing

    policies = _write(tmp_path / "org-policies", prices=POLICY)
    with testing.running_collector(tmp_path, bundles_policy_dir=str(policies)) as collector:
        ident = testing.enroll_agent(collector, collector.create_token("1h"))
        transport = GrpcTransport(
            collector.address, ca_pem=ident.ca_pem, cert_pem=ident.cert_pem, key_pem=ident.key_pem
        )
        applied: list[Any] = []
        client = BundleClient(
            tmp_path / "bundles",
            collector.bundle_public_key_pem,
            kinds=("policy",),
            counters=Counters(),
            apply=prices_applier(applied.append),
        )
        try:
            assert client.poll(transport) == ["policy"]
        finally:
            transport.close()
    (overrides,) = applied
    usage = make_usage()
    list_price = Pricer()(usage)
    assert list_price is not None
    assert Pricer(overrides)(usage) == pytest.approx(list_price * 0.8, rel=1e-12)
