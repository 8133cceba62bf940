"""Factories for detector tests: valid and invalid identifiers, filler text, documents."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from hypothesis import strategies as st

from agent.metering.detect import labels
from agent.metering.detect.checksums import IBAN_LENGTHS

_FILLER_TEXT = (
    "the report shows quarterly revenue for our team please summarise this draft and check "
    "tone of the message before we send it to legal review meeting notes follow up action "
    "items"
)
FILLER_WORDS = _FILLER_TEXT.split()

_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


@dataclass(frozen=True)
class Item:
    """One embedded thing: its text, and the labels Lantern should count for it."""

    kind: str
    text: str
    expect: dict[str, int] = field(default_factory=dict)


def luhn_complete(partial: str) -> str:
    """``partial`` plus the Luhn check digit that makes it valid."""
    for d in "0123456789":
        if _luhn(partial + d):
            return partial + d
    raise AssertionError("unreachable")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_number(rng: random.Random, prefix: str, length: int, *, valid: bool = True) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    number = luhn_complete(body)
    if not valid:
        number = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    return number


def group4(number: str, sep: str = " ") -> str:
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


def iban(rng: random.Random, country: str, *, valid: bool = True) -> str:
    """An IBAN of ``country`` whose BBAN follows the registry format (python-stdnum's copy)."""
    from stdnum import iban as stdnum_iban
    from stdnum import numdb

    spec = numdb.get("iban").info(country)[0][1]["bban"]
    bban = ""
    for count, kind in re.findall(r"(\d+)!?([nac])", spec):
        alphabet = {"n": "0123456789", "a": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}.get(
            kind, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        )
        bban += "".join(rng.choice(alphabet) for _ in range(int(count)))
    assert len(bban) + 4 == IBAN_LENGTHS[country]
    check = stdnum_iban.calc_check_digits(country + "00" + bban)
    if not valid:
        check = f"{(int(check) + rng.randint(1, 96)) % 97:02d}"
    return country + check + bban


def ssn(rng: random.Random, area: int | None = None) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666]) if area is None else area
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def dni(rng: random.Random, *, valid: bool = True) -> str:
    number = rng.randint(10_000_000, 99_999_999)
    letter = _DNI_LETTERS[number % 23]
    if not valid:
        letter = _DNI_LETTERS[(number + rng.randint(1, 22)) % 23]
    return f"{number}{letter}"


def nie(rng: random.Random, *, valid: bool = True) -> str:
    prefix = rng.choice("XYZ")
    number = rng.randint(0, 9_999_999)
    letter = _DNI_LETTERS[int(f"{'XYZ'.index(prefix)}{number:07d}") % 23]
    if not valid:
        letter = _DNI_LETTERS[(_DNI_LETTERS.index(letter) + rng.randint(1, 22)) % 23]
    return f"{prefix}{number:07d}{letter}"


def nino(rng: random.Random) -> str:
    first = rng.choice("ABCEGHJKLMNOPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    while first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
        second = rng.choice("ABCEHJKLMPRSW")
    digits = [f"{rng.randint(0, 99):02d}" for _ in range(3)]
    sep = rng.choice(["", " "])
    return sep.join([first + second, *digits, rng.choice("ABCD")])


def bsn(rng: random.Random) -> str:
    from stdnum.nl import bsn as stdnum_bsn

    while True:
        number = f"{rng.randint(10_000_000, 999_999_999):09d}"
        if stdnum_bsn.is_valid(number):
            return number


def de_tax_id(rng: random.Random) -> str:
    from stdnum.de import idnr
    from stdnum.iso7064 import mod_11_10

    while True:
        digits = [str(d) for d in rng.sample(range(10), 9)]
        digits.insert(rng.randint(0, 9), rng.choice(digits))
        if digits[0] == "0":
            continue
        number = "".join(digits)
        number += mod_11_10.calc_check_digit(number)
        if idnr.is_valid(number):
            return number


def aadhaar(rng: random.Random) -> str:
    from stdnum import verhoeff
    from stdnum.in_ import aadhaar as stdnum_aadhaar

    while True:
        number = str(rng.randint(2, 9)) + "".join(rng.choice("0123456789") for _ in range(10))
        number += verhoeff.calc_check_digit(number)
        if stdnum_aadhaar.is_valid(number):
            return number


def email(rng: random.Random) -> str:
    def word(n: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(n))

    local = word(rng.randint(1, 12))
    if rng.random() < 0.5:
        local += rng.choice("._+-") + word(rng.randint(1, 8))
    domain = word(rng.randint(1, 10)) + "." + rng.choice(["com", "org", "net", "io", "de", "co.uk"])
    return f"{local}@{domain}"


def flip_digit(text: str, rng: random.Random, *, position: int | None = None) -> str:
    """``text`` with one digit changed."""
    positions = [i for i, c in enumerate(text) if c.isdigit()]
    i = positions[-1] if position is None else positions[position]
    return text[:i] + str((int(text[i]) + rng.randint(1, 9)) % 10) + text[i + 1 :]


# -- Items for the streaming and oracle properties ----------------------------------------------

CARD_BRANDS = (("4", 16), ("51", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16))


def make_item(kind: str, rng: random.Random) -> Item:
    """One item of ``kind``; kinds ending in ``_bad`` are near misses that must not count."""
    if kind == "email":
        return Item(kind, email(rng), {labels.EMAIL: 1})
    if kind in ("card", "card_bad"):
        prefix, length = rng.choice(CARD_BRANDS)
        number = card_number(rng, prefix, length, valid=kind == "card")
        text = (
            group4(number, rng.choice([" ", "-"]))
            if length == 16 and rng.random() < 0.5
            else number
        )
        return Item(kind, text, {labels.CARD: 1} if kind == "card" else {})
    if kind in ("iban", "iban_bad"):
        country = rng.choice(["DE", "GB", "FR", "NL", "ES", "IT", "BE", "CH", "PL", "NO"])
        value = iban(rng, country, valid=kind == "iban")
        text = group4(value) if rng.random() < 0.5 else value
        return Item(kind, text, {labels.IBAN: 1} if kind == "iban" else {})
    if kind == "ssn":
        return Item(kind, ssn(rng), {labels.US_SSN: 1})
    if kind == "ssn_bad":
        area = rng.choice([0, 666, rng.randint(900, 999)])
        return Item(kind, ssn(rng, area))
    if kind == "nino":
        return Item(kind, nino(rng), {labels.UK_NINO: 1})
    if kind in ("dni", "dni_bad"):
        return Item(
            kind, dni(rng, valid=kind == "dni"), {labels.ES_DNI: 1} if kind == "dni" else {}
        )
    if kind in ("nie", "nie_bad"):
        return Item(
            kind, nie(rng, valid=kind == "nie"), {labels.ES_NIE: 1} if kind == "nie" else {}
        )
    if kind == "bsn":
        return Item(kind, "BSN: " + bsn(rng), {labels.NL_BSN: 1})
    if kind == "de_tax_id":
        return Item(kind, "Steuer-ID " + de_tax_id(rng), {labels.DE_TAX_ID: 1})
    if kind == "aadhaar":
        number = aadhaar(rng)
        return Item(
            kind,
            "Aadhaar " + " ".join(number[i : i + 4] for i in (0, 4, 8)),
            {labels.IN_AADHAAR: 1},
        )
    if kind == "phone":
        number = rng.choice(
            [
                "+1 415-555-2671",
                "+44 20 7946 0958",
                "+49 30 901820",
                "(415) 555-2671",
                "020 7946 0958",
                "+33 1 23 45 67 89",
            ]
        )
        return Item(kind, number, {labels.PHONE: 1})
    if kind == "aws":
        key = "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        return Item(kind, key, {labels.AWS_ACCESS_KEY_ID: 1})
    if kind == "github":
        token = "ghp_" + "".join(
            rng.choice("abcdefghijkmnopqrstuvwxyzABCDEFGH0123456789") for _ in range(36)
        )
        return Item(kind, token, {labels.GITHUB_TOKEN: 1})
    if kind == "marking":
        text, label = rng.choice(
            [
                ("CONFIDENTIAL", labels.MARK_CONFIDENTIAL),
                ("INTERNAL ONLY", labels.MARK_INTERNAL),
                ("TOP SECRET", labels.MARK_TOP_SECRET),
            ]
        )
        return Item(kind, text, {label: 1})
    raise ValueError(kind)


STREAM_KINDS = (
    "email", "card", "card_bad", "iban", "iban_bad", "ssn", "ssn_bad", "nino", "dni", "dni_bad",
    "nie", "nie_bad", "bsn", "de_tax_id", "aadhaar", "phone", "aws", "github", "marking",
)  # fmt: skip


@st.composite
def documents(
    draw: st.DrawFn, kinds: tuple[str, ...] = STREAM_KINDS, max_items: int = 12
) -> tuple[str, list[Item]]:
    """A document: filler words with items embedded, and the items."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    chosen = draw(st.lists(st.sampled_from(kinds), max_size=max_items))
    parts: list[str] = []
    items: list[Item] = []
    for kind in chosen:
        parts.append(filler(rng, draw(st.integers(1, 120))))
        item = make_item(kind, rng)
        items.append(item)
        parts.append(item.text)
    parts.append(filler(rng, draw(st.integers(0, 120))))
    return " ".join(parts), items


def filler(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(FILLER_WORDS) for _ in range(n_words)]
    for i in range(0, len(words), 11):
        words[i] += rng.choice([",", ".", ";", "\n", ""])
    return " ".join(words)


def expected(items: list[Item]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        for label, n in item.expect.items():
            out[label] = out.get(label, 0) + n
    return out


def split_frac(data: bytes, fractions: list[float]) -> list[bytes]:
    """``data`` cut at the given fractions of its length."""
    return split_at(data, [int(f * len(data)) for f in fractions])


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces
