"""The collector's config: bounds that keep a typo from hurting the fleet."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.exceptions import ConfigError
from collector.config import load_settings


def settings_from(tmp_path: Path, yaml: str) -> float:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml)
    return load_settings(cfg).client_cert_days


@pytest.mark.parametrize("days", ["0.0002", "0.00001", "0.0", "-1.0"])
def test_a_client_certificate_lifetime_under_20_seconds_is_a_config_error(
    tmp_path: Path, days: str
) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from(tmp_path, f"data_dir: d\npki:\n  client_cert_days: {days}\n")
    message = str(err.value)
    assert f"{tmp_path / 'c.yaml'}:3: key 'pki.client_cert_days'" in message
    assert "at least 20 seconds (0.000232 days)" in message


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        ("0.000232", 0.000232),  # the rounded-up minimum the error message names
        ("0.0003", 0.0003),  # about 26 s, as short-lived-certificate tests use
        (str(20 / 86400), 20 / 86400),  # exactly 20 s (tests/integration/test_renewal.py)
        ("30", 30.0),
    ],
)
def test_lifetimes_from_20_seconds_up_are_accepted(
    tmp_path: Path, days: str, expected: float
) -> None:
    assert settings_from(tmp_path, f"pki:\n  client_cert_days: {days}\n") == expected
