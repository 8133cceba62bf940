"""Errors raised by the agent package.

Hierarchy::

    AgentError
    ├── ConfigError          bad configuration: names file, key and reason
    ├── CaptureError         a packet source cannot be opened or read (missing, corrupt file)
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
