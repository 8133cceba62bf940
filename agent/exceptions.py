"""Errors raised by the agent package.

Hierarchy::

    AgentError
    ├── ConfigError          bad configuration: names file, key and reason
    ├── CaptureError         a packet source cannot be opened or read (missing, corrupt file)
    ├── SpoolError           the local spool cannot store or read
    │   └── UnknownBatchError    an ack/release names a batch the spool did not lease
    ├── LocalApiError        a bad request to, or answer from, the agent's local socket
    │   └── AgentUnavailableError  no agent answers on the socket
    ├── StatusError          the agent's status file is missing or unreadable
    ├── CollectorError       a call to the collector failed (gRPC status by name, its message)
    ├── EnrollmentError      enrolment or renewal cannot succeed without an operator
    ├── BundleError          a signed bundle was refused
    └── DecodeError          malformed packet or message bytes; counted and skipped by callers
        └── TruncatedError   the bytes end before the structure does (may complete later)
"""

from __future__ import annotations


class AgentError(Exception):
    """Base class for every error the agent raises on purpose."""


class ConfigError(AgentError):
    """A configuration value is wrong; the message names file, key and reason."""


class CaptureError(AgentError):
    """A packet source cannot be opened or read."""


class DecodeError(AgentError):
    """Bytes that do not decode as the protocol they claim to be."""


class TruncatedError(DecodeError):
    """The bytes end before the structure does; more data may complete it."""


class LocalApiError(AgentError):
    """The local API answered with an error, or answered something that is not the protocol."""


class AgentUnavailableError(LocalApiError):
    """No agent answers on the socket (missing, refused, permission denied, timed out)."""


class SpoolError(AgentError):
    """The spool cannot be opened, read or written (missing, unreadable, corrupt, too new)."""


class UnknownBatchError(SpoolError):
    """``ack``/``release`` of a batch id this spool did not lease (or already settled)."""


class StatusError(AgentError):
    """The status file is missing, unreadable or not a status file."""


# gRPC statuses by name: retried with backoff, or meaning this agent is refused
TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED"})
REFUSED = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})


class CollectorError(AgentError):
    """A call to the collector failed with a gRPC status (by name) and the server's message."""

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, from retry-after-ms

    @property
    def transient(self) -> bool:
        return self.code in TRANSIENT

    @property
    def revoked(self) -> bool:
        return self.code in REFUSED


class EnrollmentError(AgentError):
    """Enrolment or renewal cannot succeed without an operator (bad token, CA mismatch, ...)."""


class BundleError(AgentError):
    """A bundle was refused (bad signature, wrong hash, unsafe archive, invalid content)."""
