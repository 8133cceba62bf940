"""Shared fixtures: where the public test captures are, a fresh matcher."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from signatures.matcher import Matcher

# Property tests check what comes out, not how fast: a per-example deadline only makes them
# flaky on a busy 2-core machine.
settings.register_profile("lantern", deadline=None, print_blob=True)
settings.load_profile("lantern")

ROOT = Path(__file__).resolve().parent.parent
# shared/ sits beside the checkout (CI clones next to it); LANTERN_TESTDATA overrides.
TESTDATA = Path(os.environ.get("LANTERN_TESTDATA", ROOT.parent / "shared" / "testdata"))
PCAPS = TESTDATA / "pcaps"


@pytest.fixture(scope="session")
def matcher() -> Matcher:
    return Matcher.from_catalog()


@pytest.fixture(scope="session")
def pcap_dir() -> Path:
    if not (PCAPS / "tshark_expected.tsv").is_file():
        pytest.fail(f"public test captures not found at {PCAPS}; set LANTERN_TESTDATA")
    return PCAPS
