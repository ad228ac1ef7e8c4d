"""How every failure becomes ``{"error": {type, code, message, param}}``, and its OpenAPI entry.

Status and type follow the API conventions: 400 malformed, 401 authentication, 403 permission,
404 not found (also every ``*_not_found`` result code), 409 conflict, 413 body too large,
422 any other refusal with a code, 429 rate limited, 500 internal, 503 engine busy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from micropay.api.schemas import ErrorOut
from micropay.api.serialise import JsonResponse
from micropay.api.services import get_services
from micropay.errors import (
    ApiError,
    Conflict,
    EngineClosedError,
    InvalidRequest,
    MalformedRequest,
    NotFound,
    QueueFullError,
    Refused,
    StoreError,
)
from micropay.ledger import Result

log = logging.getLogger("micropay.api")

RETRY_AFTER_BUSY_S = 1
"""What a 503 (engine queue full or engine stopped) tells the client to wait."""

_PARAM_OF_RESULT: dict[str, str] = {
    "exists_with_different_fields": "id",
    "accounts_must_be_different": "credit_account_id",
    "debit_account_not_found": "debit_account_id",
    "credit_account_not_found": "credit_account_id",
    "ledger_not_found": "ledger",
    "ledger_mismatch": "ledger",
    "amount_must_be_positive": "amount",
    "amount_exceeds_maximum": "amount",
    "exceeds_credits": "amount",
    "exceeds_debits": "amount",
    "overflows_debits": "amount",
    "overflows_credits": "amount",
    "exceeds_pending_transfer_amount": "amount",
    "flags_are_mutually_exclusive": "flags",
    "timeout_reserved_for_pending_transfer": "timeout_s",
    "credit_limit_below_usage": "credit_limit",
}

_MESSAGE_OF_RESULT: dict[str, str] = {
    "exists_with_different_fields": "An object with this id already exists with different fields.",
    "accounts_must_be_different": "The debit and credit accounts must be different.",
    "ledger_mismatch": "Both accounts must be on the transfer's ledger.",
    "amount_must_be_positive": "The amount must be a positive integer.",
    "exceeds_credits": "The debit would take the account past its credits plus credit limit.",
    "exceeds_debits": "The credit would take the account past its debits plus credit limit.",
    "linked_event_failed": "Another transfer in the linked chain failed; nothing in the chain applied.",
    "linked_event_chain_open": "The linked chain is still open at the end of the request.",
    "credit_limit_below_usage": "The account already uses more than this credit limit.",
}

_STATUS_DESCRIPTION: dict[int, str] = {
    400: "Malformed request (types, shape, bounds; floats where integers go).",
    401: "No API key, or an unknown or revoked one.",
    403: "The key's role may not call this endpoint.",
    404: "No such object (or not the caller's); `error.code` names what was not found.",
    409: "The id exists with different fields (`exists_with_different_fields`).",
    413: "The request body is over the size limit.",
    422: "Refused; `error.code` is the result code.",
    429: "Rate limited; retry after `Retry-After` seconds.",
    500: "Internal error.",
    503: "The ledger engine is busy or stopped; retry after `Retry-After` seconds.",
}
_RETRY_AFTER_DOC = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all in the error shape."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorOut, "description": _STATUS_DESCRIPTION[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER_DOC
        entries[status] = entry
    return entries


READ_ERRORS = (400, 401, 403, 404, 429, 500)
WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 422, 429, 500, 503)


def _text(value: str) -> str:
    """Text that always encodes as UTF-8 (echoed input may hold lone surrogates)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def error_body(error_type: str, code: str, message: str, param: str | None) -> dict[str, Any]:
    return {
        "error": {
            "type": error_type,
            "code": code,
            "message": _text(message),
            "param": None if param is None else _text(param),
        }
    }


def result_error(result: Result, *, message: str | None = None, param: str | None = None) -> ApiError:
    """The API error for a ledger result code that refused a request."""
    code = result.value
    text = message or _MESSAGE_OF_RESULT.get(code) or code.replace("_", " ").capitalize() + "."
    where = param if param is not None else _PARAM_OF_RESULT.get(code)
    if code.startswith("pending_") and where is None:
        where = "pending_id"
    if code.endswith("_not_found"):
        return NotFound(code, text, where)
    if result is Result.EXISTS_WITH_DIFFERENT_FIELDS:
        return Conflict(code, text, where)
    return Refused(code, text, where)


def _param(loc: Sequence[str | int]) -> str | None:
    """``("body", "transfers", 3, "amount")`` -> ``"transfers[3].amount"``."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query", "path", "header") else list(loc)
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem pydantic found, as one 400 with the parameter it concerns."""
    errors = exc.errors()
    if not errors:
        return InvalidRequest("parameter_invalid", "The request is malformed.")
    first = errors[0]
    kind = str(first.get("type", ""))
    loc = first.get("loc", ())
    param = _param(loc)
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "json_invalid":
        return InvalidRequest("body_not_json", "The request body is not valid JSON.")
    if param is None and loc and loc[0] == "body":
        if kind == "missing":
            return InvalidRequest("parameter_missing", "A JSON request body is required.")
        return InvalidRequest(
            "body_invalid", "The body must be a JSON object, sent with Content-Type: application/json."
        )
    if kind == "missing":
        return InvalidRequest("parameter_missing", f"{param} is required.", param)
    if kind == "extra_forbidden":
        return InvalidRequest("parameter_unknown", f"{param} is not a known parameter.", param)
    return InvalidRequest("parameter_invalid", f"{param}: {message}.", param)


_CONFLICT_CODES = frozenset({"exists_with_different_fields", "already_distributed"})


def _status_and_type(error: ApiError) -> tuple[int, str]:
    """An error's status and type; a plain 422 refusal whose code says "not found" or
    "conflict" is answered as one (404 / 409), whoever raised it."""
    if type(error) is Refused:
        if error.code.endswith("_not_found"):
            return NotFound.status, NotFound.error_type
        if error.code in _CONFLICT_CODES:
            return Conflict.status, Conflict.error_type
    return error.status, error.error_type


def error_response(error: ApiError) -> JsonResponse:
    status, error_type = _status_and_type(error)
    return JsonResponse(
        error_body(error_type, error.code, error.message, error.param),
        status_code=status,
        headers=error.headers or None,
    )


async def _on_api_error(_request: Request, exc: Exception) -> Response:
    exc = cast(ApiError, exc)
    return error_response(exc)


async def _on_validation_error(_request: Request, exc: Exception) -> Response:
    exc = cast(RequestValidationError, exc)
    return error_response(validation_error(exc))


async def _on_malformed(_request: Request, exc: Exception) -> Response:
    exc = cast(MalformedRequest, exc)
    return error_response(ApiError("parameter_invalid", str(exc), exc.param))


async def _on_busy(_request: Request, exc: Exception) -> Response:
    headers = {"Retry-After": str(RETRY_AFTER_BUSY_S)}
    body = error_body("internal", "engine_unavailable", "The ledger engine cannot take work now; retry later.", None)
    return JsonResponse(body, status_code=503, headers=headers)


async def _on_store_error(_request: Request, exc: Exception) -> Response:
    log.error("store failure: %s", exc)
    body = error_body("internal", "storage_failed", "The ledger could not be written; nothing was applied.", None)
    return JsonResponse(body, status_code=500)


def _allowed_methods(request: Request) -> str:
    """The methods the routes of this path take (Starlette names only the first route's).

    The most specific path template wins: ``/v1/transfers/batch`` over ``/v1/transfers/{id}``.
    """
    path = request.url.path
    by_params: dict[int, set[str]] = {}
    for route in get_services(request).routes:
        if route.path_regex.match(path):
            by_params.setdefault(len(route.param_convertors), set()).update(route.methods or ())
    return ", ".join(sorted(by_params[min(by_params)])) if by_params else ""


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    exc = cast(StarletteHTTPException, exc)
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    if status == 404:
        body = error_body("not_found", "route_not_found", "No such endpoint.", None)
    elif status == 405:
        body = error_body("invalid_request", "method_not_allowed", "This endpoint does not take that method.", None)
    elif status == 413:
        body = error_body("invalid_request", "body_too_large", str(exc.detail), None)
    else:
        error_type = {401: "authentication", 403: "permission", 429: "rate_limited"}.get(
            status, "internal" if status >= 500 else "invalid_request"
        )
        body = error_body(error_type, "http_error", str(exc.detail), None)
    return JsonResponse(body, status_code=status, headers=headers or None)


async def _on_unexpected(_request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", exc_info=exc)
    return JsonResponse(error_body("internal", "internal_error", "An internal error occurred.", None), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(MalformedRequest, _on_malformed)
    app.add_exception_handler(QueueFullError, _on_busy)
    app.add_exception_handler(EngineClosedError, _on_busy)
    app.add_exception_handler(StoreError, _on_store_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)
