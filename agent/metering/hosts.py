"""Which connections the metering proxy opens: catalog hosts, never pinned ones, nothing else.

mitmproxy matches ``allow_hosts`` / ``ignore_hosts`` regexes against ``host:port`` strings (the
CONNECT target or original destination, the TLS SNI, the Host header). `intercept_rules` turns
the catalog into one allow regex (every host pattern that is not pinned) and one ignore regex
(the pinned ones); everything else passes through as opaque TCP/TLS. `should_intercept` is the
exact decision (most specific catalog match, as `Matcher` makes it), which the addon applies
again at the TLS ClientHello.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from signatures.matcher import Matcher
from signatures.model import HostPattern

_PORT = r"(?::\d+)?$"
NEVER = r"^(?!)"  # a regex no host matches: an empty catalog intercepts nothing


def pattern_regex(host: HostPattern) -> str:
    """One catalog host pattern as a regex over a bare, lower-case hostname (no anchors)."""
    if host.kind == "domain":
        return rf"(?:[^:]*\.)?{re.escape(host.pattern)}"
    if host.kind == "exact":
        return re.escape(host.pattern)
    return f"(?:{host.pattern})"


def _joined(hosts: Iterable[HostPattern]) -> str | None:
    parts = sorted({pattern_regex(h) for h in hosts})
    if not parts:
        return None
    return "^(?:" + "|".join(parts) + ")" + _PORT


def intercept_rules(matcher: Matcher) -> tuple[list[str], list[str]]:
    """``(allow_hosts, ignore_hosts)`` option values for mitmproxy."""
    patterns = matcher.host_patterns()
    allow = _joined(h for h in patterns if not h.pinned)
    ignore = _joined(h for h in patterns if h.pinned)
    return [allow or NEVER], [ignore] if ignore else []


def should_intercept(matcher: Matcher, hostname: str | None) -> bool:
    """True when ``hostname`` is a catalog host whose most specific pattern is not pinned."""
    if not hostname:
        return False
    match = matcher.match_name(hostname)
    return match is not None and not match.pinned
