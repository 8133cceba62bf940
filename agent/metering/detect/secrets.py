"""Credentials: cloud and SaaS API keys, tokens, private keys and JWTs.

Each pattern starts with a fixed prefix, so the regex engine finds candidates with a fast literal
search; a candidate counts only when no character of its own alphabet touches either end (it is
not the middle of a longer token) and its decide function accepts it:

- AWS access key id: ``AKIA``/``ASIA`` + 16 upper-case letters or digits;
- AWS secret key: 40 base64 characters assigned to a ``secret_access_key`` / ``SecretAccessKey``
  name (``=``, ``:`` or ``=>``, optional quotes), with both letter cases present;
- Google API key: ``AIza`` + 35;
- OpenAI: ``sk-``, ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-`` + at least 32 characters mixing
  upper case, lower case and digits (rules out ``sk-learn-style-words``);
- Anthropic: ``sk-ant-`` + at least 32;
- GitHub: ``ghp_ gho_ ghu_ ghs_ ghr_`` + 36 or more, ``github_pat_`` + 22 or more (the CRC32 in
  new-style tokens is not checked: documentation examples would fail it but are still keys);
- Slack: ``xoxa- xoxb- xoxe- xoxp- xoxr- xoxs-`` + 10 or more, with a digit;
- Stripe: live secret and restricted keys ``sk_live_`` / ``rk_live_`` (test keys are not secret);
- private keys: a PEM/OpenSSH/PGP ``-----BEGIN ... PRIVATE KEY-----`` armour line;
- JWT: ``eyJ`` header . payload . signature (each base64url, 8+ characters; header at most
  1 KiB, payload 8 KiB, signature 1 KiB) whose header decodes to a JSON object with ``alg``.
"""

from __future__ import annotations

import base64
import binascii
import json

from agent.metering.detect import labels
from agent.metering.detect.engine import WORD
from agent.metering.detect.tokens import TokenDetector, always

_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_WORD_DASH = WORD | {"-"}
_OPENAI_KINDS = ("proj-", "svcacct-", "admin-")
# What follows an AWS secret key's name: an optional quote, "=", ":" or "=>", 40 base64 chars.
_AWS_SECRET_VALUE = (
    r"[\"']?[ \t]{0,3}(?:=>|[:=])[ \t]{0,3}[\"']?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
)


def _mixed(s: str) -> bool:
    return (
        any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)
    )


def _sk(token: str) -> str | None:
    body = token[3:]
    if body.startswith("ant-"):
        return labels.ANTHROPIC_API_KEY if len(body) >= 4 + 32 else None
    for kind in _OPENAI_KINDS:
        if body.startswith(kind):
            body = body[len(kind) :]
            break
    return labels.OPENAI_API_KEY if len(body) >= 32 and _mixed(body) else None


def _aws_secret(token: str) -> str | None:
    value = token[-40:]
    has_both_cases = any(c.isupper() for c in value) and any(c.islower() for c in value)
    return labels.AWS_SECRET_KEY if has_both_cases else None


def _slack(token: str) -> str | None:
    return labels.SLACK_TOKEN if any(c.isdigit() for c in token[5:]) else None


def _jwt(token: str) -> str | None:
    head = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError included
        return None
    return labels.JWT if isinstance(header, dict) and "alg" in header else None


def secret_detectors() -> list[TokenDetector]:
    return [
        TokenDetector(
            r"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
            4 + 16 + 1,
            always(labels.AWS_ACCESS_KEY_ID),
            before=_ALNUM,
        ),
        # Literal-prefixed ("ecret", "ECRET") rather than "[Ss](?:ecret|ECRET)...": the regex
        # engine searches a literal prefix some ten times faster than a character class. The
        # look-behinds put back the "S" and check the character before it.
        *(
            TokenDetector(
                rf"{head}(?<={lead}{head})(?<![A-Za-z0-9]{lead}{head}){tail}" + _AWS_SECRET_VALUE,
                len(head) + len("_access_key") + 1 + 3 + 2 + 3 + 1 + 40 + 1,
                _aws_secret,
                before=frozenset(),
                left=2,
            )
            for lead, head, tail in (
                ("[Ss]", "ecret", "(?:_access_key|AccessKey)"),
                ("S", "ECRET", "_ACCESS_KEY"),
            )
        ),
        TokenDetector(
            r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])",
            4 + 35 + 1,
            always(labels.GOOGLE_API_KEY),
            before=_WORD_DASH,
        ),
        TokenDetector(
            r"sk-[A-Za-z0-9_-]{20,250}(?![A-Za-z0-9_-])", 3 + 250 + 1, _sk, before=_WORD_DASH
        ),
        TokenDetector(
            r"gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9_])",
            4 + 251 + 1,
            always(labels.GITHUB_TOKEN),
            before=WORD,
        ),
        TokenDetector(
            r"github_pat_[A-Za-z0-9_]{22,251}(?![A-Za-z0-9_])",
            11 + 251 + 1,
            always(labels.GITHUB_TOKEN),
            before=WORD,
        ),
        TokenDetector(
            r"xox[abeprs]-[A-Za-z0-9-]{10,250}(?![A-Za-z0-9-])", 5 + 250 + 1, _slack, before=WORD
        ),
        TokenDetector(
            r"sk_live_[A-Za-z0-9]{20,250}(?![A-Za-z0-9])",
            8 + 250 + 1,
            always(labels.STRIPE_KEY),
            before=WORD,
        ),
        TokenDetector(
            r"rk_live_[A-Za-z0-9]{20,250}(?![A-Za-z0-9])",
            8 + 250 + 1,
            always(labels.STRIPE_KEY),
            before=WORD,
        ),
        TokenDetector(
            r"-----BEGIN (?:[A-Z0-9]{1,16} ){0,3}PRIVATE KEY(?: BLOCK)?-----",
            11 + 3 * 17 + 11 + 6 + 5 + 1,
            always(labels.PRIVATE_KEY),
            before=frozenset(),
        ),
        TokenDetector(
            r"eyJ[A-Za-z0-9_-]{8,1024}\.[A-Za-z0-9_-]{8,8192}\.[A-Za-z0-9_-]{8,1024}"
            r"(?![A-Za-z0-9_-])",
            3 + 1024 + 1 + 8192 + 1 + 1024 + 1,
            _jwt,
            before=_WORD_DASH | {"."},
        ),
    ]
