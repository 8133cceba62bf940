"""Errors raised by the collector package.

Hierarchy::

    CollectorError
    ├── PkiError             the CA, a certificate, a key or a CSR is missing, unreadable or invalid
    ├── TokenError           an enrolment token is refused; the subclass says why
    │   ├── TokenUnknownError    no such token
    │   ├── TokenExpiredError    past its expiry
    │   ├── TokenUsedUpError     no uses left
    │   └── TokenRevokedError    revoked by an operator
    ├── AgentRefusedError    the agent is unknown or revoked
    │   └── CertificateReplacedError  it called with a certificate renewal has replaced
    ├── BadRequestError      a request is malformed; the message says which field and why
    ├── StoreError           the store cannot read or write
    └── BundleError          a bundle cannot be built

``agent.exceptions.ConfigError`` is raised for bad configuration (the collector reuses the
agent's option registry). ``collector.bundle_verify.BundleVerifyError`` stands alone so that the
agent can verify bundles without importing this package's server side.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base class for every error the collector raises on purpose."""


class PkiError(CollectorError):
    """A CA, certificate, key or CSR is missing, unreadable or invalid."""


class TokenError(CollectorError):
    """An enrolment token was refused."""


class TokenUnknownError(TokenError):
    pass


class TokenExpiredError(TokenError):
    pass


class TokenUsedUpError(TokenError):
    pass


class TokenRevokedError(TokenError):
    pass


class AgentRefusedError(CollectorError):
    """The calling agent is unknown to this collector or has been revoked."""


class CertificateReplacedError(AgentRefusedError):
    """The agent called with a certificate that renewal has replaced."""


class BadRequestError(CollectorError):
    """A request is malformed; the message names the field and the reason."""


class StoreError(CollectorError):
    """The store cannot read or write."""


class BundleError(CollectorError):
    """A bundle cannot be built."""
