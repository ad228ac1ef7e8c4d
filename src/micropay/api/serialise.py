"""JSON out through orjson, and the wire shape of ledger objects."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.responses import JSONResponse

from micropay.ledger import ACCOUNT_FLAG_NAMES, TRANSFER_FLAG_NAMES, Account, Ledger, Transfer
from micropay.ledger.limits import NS_PER_S
from micropay.ledger.types import flag_names

REPLAYED_HEADER = "Idempotent-Replayed"


class JsonResponse(JSONResponse):
    """A JSON response rendered by orjson (C speed; keys as given, no NaN)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def rfc3339(timestamp_ns: int) -> str:
    """A nanosecond Unix timestamp as RFC 3339 UTC with microseconds, e.g. ``2025-01-31T12:00:00.000001Z``."""
    seconds, rest_ns = divmod(timestamp_ns, NS_PER_S)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest_ns // 1000:06d}Z"


def render_ledger(ledger: Ledger) -> dict[str, Any]:
    return {"code": ledger.code, "scale": ledger.scale, "created_at": rfc3339(ledger.timestamp)}


def render_account(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "ledger": account.ledger,
        "flags": flag_names(account.flags, ACCOUNT_FLAG_NAMES),
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
        "flags": flag_names(transfer.flags, TRANSFER_FLAG_NAMES),
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
