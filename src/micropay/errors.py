"""Every exception Micropay raises on purpose, in one module."""

from __future__ import annotations

from collections.abc import Sequence


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


class BatchConflict(StoreError):
    """A concurrent writer held or wrote the same rows (deadlock, duplicate id): the engine
    retries the whole batch on fresh reads, so no caller sees this unless retries run out.
    ``transfer_ids`` are ids the failed attempt tried to create (the next one reads them first)."""

    def __init__(self, message: str, transfer_ids: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.transfer_ids = tuple(transfer_ids)


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


class ApiError(MicropayError):
    """A refusal the HTTP API renders as ``{"error": {type, code, message, param}}`` with ``status``.

    Raised by the API face, and by business rules inside an engine operation (which undoes
    that operation's effects: nothing moves). The subclasses fix the status and error type.
    """

    status: int = 400
    error_type: str = "invalid_request"

    def __init__(
        self, code: str, message: str, param: str | None = None, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.headers = headers or {}


class InvalidRequest(ApiError):
    """400: the request is malformed (types, shape, bounds)."""


class AuthenticationFailed(ApiError):
    """401: no API key, an unknown one, or a revoked one."""

    status = 401
    error_type = "authentication"


class PermissionDenied(ApiError):
    """403: the key's role may never call this endpoint."""

    status = 403
    error_type = "permission"


class NotFound(ApiError):
    """404: no such object, or one the caller may not see."""

    status = 404
    error_type = "not_found"


class Conflict(ApiError):
    """409: the id exists with different fields, or the action was already done."""

    status = 409
    error_type = "conflict"


class BodyTooLarge(ApiError):
    """413: the request body is over the configured size limit."""

    status = 413


class Refused(ApiError):
    """422: a well-formed request the ledger (or a model) refused, with a result code."""

    status = 422


class PaymentDeclined(Refused):
    """422: a charge was declined."""

    error_type = "payment_declined"


class RateLimited(ApiError):
    """429: the key's request budget is spent; retry after ``Retry-After`` seconds."""

    status = 429
    error_type = "rate_limited"


class ServiceUnavailable(ApiError):
    """503: the engine is overloaded or stopped; retry later."""

    status = 503
    error_type = "internal"
