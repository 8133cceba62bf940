"""Errors raised by the signatures package.

Hierarchy::

    SignatureError
    └── CatalogError     unreadable file or invalid entry (file, line, entry, field)
"""

from __future__ import annotations


class SignatureError(Exception):
    """Base class for errors of the catalog and matcher."""


class CatalogError(SignatureError):
    """A catalog file or entry is invalid. The message names file, line, entry and field."""
