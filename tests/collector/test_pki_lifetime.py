"""Agent certificate lifetimes: ``pki.client_cert_days`` as issued, and a backdate (for clock
skew) that never makes a short-lived certificate due for renewal the moment it is issued."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.enroll import Identity
from collector.pki import init_pki
from collector.testing import new_key_and_csr


@pytest.mark.parametrize(
    ("days", "backdate"),
    [(30.0, 300.0), (1 / 24, 300.0), (20 / 86400, 2.0), (300 / 86400, 30.0)],
    ids=["30d", "1h", "20s", "5min"],
)
def test_the_backdate_is_five_minutes_at_most_a_tenth_of_the_lifetime(
    tmp_path: Path, days: float, backdate: float
) -> None:
    pki = init_pki(tmp_path, ("localhost",))
    _, csr = new_key_and_csr()
    cert = pki.issue_agent_certificate(csr, "agt-1", days)
    before = cert.not_valid_before_utc.timestamp()
    after = cert.not_valid_after_utc.timestamp()
    # certificate times have whole seconds
    assert after - before == pytest.approx(days * 86400 + backdate, abs=1.0)
    issued_at = before + backdate
    ident = Identity(
        "agt-1", b"", cert.public_bytes(serialization.Encoding.PEM), b"", before, after
    )
    assert not ident.renewal_due(issued_at + 1)
    assert ident.renewal_due(issued_at + days * 86400 * 0.75)
