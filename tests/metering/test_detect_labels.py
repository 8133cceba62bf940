"""Exact label counts for crafted inputs, the near misses that must not count, and the record."""

from __future__ import annotations

import re

import pytest

from agent.metering.detect import LABEL_CLASS, Detectors, Labels, labels
from agent.metering.detect import labels as labels_module

DETECTORS = Detectors()


def scan(text: str, content_type: str = "text/plain") -> dict[str, int]:
    return DETECTORS.scan(text.encode(), content_type).as_dict()


@pytest.mark.parametrize(
    ("text", "label", "count"),
    [
        # e-mail
        ("write to john.doe@example.com today", labels.EMAIL, 1),
        ("a@b.co, c+tag@sub.example.org; d_e@x-y.io.", labels.EMAIL, 3),
        ("punycode ops@xn--bcher-kva.xn--p1ai", labels.EMAIL, 1),
        ("no tld user@localhost, bad .dot@x.com, double a..b@x.com", labels.EMAIL, 0),
        ("handle @someone and a@ alone", labels.EMAIL, 0),
        # phones
        ("call +1 415-555-2671 now", labels.PHONE, 1),
        ("+44 20 7946 0958 or +44 (0)20 7946 0958 or 0044 20 7946 0958", labels.PHONE, 3),
        ("US (415) 555-2671, 415.555.2671, 1-415-555-2671", labels.PHONE, 3),
        ("UK 020 7946 0958, DE 030 12345678, FR 01 23 45 67 89", labels.PHONE, 3),
        ("E.164 +14155552671 and +4930901820", labels.PHONE, 2),
        ("bare 4155552671 and 02079460958 are not phones", labels.PHONE, 0),
        ("area 115-555-2671 and exchange 415-155-2671 are not NANP", labels.PHONE, 0),
        ("dates 01.02.2024 1030 and 12/31/2024 are not phones", labels.PHONE, 0),
        ("+999 123 456 789 has no such country code", labels.PHONE, 0),
        ("+1 234 is too short", labels.PHONE, 0),
        ("+12345678 is the shortest counted", labels.PHONE, 1),
        # payment cards
        ("visa 4111 1111 1111 1111 and 4111-1111-1111-1111 and 4111111111111111", labels.CARD, 3),
        ("mc 5500 0000 0000 0004, amex 3782 822463 10005, amex 378282246310005", labels.CARD, 3),
        ("discover 6011111111111117 jcb 3530111333300000 diners 30569309025904", labels.CARD, 3),
        ("bad luhn 4111 1111 1111 1112", labels.CARD, 0),
        ("mixed separators 4111 1111-1111 1111", labels.CARD, 0),
        ("no issuer 7111111111111114 (Luhn-valid, prefix 7)", labels.CARD, 0),
        ("visa with 15 digits 411111111111116 (Luhn-valid)", labels.CARD, 0),
        ("inside a uuid 123e4567-e89b-12d3-a456-4111111111111111", labels.CARD, 0),
        ("glued x4111111111111111 and 4111111111111111y", labels.CARD, 0),
        ("in a longer number 14111111111111111", labels.CARD, 0),
        # numbers written back to back are one run; cards and SSNs are found inside it
        ("4111 1111 1111 1111 12/25 123 (expiry, CVV)", labels.CARD, 1),
        ("4111 1111 1111 1111 4111-1111-1111-1111 5500 0000 0000 0004", labels.CARD, 3),
        ("2024-01-15 4111 1111 1111 1111 charged", labels.CARD, 1),
        ("qty 2 4111111111111111", labels.CARD, 1),
        ("219-09-9998 1990-02-03", labels.US_SSN, 1),
        ("+44 20 7946 0958 12", labels.PHONE, 1),
        # IBAN
        ("DE89 3704 0044 0532 0130 00 and GB82WEST12345698765432", labels.IBAN, 2),
        ("paid to DE89370400440532013000 2 days ago", labels.IBAN, 1),
        ("NL91 ABNA 0417 1643 00, NO93 8601 1117 947", labels.IBAN, 2),
        ("bad check DE88 3704 0044 0532 0130 00", labels.IBAN, 0),
        ("wrong length DE89 3704 0044 0532 0130 0", labels.IBAN, 0),
        ("unknown country QQ89 3704 0044 0532 0130 00", labels.IBAN, 0),
        ("lower case de89370400440532013000", labels.IBAN, 0),
        # US SSN
        ("SSN 219-09-9998 or 219 09 9998 or 219.09.9998", labels.US_SSN, 3),
        ("000-12-3456 666-12-3456 912-34-5678 987-65-4320", labels.US_SSN, 0),
        ("123-00-4567 123-45-0000 078-05-1120 111-11-1111", labels.US_SSN, 0),
        ("bare 219099998 and mixed 219-09 9998", labels.US_SSN, 0),
        # UK NINO
        ("NINO AB 12 34 56 C and QQ123456C", labels.UK_NINO, 1),
        ("prefixes BG123456A GB123456A DA123456A AO123456A", labels.UK_NINO, 0),
        ("suffix E: AB123456E", labels.UK_NINO, 0),
        # Spain
        ("DNI 12345678Z and 12345678-Z", labels.ES_DNI, 2),
        ("DNI 12345678A has the wrong letter", labels.ES_DNI, 0),
        ("NIE X1234567L and X-1234567-L and Y0000000Z", labels.ES_NIE, 3),
        ("NIE X1234567A has the wrong letter", labels.ES_NIE, 0),
        # context-bound identifiers
        ("BSN: 111222333", labels.NL_BSN, 1),
        ("burgerservicenummer 111222333", labels.NL_BSN, 1),
        ("order 111222333", labels.NL_BSN, 0),
        ("BSN: 111222334", labels.NL_BSN, 0),
        ("Steuer-ID: 86095742719", labels.DE_TAX_ID, 1),
        ("IdNr 86095742719", labels.DE_TAX_ID, 1),
        ("ref 86095742719", labels.DE_TAX_ID, 0),
        ("Steuer-ID: 86095742718", labels.DE_TAX_ID, 0),
        ("Aadhaar 2341 2341 2346", labels.IN_AADHAAR, 1),
        ("UIDAI number 234123412346", labels.IN_AADHAAR, 1),
        ("account 2341 2341 2346", labels.IN_AADHAAR, 0),
        ("Aadhaar 2341 2341 2347", labels.IN_AADHAAR, 0),
        # secrets
        ("AKIAIOSFODNN7EXAMPLE ASIAIOSFODNN7EXAMPL2", labels.AWS_ACCESS_KEY_ID, 2),
        (
            "xAKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLEX AKIAIOSFODNN7EXAMPL",
            labels.AWS_ACCESS_KEY_ID,
            0,
        ),
        (
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            labels.AWS_SECRET_KEY,
            1,
        ),
        (
            '{"SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}',
            labels.AWS_SECRET_KEY,
            1,
        ),
        (
            "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            labels.AWS_SECRET_KEY,
            1,
        ),
        ("secret_access_key: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", labels.AWS_SECRET_KEY, 0),
        ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY without a name", labels.AWS_SECRET_KEY, 0),
        ("key=AIzaSyA-1234567890abcdefghijklmnopqrstu", labels.GOOGLE_API_KEY, 1),
        ("AIzaSyA-1234567890abcdefghijklmnopqrst (34)", labels.GOOGLE_API_KEY, 0),
        ("sk-proj-Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789AbCd", labels.OPENAI_API_KEY, 1),
        ("sk-Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789AbCdEfGh1jKl", labels.OPENAI_API_KEY, 1),
        ("sk-learn-is-a-python-library-for-machine-learning", labels.OPENAI_API_KEY, 0),
        ("task-Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789AbCd", labels.OPENAI_API_KEY, 0),
        (
            "sk-ant-api03-Ab3dEfGh1jKlMnOpQrStUvWxYz0123456789-AbCdEf_AA",
            labels.ANTHROPIC_API_KEY,
            1,
        ),
        ("sk-ant-short", labels.ANTHROPIC_API_KEY, 0),
        (
            "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            labels.GITHUB_TOKEN,
            2,
        ),
        (
            "github_pat_11ABCDEFG0123456789abc_defghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW",
            labels.GITHUB_TOKEN,
            1,
        ),
        ("ghp_tooShort123", labels.GITHUB_TOKEN, 0),
        ("xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", labels.SLACK_TOKEN, 1),
        ("xoxb-not-a-real-token-here", labels.SLACK_TOKEN, 0),
        ("sk_live_4eC39HqLyjWDarjtT1zdp7dc rk_live_4eC39HqLyjWDarjtT1zdp7dc", labels.STRIPE_KEY, 2),
        ("sk_test_4eC39HqLyjWDarjtT1zdp7dc", labels.STRIPE_KEY, 0),
        ("-----BEGIN PRIVATE KEY-----\nMIIE", labels.PRIVATE_KEY, 1),
        (
            "-----BEGIN RSA PRIVATE KEY----- -----BEGIN OPENSSH PRIVATE KEY-----",
            labels.PRIVATE_KEY,
            2,
        ),
        ("-----BEGIN PGP PRIVATE KEY BLOCK-----", labels.PRIVATE_KEY, 1),
        ("-----BEGIN PUBLIC KEY----- -----BEGIN CERTIFICATE-----", labels.PRIVATE_KEY, 0),
        (
            "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
            ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            labels.JWT,
            1,
        ),
        (
            "eyJub3RhbGciOjF9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9P",
            labels.JWT,
            0,
        ),
        ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0", labels.JWT, 0),
        # markings
        ("CONFIDENTIAL - draft", labels.MARK_CONFIDENTIAL, 1),
        ("Confidential draft; keep this confidential", labels.MARK_CONFIDENTIAL, 0),
        (
            "STRICTLY CONFIDENTIAL and Strictly Confidential and Highly confidential",
            labels.MARK_STRICTLY_CONFIDENTIAL,
            3,
        ),
        ("TOP SECRET//NOFORN and Top Secret", labels.MARK_TOP_SECRET, 2),
        ("TOP SECRET", labels.MARK_SECRET, 0),
        ("SECRET and SECRET_KEY and API_SECRET and SECRETARY", labels.MARK_SECRET, 1),
        ("INTERNAL ONLY, Internal use only, FOR INTERNAL USE ONLY", labels.MARK_INTERNAL, 3),
        ("internal only in lower case", labels.MARK_INTERNAL, 0),
        ("NOT FOR DISTRIBUTION / Do not distribute", labels.MARK_NOT_FOR_DISTRIBUTION, 2),
        (
            "ATTORNEY-CLIENT PRIVILEGED, Attorney Client Privilege, PRIVILEGED & CONFIDENTIAL",
            labels.MARK_PRIVILEGED,
            3,
        ),
        ("PRIVILEGED AND CONFIDENTIAL", labels.MARK_CONFIDENTIAL, 0),
        ("RESTRICTED and restricted and UNRESTRICTED", labels.MARK_RESTRICTED, 1),
    ],
)
def test_label_counts(text: str, label: str, count: int) -> None:
    assert scan(text).get(label, 0) == count


def test_one_text_with_everything_counts_each_label_exactly() -> None:
    text = (
        "From john.doe@example.com, +1 415-555-2671. Card 4111 1111 1111 1111. "
        "IBAN DE89 3704 0044 0532 0130 00. SSN 219-09-9998. AKIAIOSFODNN7EXAMPLE. "
        "STRICTLY CONFIDENTIAL."
    )
    assert scan(text) == {
        labels.EMAIL: 1,
        labels.PHONE: 1,
        labels.CARD: 1,
        labels.IBAN: 1,
        labels.US_SSN: 1,
        labels.AWS_ACCESS_KEY_ID: 1,
        labels.MARK_STRICTLY_CONFIDENTIAL: 1,
    }


@pytest.mark.parametrize(
    "text",
    [
        "0 1 0 1 1 0 1 0 1 0 0 1 1 1 0 1 0 1 1 0 1 1 1 0",
        "1.5 2.25 3.125 1024 2048 4096 8192 16384 32768 65536",
        "2024-01-15 31.12.2024 12/31/2024 2024/01/15 10:30:00",
        "order 1234567, invoice 12345678, amount 1234.56, id 1234567890",
        "192.168.100.200 10.0.0.1 v1.2.3.4 3.14159265358979",
        "123e4567-e89b-12d3-a456-426614174000 sha 9f86d081884c7d659a2feaa0c55ad015",
    ],
)
def test_ordinary_numbers_are_nothing(text: str) -> None:
    assert scan(text) == {}


def test_one_token_gets_at_most_one_label() -> None:
    # A card number is also a run of digits a phone or an Aadhaar rule could read.
    assert scan("Aadhaar card 4111 1111 1111 1111") == {labels.CARD: 1}
    assert scan("BSN 219-09-9998") == {labels.US_SSN: 1}


@pytest.mark.parametrize(
    ("text", "data_class"),
    [
        ("nothing here at all", "public"),
        ("INTERNAL ONLY", "internal"),
        ("INTERNAL ONLY, mail a@b.com", "confidential"),
        ("CONFIDENTIAL", "confidential"),
        ("a@b.com and 4111 1111 1111 1111", "restricted"),
        ("TOP SECRET", "restricted"),
    ],
)
def test_data_class_is_the_highest_implied(text: str, data_class: str) -> None:
    assert DETECTORS.scan(text.encode(), "text/plain").data_class == data_class


def test_the_docstring_table_is_the_mapping() -> None:
    doc = labels_module.__doc__ or ""
    rows = dict(
        re.findall(r"^([a-z_]+\.[a-z_]+)\s+(public|internal|confidential|restricted)\b", doc, re.M)
    )
    assert rows == dict(LABEL_CLASS)


def test_labels_record_is_sorted_frozen_and_queryable() -> None:
    result = DETECTORS.scan(b"b@x.com AKIAIOSFODNN7EXAMPLE a@x.com", "text/plain")
    assert result == Labels(
        counts=((labels.EMAIL, 2), (labels.AWS_ACCESS_KEY_ID, 1)), data_class="restricted"
    )
    assert result.get(labels.EMAIL) == 2
    assert result.get(labels.CARD) == 0
    with pytest.raises(AttributeError):
        result.data_class = "public"  # type: ignore[misc]


SECRETS_TEXT = {
    "email": "carol.danvers@starforce.example",
    "phone": "+44 20 7946 0958",
    "card": "5500 0000 0000 0004",
    "iban": "GB82WEST12345698765432",
    "ssn": "219-09-9998",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "keyword": "Project Bluebird",
}


def test_nothing_matched_reaches_the_labels_or_the_scanner() -> None:
    from agent.metering.detect import OrgKeyword

    detectors = Detectors([OrgKeyword("org.codename", "restricted", ("Project Bluebird",))])
    scanner = detectors.scanner("text/plain")
    scanner.feed(" and ".join(SECRETS_TEXT.values()).encode())
    result = scanner.finish()
    assert len(result.counts) == len(SECRETS_TEXT)  # each was found ...
    shown = repr(result) + str(result) + repr(scanner) + repr(result.as_dict())
    for value in SECRETS_TEXT.values():
        # ... and no part of any value longer than a label's own words is shown.
        for i in range(len(value) - 5):
            assert value[i : i + 6] not in shown, value
    assert not re.search(r"\d{3}", shown)
