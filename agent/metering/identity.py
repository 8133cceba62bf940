"""Who a call is for: attribution tags and the API-key fingerprint, never the key or content.

Tags come from optional ``X-Lantern-*`` request headers (which the addon strips before the
request leaves the machine: `HEADERS_TO_STRIP`) and from the providers' own small metadata
fields (OpenAI ``user`` / ``metadata``, Anthropic ``metadata.user_id``). The API key becomes an
HMAC-SHA256 under a device-local secret (so the collector can group calls by key without being
able to test guesses without that secret) and a provider-style hint such as ``sk-proj-...abcd``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlsplit

from agent.metering.records import Tags

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]

# Request headers that only tell Lantern about the call; the addon removes them upstream.
TAG_HEADERS: dict[str, str] = {
    "x-lantern-feature": "feature",
    "x-lantern-team": "team",
    "x-lantern-customer": "customer",
    "x-lantern-cost-center": "cost_center",
}
HEADERS_TO_STRIP: tuple[str, ...] = tuple(TAG_HEADERS)

MAX_TAG_VALUE = 256  # OpenAI caps metadata values at 512 chars; ours are labels, not text
MAX_METADATA_TAGS = 16  # OpenAI's own limit on metadata pairs
MAX_TAG_KEY = 64

_BEARER = re.compile(r"bearer\s+(\S+)", re.IGNORECASE)
_SIGV4_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]{16,128})/")
# Leading lower-case groups that providers put before the secret part: sk-, sk-proj-, sk-ant-,
# xai-, gsk_, pplx-, fw_, hf_ ...
_KEY_PREFIX = re.compile(r"^(?:[a-z]{1,8}[-_]){1,2}")
_KNOWN_BARE_PREFIXES = ("AIza", "AKIA", "ASIA", "ABSK")  # Google, AWS access keys, Bedrock keys
_MIN_KEY_FOR_TAIL = 16


def normalize_headers(headers: HeaderInput) -> dict[str, str]:
    """Lower-cased names; the last value wins for repeated headers (none we read repeat)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        out[name.strip().lower()] = value.strip()
    return out


def _clean(value: object, limit: int = MAX_TAG_VALUE) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > limit or not value.isprintable():
        return None
    return value


def header_tags(headers: Mapping[str, str]) -> Tags:
    tags = []
    for header, key in TAG_HEADERS.items():
        value = _clean(headers.get(header))
        if value is not None:
            tags.append((key, value))
    return tuple(tags)


def body_tags(user: object, metadata: object) -> Tags:
    """Tags from a request's ``user`` and ``metadata`` fields (string values only)."""
    tags: list[tuple[str, str]] = []
    cleaned_user = _clean(user)
    if cleaned_user is not None:
        tags.append(("user", cleaned_user))
    if isinstance(metadata, Mapping):
        for key, value in list(metadata.items())[:MAX_METADATA_TAGS]:
            name = _clean(key, MAX_TAG_KEY)
            cleaned = _clean(value)
            if name is None or cleaned is None:
                continue
            # Anthropic's only metadata field is the end user's id: it is a user tag.
            tags.append(("user", cleaned) if name == "user_id" else (f"metadata.{name}", cleaned))
    return tuple(tags)


def api_key(headers: Mapping[str, str], url: str) -> str | None:
    """The credential that identifies the caller, from the headers providers use for it."""
    for name in ("x-api-key", "api-key", "x-goog-api-key"):
        value = headers.get(name)
        if value:
            return value
    auth = headers.get("authorization", "")
    m = _BEARER.match(auth)
    if m:
        return m.group(1)
    m = _SIGV4_CREDENTIAL.search(auth)
    if m:
        return m.group(1)  # the AWS access key id, never the signature or the secret key
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "key" and value:  # Gemini API keys may ride in the query string
            return value
    return None


def fingerprint(key: str, secret: bytes) -> str:
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()


def key_hint(key: str) -> str:
    """``sk-proj-...abcd``: the provider's own prefix and the last four characters.

    Short keys get no tail: four characters of a short secret are too large a share of it.
    """
    m = _KEY_PREFIX.match(key)
    bare = next((p for p in _KNOWN_BARE_PREFIXES if key.startswith(p)), "")
    prefix = m.group(0) if m else bare
    tail = key[-4:] if len(key) >= _MIN_KEY_FOR_TAIL else ""
    return f"{prefix}...{tail}"
