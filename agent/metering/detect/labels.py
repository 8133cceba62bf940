"""The built-in label names and the data class each one implies.

One table, the single source of the mapping (`LABEL_CLASS` below must equal it; a test checks):

====================================  ============  =============================================
label                                 data class    found by
====================================  ============  =============================================
pii.email                             confidential  local@domain.tld (ASCII local part)
pii.phone                             confidential  +CC / 00CC international, NANP, trunk-0 national
finance.payment_card                  restricted    13-19 digits, IIN range + length, Luhn
finance.iban                          restricted    country length table + mod-97
id.us_ssn                             restricted    AAA-GG-SSSS, SSA invalid-area rules
id.uk_nino                            restricted    AA 99 99 99 A, excluded prefixes
id.es_dni                             restricted    8 digits + control letter (mod 23)
id.es_nie                             restricted    X/Y/Z + 7 digits + control letter
id.nl_bsn                             restricted    9 digits, 11-test, context word needed
id.de_tax_id                          restricted    11 digits, ISO 7064 mod 11,10, context word
id.in_aadhaar                         restricted    12 digits, Verhoeff, context word needed
secret.aws_access_key_id              restricted    AKIA/ASIA + 16
secret.aws_secret_key                 restricted    40 chars after a secret_access_key name
secret.google_api_key                 restricted    AIza + 35
secret.openai_api_key                 restricted    sk- / sk-proj- / sk-svcacct- / sk-admin-
secret.anthropic_api_key              restricted    sk-ant-
secret.github_token                   restricted    ghp_ gho_ ghu_ ghs_ ghr_ github_pat_
secret.slack_token                    restricted    xoxb- xoxa- xoxp- xoxr- xoxs- xoxe-
secret.stripe_key                     restricted    sk_live_ / rk_live_
secret.private_key                    restricted    -----BEGIN ... PRIVATE KEY-----
secret.jwt                            restricted    eyJ header (JSON with "alg") . payload . sig
marking.top_secret                    restricted    TOP SECRET
marking.secret                        restricted    SECRET
marking.restricted                    restricted    RESTRICTED
marking.strictly_confidential         restricted    STRICTLY / HIGHLY CONFIDENTIAL
marking.privileged                    restricted    ATTORNEY-CLIENT PRIVILEGED(E), PRIVILEGED
                                                    AND/& CONFIDENTIAL, LEGALLY PRIVILEGED
marking.confidential                  confidential  CONFIDENTIAL
marking.not_for_distribution          confidential  NOT FOR DISTRIBUTION, DO NOT DISTRIBUTE
marking.internal                      internal      INTERNAL ONLY, (FOR) INTERNAL USE ONLY
org.*                                 (own)         organisation keywords and patterns
====================================  ============  =============================================

A body with no label is ``public``. Personal data that identifies a person directly but is
routinely shared (e-mail, phone) is confidential; anything that moves money, proves identity or
grants access is restricted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agent.metering.detect.records import DATA_CLASSES, DataClass

EMAIL = "pii.email"
PHONE = "pii.phone"
CARD = "finance.payment_card"
IBAN = "finance.iban"
US_SSN = "id.us_ssn"
UK_NINO = "id.uk_nino"
ES_DNI = "id.es_dni"
ES_NIE = "id.es_nie"
NL_BSN = "id.nl_bsn"
DE_TAX_ID = "id.de_tax_id"
IN_AADHAAR = "id.in_aadhaar"
AWS_ACCESS_KEY_ID = "secret.aws_access_key_id"
AWS_SECRET_KEY = "secret.aws_secret_key"
GOOGLE_API_KEY = "secret.google_api_key"
OPENAI_API_KEY = "secret.openai_api_key"
ANTHROPIC_API_KEY = "secret.anthropic_api_key"
GITHUB_TOKEN = "secret.github_token"
SLACK_TOKEN = "secret.slack_token"
STRIPE_KEY = "secret.stripe_key"
PRIVATE_KEY = "secret.private_key"
JWT = "secret.jwt"
MARK_TOP_SECRET = "marking.top_secret"
MARK_SECRET = "marking.secret"
MARK_RESTRICTED = "marking.restricted"
MARK_STRICTLY_CONFIDENTIAL = "marking.strictly_confidential"
MARK_PRIVILEGED = "marking.privileged"
MARK_CONFIDENTIAL = "marking.confidential"
MARK_NOT_FOR_DISTRIBUTION = "marking.not_for_distribution"
MARK_INTERNAL = "marking.internal"

ORG_PREFIX = "org."

LABEL_CLASS: Mapping[str, DataClass] = {
    EMAIL: "confidential",
    PHONE: "confidential",
    CARD: "restricted",
    IBAN: "restricted",
    US_SSN: "restricted",
    UK_NINO: "restricted",
    ES_DNI: "restricted",
    ES_NIE: "restricted",
    NL_BSN: "restricted",
    DE_TAX_ID: "restricted",
    IN_AADHAAR: "restricted",
    AWS_ACCESS_KEY_ID: "restricted",
    AWS_SECRET_KEY: "restricted",
    GOOGLE_API_KEY: "restricted",
    OPENAI_API_KEY: "restricted",
    ANTHROPIC_API_KEY: "restricted",
    GITHUB_TOKEN: "restricted",
    SLACK_TOKEN: "restricted",
    STRIPE_KEY: "restricted",
    PRIVATE_KEY: "restricted",
    JWT: "restricted",
    MARK_TOP_SECRET: "restricted",
    MARK_SECRET: "restricted",
    MARK_RESTRICTED: "restricted",
    MARK_STRICTLY_CONFIDENTIAL: "restricted",
    MARK_PRIVILEGED: "restricted",
    MARK_CONFIDENTIAL: "confidential",
    MARK_NOT_FOR_DISTRIBUTION: "confidential",
    MARK_INTERNAL: "internal",
}

_RANK = {name: i for i, name in enumerate(DATA_CLASSES)}


def highest(classes: Iterable[DataClass]) -> DataClass:
    """The highest of some data classes; ``public`` for none."""
    return max(classes, key=_RANK.__getitem__, default="public")
