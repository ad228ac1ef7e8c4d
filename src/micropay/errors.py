"""Every exception Micropay raises on purpose, in one module."""

from __future__ import annotations


class MicropayError(Exception):
    """Base of all Micropay errors."""


class InvariantViolation(MicropayError):
    """A ledger invariant failed: state is suspect and the engine stops.

    Raised by always-on checks (never bare ``assert``, which ``python -O`` strips).
    """


class MalformedRequest(MicropayError, ValueError):
    """A request has the wrong types or shape; nothing in its batch was applied."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StoreError(MicropayError):
    """The store failed to read or write; a failed write leaves nothing behind."""


class StoreLockedError(StoreError):
    """Another engine already writes this database."""


class StoreSchemaError(StoreError):
    """The database schema is newer than this code, or damaged."""


class EngineClosedError(MicropayError):
    """The engine is closed (or stopped after a fatal error) and takes no more work."""


class QueueFullError(MicropayError):
    """The engine's queue is at its bound; the caller should retry later."""


def require(condition: bool, message: str) -> None:
    """Always-on invariant check: raise InvariantViolation when ``condition`` is false."""
    if not condition:
        raise InvariantViolation(message)


class Refused(MicropayError):
    """A business rule refused a request; ``code`` says which (API.md's error codes).

    Raised inside an engine operation it undoes that operation's effects: nothing moves.
    """

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


class Declined(Refused):
    """A payment was declined (``insufficient_funds``, ``spend_cap_exceeded``...); nothing moved."""


class NotFound(Refused):
    """The object a request names does not exist (or is not the caller's)."""


class Conflict(Refused):
    """The id exists with different fields, or the action was already done."""
