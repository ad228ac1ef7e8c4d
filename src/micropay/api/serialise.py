"""JSON out through orjson, and the wire shape of ledger objects."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse

from micropay.ledger import ACCOUNT_FLAG_NAMES, TRANSFER_FLAG_NAMES, Account, Ledger, Transfer
from micropay.ledger.limits import NS_PER_S
from micropay.ledger.types import flag_names

REPLAYED_HEADER = "Idempotent-Replayed"
_JSON_CONTENT_TYPE = JSONResponse.media_type.encode("latin-1")


class JsonResponse(JSONResponse):
    """A JSON response rendered by orjson (C speed; keys as given, no NaN)."""

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if headers is not None or media_type is not None or status_code < 200 or status_code in (204, 304):
            super().__init__(content, status_code, headers, media_type, background)
            return
        # What Starlette's Response sets up, without its general header handling (a hot path).
        self.status_code = status_code
        self.background = background
        self.body = body = orjson.dumps(content)
        self.raw_headers = [(b"content-length", b"%d" % len(body)), (b"content-type", _JSON_CONTENT_TYPE)]

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


_second_text: tuple[int, str] = (-1, "")
"""The last whole second rendered, and its text (most timestamps in a burst share it)."""


def rfc3339(timestamp_ns: int) -> str:
    """A nanosecond Unix timestamp as RFC 3339 UTC with microseconds, e.g. ``2025-01-31T12:00:00.000001Z``."""
    global _second_text
    seconds, rest_ns = divmod(timestamp_ns, NS_PER_S)
    last_seconds, text = _second_text
    if seconds != last_seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second_text = (seconds, text)
    return f"{text}.{rest_ns // 1000:06d}Z"


_TRANSFER_FLAG_LISTS: dict[int, tuple[str, ...]] = {}
_ACCOUNT_FLAG_LISTS: dict[int, tuple[str, ...]] = {}


def _transfer_flags(flags: int) -> list[str]:
    names = _TRANSFER_FLAG_LISTS.get(flags)
    if names is None:
        names = _TRANSFER_FLAG_LISTS[flags] = tuple(flag_names(flags, TRANSFER_FLAG_NAMES))
    return list(names)


def _account_flags(flags: int) -> list[str]:
    names = _ACCOUNT_FLAG_LISTS.get(flags)
    if names is None:
        names = _ACCOUNT_FLAG_LISTS[flags] = tuple(flag_names(flags, ACCOUNT_FLAG_NAMES))
    return list(names)


def render_ledger(ledger: Ledger) -> dict[str, Any]:
    return {"code": ledger.code, "scale": ledger.scale, "created_at": rfc3339(ledger.timestamp)}


def render_account(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "ledger": account.ledger,
        "flags": _account_flags(account.flags),
        "credit_limit": account.credit_limit,
        "debits_posted": account.debits_posted,
        "credits_posted": account.credits_posted,
        "debits_pending": account.debits_pending,
        "credits_pending": account.credits_pending,
        "balance": account.balance,
        "available": account.available,
        "metadata": dict(account.metadata),
        "created_at": rfc3339(account.timestamp),
    }


def render_transfer(transfer: Transfer) -> dict[str, Any]:
    return {
        "id": transfer.id,
        "debit_account_id": transfer.debit_account_id,
        "credit_account_id": transfer.credit_account_id,
        "amount": transfer.amount,
        "ledger": transfer.ledger,
        "code": transfer.code,
        "flags": _transfer_flags(transfer.flags),
        "pending_id": transfer.pending_id or None,
        "timeout_s": transfer.timeout_s,
        "metadata": dict(transfer.metadata),
        "timestamp": transfer.timestamp,
        "created_at": rfc3339(transfer.timestamp),
    }


def page(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """The list shape every list endpoint answers."""
    return {"data": data, "has_more": has_more}


def created(body: dict[str, Any], *, replayed: bool) -> JsonResponse:
    """201 for a new object; 200 with ``Idempotent-Replayed: true`` for a replay of one."""
    if replayed:
        return JsonResponse(body, status_code=200, headers={REPLAYED_HEADER: "true"})
    return JsonResponse(body, status_code=201)
