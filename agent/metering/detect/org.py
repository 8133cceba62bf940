"""Organisation rules from policy: keyword lists and regular expressions, each with its label.

Checked when the detectors are built, so a bad rule fails the policy load, not a request:
labels are ``org.`` + lower-case letters, digits, ``_ . -``; a label keeps one data class; a
keyword is not blank and belongs to one label; a pattern compiles, cannot match the empty string,
and has ``1 <= max_len <= 4096``. Each problem raises `ConfigError` naming the rule.

Keywords match as whole words (no letter, digit or ``_`` on a side where the keyword itself
starts or ends with one), ignoring case unless the rule says otherwise; when keywords overlap the
longest wins. A pattern is the organisation's own regex, run as written (Python ``re`` syntax);
it may look up to 32 characters behind and ahead of a match, and matches longer than its
``max_len`` are ignored.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

from agent.exceptions import ConfigError
from agent.metering.detect.labels import LABEL_CLASS, ORG_PREFIX
from agent.metering.detect.records import DATA_CLASSES, DataClass, OrgKeyword, OrgPattern, OrgRule

_LABEL = re.compile(r"org\.[a-z0-9][a-z0-9_.-]{0,62}")
_LOOK = 32  # look-behind / look-ahead an organisation pattern may use
_MAX_LEN = 4096


def rule_classes(rules: Iterable[OrgRule]) -> dict[str, DataClass]:
    """Each organisation label's data class; raises `ConfigError` on a bad label or class."""
    classes: dict[str, DataClass] = {}
    for rule in rules:
        if not _LABEL.fullmatch(rule.label) or rule.label in LABEL_CLASS:
            raise ConfigError(
                f"organisation rule label {rule.label!r}: must be {ORG_PREFIX!r} followed by "
                "lower-case letters, digits, '_', '.' or '-' (at most 64 characters)"
            )
        if rule.data_class not in DATA_CLASSES:
            raise ConfigError(
                f"organisation rule {rule.label!r}: data class {rule.data_class!r} is not one of "
                f"{', '.join(DATA_CLASSES)}"
            )
        if classes.setdefault(rule.label, rule.data_class) != rule.data_class:
            raise ConfigError(
                f"organisation rule {rule.label!r}: given both data classes "
                f"{classes[rule.label]!r} and {rule.data_class!r}"
            )
    return classes


class KeywordDetector:
    """Organisation keywords of one case mode, in one regex pass."""

    left = 1

    def __init__(self, entries: list[tuple[str, str]], *, case_sensitive: bool) -> None:
        # Longest first, so that at one start a keyword is tried before its own prefix. No
        # capturing groups: they cost the regex engine its fast first-character scan; the label
        # is looked up from the matched text instead.
        entries = sorted(entries, key=lambda e: -len(e[0]))
        self._flags = 0 if case_sensitive else re.IGNORECASE
        self._fold = (lambda w: w) if case_sensitive else str.lower
        self._entries = entries
        self._label = {self._fold(word): (word, label) for word, label in reversed(entries)}
        alternatives = "|".join(re.escape(word) for word, _ in entries)
        self._search = re.compile(alternatives, self._flags).search
        # Python's IGNORECASE folds one character to one character, so a match is as long as
        # its keyword.
        self.right = len(self._entries[0][0]) + 1

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        search = self._search
        while (m := search(text, pos)) is not None and (s := m.start()) < limit:
            pos = max(m.end(), s + 1)
            word, label = self._entry(m.group())
            if _whole_word(text, s, pos, word):
                found[label] += 1
        return max(pos, limit)

    def _entry(self, matched: str) -> tuple[str, str]:
        entry = self._label.get(self._fold(matched))
        if entry is not None:
            return entry
        # str.lower and the regex engine's case folding disagree on a few characters (dotted
        # capital I): find the keyword the engine matched.
        for word, label in self._entries:
            if re.fullmatch(re.escape(word), matched, self._flags):
                return word, label
        raise AssertionError("a keyword match that matches no keyword")


def keyword_detectors(rules: Iterable[OrgKeyword]) -> list[KeywordDetector]:
    """One detector per case mode in use; raises `ConfigError` on a blank or doubled keyword."""
    owner: dict[tuple[str, bool], tuple[str, str]] = {}
    for rule in rules:
        for word in rule.words:
            if not word.strip():
                raise ConfigError(f"organisation keyword rule {rule.label!r}: blank keyword")
            key = (word if rule.case_sensitive else word.lower(), rule.case_sensitive)
            first = owner.setdefault(key, (word, rule.label))
            if first[1] != rule.label:
                raise ConfigError(
                    f"organisation keyword {word!r} is listed under both {first[1]!r} "
                    f"and {rule.label!r}"
                )
    detectors = []
    for sensitive in (True, False):
        entries = [entry for (_, s), entry in owner.items() if s == sensitive]
        if entries:
            detectors.append(KeywordDetector(entries, case_sensitive=sensitive))
    return detectors


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _whole_word(text: str, start: int, end: int, word: str) -> bool:
    if _is_word_char(word[0]) and start > 0 and _is_word_char(text[start - 1]):
        return False
    return not (_is_word_char(word[-1]) and end < len(text) and _is_word_char(text[end]))


class PatternDetector:
    """One organisation regex."""

    left = _LOOK

    def __init__(self, rule: OrgPattern) -> None:
        try:
            self._regex = re.compile(rule.regex)
        except re.error as exc:
            raise ConfigError(
                f"organisation pattern {rule.label!r}: invalid regular expression "
                f"{rule.regex!r}: {exc}"
            ) from exc
        if self._regex.fullmatch(""):
            raise ConfigError(
                f"organisation pattern {rule.label!r}: regular expression {rule.regex!r} "
                "matches the empty string"
            )
        if not 1 <= rule.max_len <= _MAX_LEN:
            raise ConfigError(
                f"organisation pattern {rule.label!r}: max_len {rule.max_len} is not in "
                f"1..{_MAX_LEN}"
            )
        self._label = rule.label
        self._max_len = rule.max_len
        self.right = rule.max_len + _LOOK

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        search, label, max_len = self._regex.search, self._label, self._max_len
        while (m := search(text, pos)) is not None and (s := m.start()) < limit:
            end = m.end()
            pos = max(end, s + 1)
            if s < end and end - s <= max_len:
                found[label] += 1
        return max(pos, limit)


def org_detectors(
    rules: Iterable[OrgRule],
) -> tuple[list[KeywordDetector | PatternDetector], Mapping[str, DataClass]]:
    """The detectors for organisation rules and the data class of each of their labels."""
    rules = list(rules)
    classes = rule_classes(rules)
    detectors: list[KeywordDetector | PatternDetector] = []
    detectors.extend(keyword_detectors(r for r in rules if isinstance(r, OrgKeyword)))
    detectors.extend(PatternDetector(r) for r in rules if isinstance(r, OrgPattern))
    return detectors, classes
