"""Enrolment tokens: random, shown once, stored only as a SHA-256 hash with expiry and uses left.

A token reads ``lnt_<id>_<secret>``; the short ``id`` names it in ``token list``/``token revoke``
and in error messages without revealing the secret part.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from collector.exceptions import CollectorError
from collector.store import Store

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
MAX_TTL = 365 * 86400.0


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``15m``, ``24h``, ``7d`` or ``2w`` (ValueError names the problem)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 24h or 7d")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be greater than zero")
    return seconds


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(store: Store, ttl: float, uses: int = 1, now: float | None = None) -> str:
    """Store a new token's hash and return the token itself (the only time it is seen)."""
    if not 0 < ttl <= MAX_TTL:
        raise CollectorError(f"a token's lifetime must be between 1 second and {MAX_TTL:.0f} s")
    if uses < 1:
        raise CollectorError("a token must have at least one use")
    token_id = secrets.token_hex(4)
    token = f"lnt_{token_id}_{secrets.token_urlsafe(32)}"
    store.add_token(token_id, hash_token(token), time.time() if now is None else now, ttl, uses)
    return token
