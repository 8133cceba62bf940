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
