"""Check-digit functions and tables against independent implementations (python-stdnum,
phonenumbers), on generated valid and invalid numbers."""

from __future__ import annotations

import random
import re

import pytest
from detectkit import aadhaar, bsn, card_number, de_tax_id, iban
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers.data import _COUNTRY_CODE_TO_REGION_CODE
from stdnum import iban as stdnum_iban
from stdnum import luhn, numdb, verhoeff
from stdnum.de import idnr
from stdnum.es import dni as stdnum_dni
from stdnum.es import nie as stdnum_nie
from stdnum.in_ import aadhaar as stdnum_aadhaar
from stdnum.nl import bsn as stdnum_bsn

from agent.metering.detect import checksums, phones

DIGITS = st.text("0123456789", min_size=1, max_size=24)


def test_iban_length_table_is_the_registry() -> None:
    db = numdb.get("iban")
    for country, length in checksums.IBAN_LENGTHS.items():
        spec = db.info(country)[0][1]["bban"]
        bban_len = sum(int(n) for n in re.findall(r"(\d+)!?[nac]", spec))
        assert bban_len + 4 == length, country


@settings(max_examples=300)
@given(seed=st.integers(0, 2**32), country=st.sampled_from(sorted(checksums.IBAN_LENGTHS)))
def test_iban_agrees_with_stdnum(seed: int, country: str) -> None:
    # check_country=False: stdnum also runs some countries' national BBAN checks, which Lantern
    # does not (a wrong national check digit in a well-formed IBAN is still someone's IBAN).
    rng = random.Random(seed)
    for valid in (True, False):
        value = iban(rng, country, valid=valid)
        assert checksums.iban_ok(value) is valid
        assert stdnum_iban.is_valid(value, check_country=False) is valid


@settings(max_examples=300)
@given(DIGITS)
def test_luhn_agrees_with_stdnum(digits: str) -> None:
    assert checksums.luhn_ok(digits) == luhn.is_valid(digits)


@settings(max_examples=300)
@given(DIGITS)
def test_verhoeff_agrees_with_stdnum(digits: str) -> None:
    assert checksums.verhoeff_ok(digits) == verhoeff.is_valid(digits)


@settings(max_examples=300)
@given(st.text("0123456789", min_size=9, max_size=9))
def test_bsn_agrees_with_stdnum(digits: str) -> None:
    assert checksums.nl_bsn_ok(digits) == stdnum_bsn.is_valid(digits)


@settings(max_examples=300)
@given(st.text("0123456789", min_size=12, max_size=12))
def test_aadhaar_agrees_with_stdnum(digits: str) -> None:
    assert checksums.in_aadhaar_ok(digits) == stdnum_aadhaar.is_valid(digits)


@settings(max_examples=200)
@given(seed=st.integers(0, 2**32))
def test_generated_identifiers_pass_both(seed: int) -> None:
    rng = random.Random(seed)
    assert checksums.nl_bsn_ok(bsn(rng))
    assert checksums.de_tax_id_ok(de_tax_id(rng))
    assert checksums.in_aadhaar_ok(aadhaar(rng))
    assert checksums.luhn_ok(card_number(rng, "4", 16))


@settings(max_examples=500)
@given(st.text("0123456789", min_size=11, max_size=11))
def test_de_tax_id_accepts_whatever_stdnum_accepts(digits: str) -> None:
    # Ours also admits the post-2016 shapes (two digits repeated); stdnum knows only the older
    # "exactly one digit repeated" rule, so agreement is one way.
    if idnr.is_valid(digits):
        assert checksums.de_tax_id_ok(digits)


@settings(max_examples=300)
@given(st.integers(0, 99_999_999), st.sampled_from("TRWAGMYFPDXBNJZSQVHLCKE"))
def test_dni_and_nie_letters_agree_with_stdnum(number: int, letter: str) -> None:
    assert checksums.es_dni_ok(f"{number:08d}", letter) == stdnum_dni.is_valid(
        f"{number:08d}{letter}"
    )
    seven = number % 10_000_000
    for i, prefix in enumerate("XYZ"):
        assert checksums.es_dni_ok(f"{i}{seven:07d}", letter) == stdnum_nie.is_valid(
            f"{prefix}{seven:07d}{letter}"
        )


@pytest.mark.parametrize(
    ("digits", "ok"),
    [
        ("219099998", True),
        ("000123456", False),
        ("666123456", False),
        ("900123456", False),
        ("999999999", False),
        ("123004567", False),
        ("123450000", False),
        ("078051120", False),
        ("111111111", False),
    ],
)
def test_ssn_rules(digits: str, ok: bool) -> None:
    assert checksums.us_ssn_ok(digits) is ok


def test_country_calling_codes_are_phonenumbers_codes() -> None:
    assert {str(cc) for cc in _COUNTRY_CODE_TO_REGION_CODE} == phones.COUNTRY_CODES
