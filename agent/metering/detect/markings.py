"""Document classification markings (CONFIDENTIAL, INTERNAL ONLY, TOP SECRET, ...).

Case rules, chosen because markings are banners while the same words in prose are not:

- a one-word marking (``CONFIDENTIAL``, ``SECRET``, ``RESTRICTED``) counts only in capitals:
  "keep this confidential" and "Secret Santa" are not markings;
- a phrase counts in capitals or with its first word capitalised (``STRICTLY CONFIDENTIAL``,
  ``Strictly Confidential``, ``For internal use only``), its later words in any of upper, title
  or lower case;
- words are joined by up to three spaces, tabs, newlines, hyphens or underscores
  (``ATTORNEY-CLIENT PRIVILEGED``), and the marking must stand as whole words: ``SECRETARY``,
  ``CONFIDENTIAL_DATA`` and ``API_SECRET`` are not markings.

Where phrases overlap the longest one starting first wins: ``TOP SECRET`` is one
``marking.top_secret``, not also a ``marking.secret``; ``PRIVILEGED AND CONFIDENTIAL`` is one
``marking.privileged``. Known noise: a capitalised ``SECRET`` in prose or code comments
(``CLIENT SECRET``) counts as a marking.
"""

from __future__ import annotations

import re
from collections import Counter

from agent.metering.detect import labels
from agent.metering.detect.engine import left_ok, right_ok

MARKINGS: tuple[tuple[str, str], ...] = (
    ("FOR INTERNAL USE ONLY", labels.MARK_INTERNAL),
    ("INTERNAL USE ONLY", labels.MARK_INTERNAL),
    ("INTERNAL ONLY", labels.MARK_INTERNAL),
    ("ATTORNEY CLIENT PRIVILEGED", labels.MARK_PRIVILEGED),
    ("ATTORNEY CLIENT PRIVILEGE", labels.MARK_PRIVILEGED),
    ("PRIVILEGED AND CONFIDENTIAL", labels.MARK_PRIVILEGED),
    ("PRIVILEGED & CONFIDENTIAL", labels.MARK_PRIVILEGED),
    ("LEGALLY PRIVILEGED", labels.MARK_PRIVILEGED),
    ("STRICTLY CONFIDENTIAL", labels.MARK_STRICTLY_CONFIDENTIAL),
    ("HIGHLY CONFIDENTIAL", labels.MARK_STRICTLY_CONFIDENTIAL),
    ("NOT FOR DISTRIBUTION", labels.MARK_NOT_FOR_DISTRIBUTION),
    ("DO NOT DISTRIBUTE", labels.MARK_NOT_FOR_DISTRIBUTION),
    ("TOP SECRET", labels.MARK_TOP_SECRET),
    ("CONFIDENTIAL", labels.MARK_CONFIDENTIAL),
    ("SECRET", labels.MARK_SECRET),
    ("RESTRICTED", labels.MARK_RESTRICTED),
)

_SEP = r"[\s_-]{1,3}"
_MAX_SEP = 3


def _alternatives(phrase: str) -> list[str]:
    """Regex alternatives for one phrase, each starting with a literal (see `MarkingDetector`)."""
    first, *rest = phrase.split()
    tail = "".join(
        f"{_SEP}(?:{re.escape(w)}|{re.escape(w.title())}|{re.escape(w.lower())})" for w in rest
    )
    heads = [first, first.title()] if rest else [first]
    return [re.escape(head) + tail for head in heads]


def _normal(matched: str) -> str:
    return " ".join(_SPLIT.split(matched)).upper()


_SPLIT = re.compile(r"[\s_-]+")


class MarkingDetector:
    left = 1

    def __init__(self) -> None:
        # Longest first, so that at one start the longer phrase is tried before its prefix. No
        # capturing groups and a literal at the start of every alternative: that keeps the regex
        # engine on its fast first-character scan (with groups it runs some 50 times slower);
        # the label is looked up from the normalised match instead.
        ordered = sorted(MARKINGS, key=lambda m: -len(m[0]))
        self._label = {phrase: label for phrase, label in MARKINGS}
        self._search = re.compile("|".join(a for p, _ in ordered for a in _alternatives(p))).search
        longest = max(len(p) + (_MAX_SEP - 1) * p.count(" ") for p, _ in MARKINGS)
        self.right = longest + 1

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        search = self._search
        while (m := search(text, pos)) is not None and (s := m.start()) < limit:
            pos = m.end()
            if left_ok(text, s) and right_ok(text, pos):
                found[self._label[_normal(m.group())]] += 1
        return max(pos, limit)
