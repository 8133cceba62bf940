"""Digit-led identifiers in one pass: cards, IBANs, phones and national identifiers.

Every one of them contains a digit, so a single search for the first digit of a digit group
drives the pass (`_TRIGGER`, in C); that digit is the token's key position. From there the token
is read in one of two shapes:

- letter-led: IBAN (``DE89 3704 ...``), UK NINO (``AB 12 34 56 C``), Spanish NIE
  (``X1234567L``), tried when upper-case letters stand right before the digits;
- a number: digit groups joined by single separators (space ``.`` ``-`` ``/``), optionally led
  by ``+`` or a parenthesised group; and the Spanish DNI (digits + control letter).

A number is classified once, in this order, so one token yields at most one label: ``+``
international phone; context-bound identifiers (Dutch BSN, German Steuer-IdNr, Aadhaar: 9, 11
and 12 bare digits pass their checksums by chance too often, so they count only with a context
word such as ``BSN`` in the 48 characters before); US SSN (``AAA-GG-SSSS``, one separator kind,
never bare nine digits); payment card (13-19 digits, contiguous or grouped 4-4-4-4(-x) / 4-6-5 /
4-6-4 with one separator kind, IIN range with its lengths, Luhn); ``00`` international phone;
national phone (see `phones`). A run that is none of these as a whole may hold numbers written
back to back (card, expiry and CVV): card, SSN and international-phone shapes are looked for
inside it (`_split`). Tokens glued to letters or digits, or to a digit-and-separator on their
left, are parts of something longer (hashes, UUIDs, decimals) and never count. IBAN, NINO, DNI
and NIE are matched in upper case only.
"""

from __future__ import annotations

import re
from collections import Counter

from agent.metering.detect import labels, phones
from agent.metering.detect.checksums import (
    IBAN_LENGTHS,
    de_tax_id_ok,
    es_dni_ok,
    iban_ok,
    in_aadhaar_ok,
    luhn_ok,
    nl_bsn_ok,
    uk_nino_ok,
    us_ssn_ok,
)
from agent.metering.detect.engine import WORD, right_ok

# Where a token may start, found in C so that Python sees few digits: the first digit of a
# group, with at least five more digits or capitals after it (each after at most two separators,
# as in "+44 (0)20"); not a lone run of up to 8 or exactly 10 digits without a "+" (years,
# amounts, order numbers: none of ours); not a date on its own (2024-01-15, 31.12.2024). The
# shortest tokens that must pass: "AB123456C", "1234567Z".
_TRIGGER = re.compile(
    r"[0-9](?<![0-9][0-9])"
    r"(?=(?:[ ()./-]{0,2}[0-9A-Z]){5})"
    r"(?!(?<!\+[0-9])(?<!\+ [0-9])(?:[0-9]{0,7}|[0-9]{9})(?![0-9A-Z ()./-]))"
    r"(?!(?:[0-9]{3}([./-])[0-9]{2}\1[0-9]{2}|[0-9]?([./-])[0-9]{1,2}\2[0-9]{4})"
    r"(?![0-9]|[ ./-][0-9]))"
)
_NUM = re.compile(
    r"(?:\+ ?)?(?:\([0-9]{1,4}\)[ .-]?)?[0-9]+(?:(?:[ .\-/]|[ .-]?\([0-9]{1,4}\)[ .-]?)[0-9]+)*"
)
_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]){10,30}")
_NINO = re.compile(r"([A-Z]{2}) ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?([A-D])")
_NIE = re.compile(r"([XYZ])-?([0-9]{7})-?([A-Z])")
_DNI = re.compile(r"([0-9]{7,8})-?([A-Z])")
_SSN = re.compile(r"[0-9]{3}([ .-])[0-9]{2}\1[0-9]{4}")
_GROUPS = re.compile(r"[0-9]+")
_NOT_DIGIT = re.compile(r"[^0-9]+")

_UPPER = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_SEPS = frozenset(" .-/")
_DIGITS = frozenset("0123456789")
_MAX_TOKEN = 64
_CONTEXT_SPAN = 48

_CONTEXT = {
    labels.NL_BSN: re.compile(
        r"\b(?:bsn|burgerservicenummer|sofi[- ]?nummer|citizen service number)\b"
    ),
    labels.DE_TAX_ID: re.compile(
        r"\b(?:steuer[- ]?id(?:nr)?|idnr|(?:steuerliche |persönliche )?identifikationsnummer"
        r"|steueridentifikationsnummer|steuernummer|tax id|tin)\b"
    ),
    labels.IN_AADHAAR: re.compile(r"\b(?:aadhaa?r|uidai|uid)\b|आधार"),
}


class NumberDetector:
    """Cards, IBANs, phones, SSNs and the other national identifiers; see the module doc."""

    left = 64  # the context span plus the letters before a letter-led token
    right = 80  # the longest token read (64) plus the look-ahead after it

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        search = _TRIGGER.search
        while (m := search(text, pos)) is not None and (s := m.start()) < limit:
            # s == pos: the token right after one this scan just took from a run (see _split).
            label, end = _decide(text, s, follows=s == pos)
            if label is not None:
                found[label] += 1
            pos = max(end, s + 1)
        return max(pos, limit)


def _decide(text: str, s: int, *, follows: bool) -> tuple[str | None, int]:
    """The label of the token whose first digit is at ``s`` (if any) and where scanning resumes."""
    # NUL stands for "before the text": it is in none of the sets, and unlike "" it is not a
    # substring of every string.
    c1 = text[s - 1] if s >= 1 else "\0"
    c2 = text[s - 2] if s >= 2 else "\0"
    if c1 in _UPPER or c1 in " -":
        lettered = _letter_led(text, s, c1, c2)
        if lettered is not None:
            return lettered

    t0 = s
    if c1 == "+":
        t0 = s - 1
    elif c1 == " " and c2 == "+":
        t0 = s - 2
    elif c1 == "(":
        t0 = s - 1
    m = _NUM.match(text, t0)
    if m is None:
        t0, m = s, _NUM.match(text, s)
        assert m is not None  # _NUM matches any digit
    end = m.end()
    if not _left_ok(text, t0, follows=follows and t0 == s):
        return None, end
    after = text[end] if end < len(text) else "\0"
    if t0 == s and (after in _UPPER or after == "-"):
        dni = _DNI.match(text, s)
        if dni is not None and right_ok(text, dni.end()):
            ok = es_dni_ok(dni[1], dni[2])
            return (labels.ES_DNI if ok else None), max(end, dni.end())
    # Fewer than 8 characters cannot hold the 8 digits the shortest number needs: most numbers
    # in text end here, before any string is built.
    length = end - t0
    if length < 8:
        return None, end
    if length <= _MAX_TOKEN and after not in WORD:
        token = text[t0:end]
        if token.isdigit():  # one group: ids, amounts; only these lengths can be anything
            if length in _BY_LENGTH:
                return _context_id(token, text, t0), end
            if 13 <= length <= 19 and card_brand_ok(token) and luhn_ok(token):
                return labels.CARD, end
            return None, end
        digits = _NOT_DIGIT.sub("", token)
        if len(digits) < 8:
            return None, end
        label = _classify(token, digits, text, t0)
        if label is not None or len(digits) == 8:  # a shorter prefix would have < 8 digits
            return label, end
    return _split(text, t0, end)


# Group sizes a card or an SSN is written in, looked for inside a longer run of numbers.
_SHAPES = ((4, 4, 4, 4, 3), (4, 4, 4, 4, 2), (4, 4, 4, 4, 1), (4, 4, 4, 4), (4, 6, 5), (4, 6, 4))
_SSN_SHAPE = (3, 2, 4)
_MAX_SKIP = 3  # leading groups that may stand before a card or an SSN in one run


def _split(text: str, t0: int, end: int) -> tuple[str | None, int]:
    """A card, SSN or international phone inside a run of numbers written back to back.

    "4111 1111 1111 1111 12/25 123" (card, expiry, CVV), "2024-01-15 219-09-9998" and
    "+1 415 555 2671 2" are one token to the grammar. When the whole token is nothing, groups in
    its first 64 characters are tried: card and SSN shapes starting at any of the first four
    groups, and for a "+" token its leading groups (8 to 15 digits, longest first). Only shapes
    are tried, never every sub-run, so a matrix of small numbers costs nothing. On success the
    scan resumes right after the separator, where `scan` lets the next token start although a
    digit and a separator stand before it.
    """
    stop = min(end, t0 + _MAX_TOKEN)
    groups = [(g.start(), g.end()) for g in _GROUPS.finditer(text, t0, stop)]
    if groups and groups[-1][1] == stop and stop < end and text[stop] in _DIGITS:
        groups.pop()  # cut by the 64-character stop: not a group end
    sizes = tuple(e - b for b, e in groups)
    candidates: list[tuple[int, int]] = []
    if text[t0] == "+":
        digits = 0
        for b, e in groups:
            digits += e - b
            if digits > 15:
                break
            if digits >= 8 and e < end:
                candidates.insert(0, (t0, e))
    for i in range(min(len(groups), _MAX_SKIP + 1)):
        for shape in (*_SHAPES, _SSN_SHAPE):
            if sizes[i : i + len(shape)] == shape:
                candidates.append((groups[i][0], groups[i + len(shape) - 1][1]))
        if 13 <= sizes[i] <= 19:
            candidates.append(groups[i])
    for a, b in candidates:
        if a == t0 and b == end:
            continue  # the whole token, already classified
        head = text[a:b]
        # Not national phones: 9-12 digits of any long run would pass for one.
        label = _classify(head, _NOT_DIGIT.sub("", head), text, a, national=False)
        if label is not None:
            if b < end and text[b] in _SEPS and text[b + 1] in _DIGITS:
                b += 1
            return label, b
    return None, end


def _left_ok(text: str, t0: int, *, follows: bool) -> bool:
    if t0 == 0:
        return True
    prev = text[t0 - 1]
    if prev in WORD or prev == "+":
        return False
    # "1-2345..." / "3.1415...": the tail of a longer number, not a token of its own, unless it
    # follows a number just taken from the same run. A "+" starts a token wherever it stands.
    if follows or text[t0] == "+":
        return True
    return not (prev in _SEPS and t0 >= 2 and text[t0 - 2] in _DIGITS)


def _letter_led(text: str, s: int, c1: str, c2: str) -> tuple[str | None, int] | None:
    if c1 in _UPPER and c2 in _UPPER:
        start = s - 2
        if start == 0 or text[start - 1] not in WORD:
            return _iban(text, start) or _nino(text, start)
        return None
    if c1 == " " and c2 in _UPPER and s >= 3 and text[s - 3] in _UPPER:
        start = s - 3
        if start == 0 or text[start - 1] not in WORD:
            return _nino(text, start)
        return None
    if c1 in "XYZ" and (s == 1 or c2 not in WORD):
        return _nie(text, s - 1)
    if c1 == "-" and c2 in "XYZ" and (s == 2 or text[s - 3] not in WORD):
        return _nie(text, s - 2)
    return None


def _iban(text: str, start: int) -> tuple[str | None, int] | None:
    m = _IBAN.match(text, start)
    if m is None:
        return None
    cand = m.group()
    want = IBAN_LENGTHS.get(cand[:2])
    if want is None:
        return None
    # The run may go on past the IBAN ("... 0130 00 2 days"): cut at the registered length,
    # which must fall on a group boundary. A run as long as a known country's IBAN that fails
    # is consumed all the same, or its digit groups would be read again as phones or cards.
    taken = 0
    for i, ch in enumerate(cand):
        if ch not in " -":
            taken += 1
            if taken == want:
                end = start + i + 1
                compact = cand[: i + 1].replace(" ", "").replace("-", "")
                if right_ok(text, end) and iban_ok(compact):
                    return labels.IBAN, end
                return None, m.end()
    return None


def _nino(text: str, start: int) -> tuple[str | None, int] | None:
    m = _NINO.match(text, start)
    if m is None or not right_ok(text, m.end()) or not uk_nino_ok(m[1], m[2]):
        return None
    return labels.UK_NINO, m.end()


def _nie(text: str, start: int) -> tuple[str | None, int] | None:
    m = _NIE.match(text, start)
    if m is None or not right_ok(text, m.end()):
        return None
    if not es_dni_ok(str("XYZ".index(m[1])) + m[2], m[3]):
        return None
    return labels.ES_NIE, m.end()


def _classify(token: str, digits: str, text: str, t0: int, *, national: bool = True) -> str | None:
    """The label of ``token`` (with separators), whose digits are ``digits`` (8 or more)."""
    n = len(digits)
    if token[0] == "+":
        return labels.PHONE if phones.is_international(token, digits) else None
    if "(" not in token and "/" not in token:
        # The SSN's AAA-GG-SSSS shape decides before a context word can: a BSN written just
        # before it must not claim it (found by the split-anywhere property test).
        if n == 9 and _SSN.fullmatch(token):
            return labels.US_SSN if us_ssn_ok(digits) else None
        ident = _context_id(digits, text, t0)
        if ident is not None:
            return ident
        if 13 <= n <= 19 and _card_shape(token):
            return labels.CARD if card_brand_ok(digits) and luhn_ok(digits) else None
    if token.startswith("00"):  # after the SSN: area 001-009 starts with 00 too
        return labels.PHONE if phones.is_international(token, digits) else None
    return labels.PHONE if national and phones.is_national(token, n) else None


def _context_id(digits: str, text: str, t0: int) -> str | None:
    entry = _BY_LENGTH.get(len(digits))
    if entry is None:
        return None
    label, valid = entry
    # The context word first: a regex over 48 characters is cheaper than a checksum in Python,
    # and most 9-12 digit numbers (ids, amounts) have none.
    before = text[max(0, t0 - _CONTEXT_SPAN) : t0].lower()
    return label if _CONTEXT[label].search(before) and valid(digits) else None


_BY_LENGTH = {
    9: (labels.NL_BSN, nl_bsn_ok),
    11: (labels.DE_TAX_ID, de_tax_id_ok),
    12: (labels.IN_AADHAAR, in_aadhaar_ok),
}


def _card_shape(token: str) -> bool:
    seps = set(_GROUPS.split(token)[1:-1])
    if len(seps) > 1 or not seps <= {" ", "-"}:
        return False
    sizes = [len(g) for g in _GROUPS.findall(token)]
    if len(sizes) == 1:
        return True
    if sizes in ([4, 6, 5], [4, 6, 4]):  # Amex, Diners
        return True
    return len(sizes) >= 4 and all(k == 4 for k in sizes[:-1]) and 1 <= sizes[-1] <= 4


# Maestro's issuer prefixes still in use (13-19 digits).
_MAESTRO = frozenset({5018, 5020, 5038, 5893, 6304, 6759, 6761, 6762, 6763})


def card_brand_ok(d: str) -> bool:
    """The number starts in an issuer (IIN) range and has a length that range issues."""
    n = len(d)
    p2, p3, p4, p6 = int(d[:2]), int(d[:3]), int(d[:4]), int(d[:6])
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if p4 == 6011 or 644 <= p3 <= 649 or p2 == 65 or 622126 <= p6 <= 622925:  # Discover
        return 16 <= n <= 19
    if p2 == 62 or 3528 <= p4 <= 3589 or 2200 <= p4 <= 2204:  # UnionPay, JCB, Mir
        return 16 <= n <= 19
    if 300 <= p3 <= 305 or p2 in (36, 38, 39):  # Diners Club
        return 14 <= n <= 19
    if p4 in _MAESTRO:
        return 13 <= n <= 19
    if p2 == 60 or p3 == 508 or 506099 <= p6 <= 506198 or p4 == 9792:  # RuPay, Verve, Troy
        return 16 <= n <= 19
    return False
