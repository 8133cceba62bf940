"""Which digit tokens count as phone numbers.

Accepted, with separators (space, hyphen, dot, parentheses) as people write them:

- international: ``+`` (or ``00`` with separators), an assigned ITU country calling code, 8-15
  digits in all
  (a ``(0)`` trunk digit after the country code is allowed and not counted);
- North American (NANP): ``(415) 555-2671``, ``415-555-2671``, ``415.555.2671``,
  ``1-415-555-2671``; area code and exchange start with 2-9; separators required;
- national with a trunk ``0`` (UK, DE, FR, NL, IT, IN, IL, ...): ``020 7946 0958``,
  ``030 12345678``, ``01 23 45 67 89``: 9-12 digits, at least one separator.

False-positive control: a bare run of digits without ``+`` or separators is never a phone (it is
more often an order or account number); tokens that start with a date (``01.02.2024 ...``) are not
phones; ``/`` is not a phone separator because dates use it. Not covered: national formats
without a trunk prefix outside NANP (Spain's ``612 345 678``, India's ``98765 43210``, Brazil's
``(11) 96123-4567``), and numbers written with words or letters.
"""

from __future__ import annotations

import re

# ITU-T E.164 assigned country calling codes (the set phonenumbers knows; a test compares).
_CODES_TEXT = """
    1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 58 60 61 62
    63 64 65 66 81 82 84 86 90 91 92 93 94 95 98 211 212 213 216 218 220 221 222 223 224 225
    226 227 228 229 230 231 232 233 234 235 236 237 238 239 240 241 242 243 244 245 246 247 248
    249 250 251 252 253 254 255 256 257 258 260 261 262 263 264 265 266 267 268 269 290 291 297
    298 299 350 351 352 353 354 355 356 357 358 359 370 371 372 373 374 375 376 377 378 380 381
    382 383 385 386 387 389 420 421 423 500 501 502 503 504 505 506 507 508 509 590 591 592 593
    594 595 596 597 598 599 670 672 673 674 675 676 677 678 679 680 681 682 683 685 686 687 688
    689 690 691 692 800 808 850 852 853 855 856 870 878 880 881 882 883 886 888 960 961 962 963
    964 965 966 967 968 970 971 972 973 974 975 976 977 979 992 993 994 995 996 998
"""
COUNTRY_CODES = frozenset(_CODES_TEXT.split())

_NANP = re.compile(
    r"(?:1[ .-]?)?(?:\([2-9][0-9]{2}\)[ .-]?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-][0-9]{4}",
    re.ASCII,
)
# The trunk-0 national shape: a 0-led first group (optionally in parentheses), then groups of
# 2-8 digits joined by one separator each.
_TRUNK = re.compile(
    r"(?:\(0[1-9][0-9]{0,4}\)[ -]?|0[1-9][0-9]{0,4}[ .-])[0-9]{2,8}(?:[ .-][0-9]{2,8}){0,4}",
    re.ASCII,
)
# Day, month and a four-digit year first: a timestamp, not a number to call.
_DATE_LIKE = re.compile(r"[0-9]{1,2}([./-])[0-9]{1,2}\1(?:19|20)[0-9]{2}(?![0-9])", re.ASCII)
_TRUNK_IN_INTL = re.compile(r"\(0\)")


def is_international(token: str, digits: str) -> bool:
    """``token`` starts with ``+`` or ``00``; ``digits`` are all its digits."""
    if token.startswith("00"):
        digits = digits[2:]
    elif "(0)" in token:
        digits = "".join(ch for ch in _TRUNK_IN_INTL.sub("", token) if ch.isdigit())
    if not 8 <= len(digits) <= 15:
        return False
    return digits[:1] in COUNTRY_CODES or digits[:2] in COUNTRY_CODES or digits[:3] in COUNTRY_CODES


def is_national(token: str, n_digits: int) -> bool:
    """A NANP or trunk-0 national number, written with separators."""
    if n_digits in (10, 11) and _NANP.fullmatch(token):
        return True
    if not 9 <= n_digits <= 12 or _DATE_LIKE.match(token):
        return False
    return _TRUNK.fullmatch(token) is not None
