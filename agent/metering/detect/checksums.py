"""Check digits and structure rules: Luhn, IBAN mod-97, and the national identifier checks.

Every function takes the compact form (digits, or upper-case letters and digits, no separators)
and answers yes or no; none keeps or returns its input.
"""

from __future__ import annotations

# IBAN length per country (SWIFT IBAN registry; 89 countries). A test compares it with
# python-stdnum's copy of the registry.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check, as used by payment cards."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        total += _LUHN_DOUBLE[d] if i & 1 else d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """Country known, length as registered, check digits valid (ISO 13616 mod-97 == 1)."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    # int(c, 36) maps 0-9 to 0-9 and A-Z to 10-35, exactly the IBAN letter substitution.
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def us_ssn_ok(digits: str) -> bool:
    """SSA rules: area not 000, 666 or 9xx; group not 00; serial not 0000; no known samples."""
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    # Numbers printed in advertising and documentation, and one digit repeated, are not
    # anyone's SSN; presidio rejects the same ones.
    return digits not in _SSN_SAMPLES and digits != digits[0] * 9


_SSN_SAMPLES = frozenset({"078051120", "219099999", "123456789", "987654320"})

# UK NINO prefix letters: first not D F I Q U V, second not D F I O Q U V, pair not
# one of the administrative prefixes (HMRC NIM39110).
_NINO_FIRST = frozenset("ABCEGHJKLMNOPRSTWXYZ")
_NINO_SECOND = frozenset("ABCEGHJKLMNPRSTWXYZ")
_NINO_BAD_PREFIX = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def uk_nino_ok(prefix: str, suffix: str) -> bool:
    return (
        prefix[0] in _NINO_FIRST
        and prefix[1] in _NINO_SECOND
        and prefix not in _NINO_BAD_PREFIX
        and suffix in "ABCD"
    )


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_dni_ok(number: str, letter: str) -> bool:
    """Spanish DNI (and NIE with X/Y/Z replaced by 0/1/2): letter = table[number mod 23]."""
    return _DNI_LETTERS[int(number) % 23] == letter


def nl_bsn_ok(digits: str) -> bool:
    """Dutch BSN 11-test: 9*d1 + 8*d2 + ... + 2*d8 - d9 is a multiple of 11 (and not 0)."""
    if len(digits) != 9 or digits == "000000000":
        return False
    total = sum((9 - i) * (ord(c) - 48) for i, c in enumerate(digits[:8]))
    return (total - (ord(digits[8]) - 48)) % 11 == 0


def de_tax_id_ok(digits: str) -> bool:
    """German Steuer-IdNr: no leading 0, some digit of the first ten repeats but none more than
    three times, ISO 7064 MOD 11,10 check digit."""
    if len(digits) != 11 or digits[0] == "0":
        return False
    counts = [digits[:10].count(d) for d in set(digits[:10])]
    if max(counts) > 3 or max(counts) < 2:
        return False
    product = 10
    for ch in digits[:10]:
        total = (ord(ch) - 48 + product) % 10 or 10
        product = total * 2 % 11
    return (11 - product) % 10 == ord(digits[10]) - 48


_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def verhoeff_ok(digits: str) -> bool:
    c = 0
    for i, ch in enumerate(reversed(digits)):
        c = _VERHOEFF_D[c][_VERHOEFF_P[i % 8][ord(ch) - 48]]
    return c == 0


def in_aadhaar_ok(digits: str) -> bool:
    """Aadhaar: 12 digits, first 2-9, not a palindrome (UIDAI never issues one), Verhoeff."""
    return (
        len(digits) == 12
        and digits[0] not in "01"
        and digits != digits[::-1]
        and verhoeff_ok(digits)
    )
