"""E-mail addresses, found from their ``@``.

A regex that starts at every letter of a prompt and backtracks over a local part is the slowest
thing a scanner can do; ``@`` is rare, so the detector finds it with ``str.find`` and reads the
local part backwards and the domain forwards from there.

Counted: a local part of 1-64 characters from ``A-Z a-z 0-9 . _ % + -`` (no leading, trailing or
doubled dot), then a domain of at least two labels ending in an alphabetic (or ``xn--``) top-level
label. Not counted: quoted local parts, IP-literal domains, non-ASCII local parts (an
internationalised domain is counted when written in its ``xn--`` form).
"""

from __future__ import annotations

import re
from collections import Counter

from agent.metering.detect.labels import EMAIL

# Read backwards from the "@": at most 64 characters, one more to see whether the run is longer.
_LOCAL_REVERSED = re.compile(r"[A-Za-z0-9._%+-]{1,65}")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}"
    r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})(?![A-Za-z0-9-])"
)
_MAX_LOCAL = 64
_MAX_DOMAIN = 8 * 64 + 63


class EmailDetector:
    left = _MAX_LOCAL + 2
    right = 1 + _MAX_DOMAIN + 1

    def scan(self, text: str, pos: int, limit: int, found: Counter[str]) -> int:
        find = text.find
        at = find("@", pos)
        while 0 <= at < limit:
            end = _address_end(text, at)
            if end:
                found[EMAIL] += 1
                pos = end
                at = find("@", end)
            else:
                at = find("@", at + 1)
        return max(pos, limit)


def _address_end(text: str, at: int) -> int:
    """The end of the address whose ``@`` is at ``at``, or 0 when it is none."""
    m = _LOCAL_REVERSED.match(text[max(0, at - _MAX_LOCAL - 1) : at][::-1])
    if m is None or m.end() > _MAX_LOCAL:
        return 0
    local = m.group()  # reversed; the checks below do not care about direction
    if local[0] == "." or local[-1] == "." or ".." in local:
        return 0
    d = _DOMAIN.match(text, at + 1)
    return d.end() if d is not None else 0
