"""Organisation keywords and patterns from policy: matching, classes, errors naming the rule."""

from __future__ import annotations

import pytest

from agent.exceptions import ConfigError
from agent.metering.detect import Detectors, OrgKeyword, OrgPattern, labels


def scan(detectors: Detectors, text: str) -> dict[str, int]:
    return detectors.scan(text.encode(), "text/plain").as_dict()


def test_keywords_match_whole_words_ignoring_case_by_default() -> None:
    d = Detectors([OrgKeyword("org.codename", "restricted", ("Apollo", "Project Gemini"))])
    text = "apollo, APOLLO and Apollo's plan; project  gemini; Project Gemini. Apollonia, xApollo"
    assert scan(d, text) == {"org.codename": 4}


def test_case_sensitive_keywords() -> None:
    d = Detectors([OrgKeyword("org.ticker", "confidential", ("ACME",), case_sensitive=True)])
    assert scan(d, "ACME acme Acme ACME.") == {"org.ticker": 2}


def test_longest_keyword_wins_and_each_keeps_its_label() -> None:
    d = Detectors(
        [
            OrgKeyword("org.client", "confidential", ("Initech",)),
            OrgKeyword("org.deal", "restricted", ("Initech merger",)),
        ]
    )
    assert scan(d, "the Initech merger, and Initech itself") == {"org.deal": 1, "org.client": 1}


def test_keywords_with_symbols_and_non_ascii() -> None:
    d = Detectors([OrgKeyword("org.k", "internal", ("C++ core", "#launch", "Überweisung", "機密"))])
    assert scan(d, "our C++ core, the #launch plan, ÜBERWEISUNG and 機密 data") == {"org.k": 4}


def test_patterns_count_and_carry_their_class() -> None:
    d = Detectors(
        [
            OrgPattern("org.customer_id", "confidential", r"\bCUST-\d{6}\b"),
            OrgPattern("org.project", "internal", r"(?i)\bproj-[a-z]{3}\b"),
        ]
    )
    result = d.scan(b"CUST-123456 CUST-1234567 proj-abc PROJ-XYZ", "text/plain")
    assert result.as_dict() == {"org.customer_id": 1, "org.project": 2}
    assert result.data_class == "confidential"


def test_org_class_joins_the_builtin_classes() -> None:
    d = Detectors([OrgKeyword("org.launch", "restricted", ("Bluebird",))])
    assert d.scan(b"INTERNAL ONLY: Bluebird", "text/plain").data_class == "restricted"
    assert d.scan(b"INTERNAL ONLY", "text/plain").data_class == "internal"
    assert scan(d, "a@b.co Bluebird") == {labels.EMAIL: 1, "org.launch": 1}


def test_a_match_longer_than_max_len_is_ignored() -> None:
    d = Detectors([OrgPattern("org.blob", "internal", r"BLOB[A-Z]+", max_len=10)])
    assert scan(d, "BLOBABC BLOBABCDEFGHIJKL") == {"org.blob": 1}


def test_patterns_split_across_chunks() -> None:
    d = Detectors(
        [OrgPattern("org.customer_id", "confidential", r"\bCUST-\d{6}\b")], window_chars=1
    )
    body = ("x " * 200 + "CUST-123456 " + "y " * 200).encode()
    for cut in range(395, 420):
        scanner = d.scanner("text/plain")
        scanner.feed(body[:cut])
        scanner.feed(body[cut:])
        assert scanner.finish().as_dict() == {"org.customer_id": 1}, cut


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            OrgPattern("org.bad", "internal", r"CUST-(\d{6}"),
            r"org\.bad.*CUST-\(\\\\d\{6\}.*missing \)",
        ),
        (OrgPattern("org.empty", "internal", r"x*"), r"org\.empty.*matches the empty string"),
        (OrgPattern("org.long", "internal", r"x", max_len=0), r"org\.long.*max_len 0"),
        (OrgPattern("customer", "internal", r"x"), r"'customer'.*must be 'org\.'"),
        (OrgPattern("org.Upper", "internal", r"x"), r"'org\.Upper'"),
        (OrgPattern("org.x", "secret", r"x"), r"org\.x.*'secret' is not one of"),  # type: ignore[arg-type]
        (OrgKeyword("org.k", "internal", ("ok", "  ")), r"org\.k.*blank keyword"),
    ],
)
def test_bad_rules_raise_config_errors_naming_the_rule(rule: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Detectors([rule])  # type: ignore[list-item]


def test_a_label_with_two_classes_or_a_keyword_with_two_labels_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"org\.a.*both data classes 'internal' and 'restricted'"):
        Detectors([OrgKeyword("org.a", "internal", ("x",)), OrgPattern("org.a", "restricted", "y")])
    with pytest.raises(ConfigError, match=r"'Apollo' is listed under both 'org\.a' and 'org\.b'"):
        Detectors(
            [
                OrgKeyword("org.a", "internal", ("apollo",)),
                OrgKeyword("org.b", "internal", ("Apollo",)),
            ]
        )


def test_a_builtin_label_cannot_be_reused() -> None:
    with pytest.raises(ConfigError, match=r"pii\.email"):
        Detectors([OrgPattern(labels.EMAIL, "public", "x")])


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_scan_bytes": -1}, "max_scan_bytes"), ({"window_chars": 0}, "window_chars")],
)
def test_bad_options_raise_config_errors(options: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Detectors(**options)  # type: ignore[arg-type]
