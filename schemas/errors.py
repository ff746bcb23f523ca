"""Typed errors. Every message says what is wrong, where, and how to fix it."""

from __future__ import annotations


class PrefcurateError(Exception):
    """Base class of every error prefcurate raises on purpose."""


class SchemaError(PrefcurateError):
    """A table does not match its declared Arrow schema."""

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None):
        super().__init__(message)
        self.table = table
        self.column = column


class ConfigError(PrefcurateError):
    """A configuration file or override is invalid."""


class InputError(PrefcurateError):
    """An input file cannot be used (missing, unreadable, no good rows)."""


class StoreError(PrefcurateError):
    """The versioned dataset store refused an operation (bad name, missing version)."""


class EngineError(PrefcurateError):
    """A model engine could not be started or used."""
