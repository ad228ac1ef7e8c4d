"""Idempotent creates: the client's id is the idempotency key.

The ledger answers ``ok`` (new: 201), ``exists`` (same id, same fields: 200 replay with
``Idempotent-Replayed: true``) or ``exists_with_different_fields`` (409). Two identical
requests racing are serialised by the engine, so money moves once and the later one replays.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import orjson

from micropay.api.errors import result_error
from micropay.engine import BatchContext
from micropay.ledger import Account, AccountRequest, Result

ACCOUNT_REQUEST_KIND = "account_request"
"""Document kind remembering the fields of an account's create request the ledger does not
compare on a replay (the credit limit, which PATCH may change later)."""


def new_id(prefix: str) -> str:
    """A server-made id when the client sends none: ``<prefix>_`` and 24 hex digits (96 bits)."""
    return f"{prefix}_{secrets.token_hex(12)}"


def replayed(result: Result, *, param: str | None = None) -> bool:
    """False for a new object, True for a replay; raise the API error for any other result."""
    if result is Result.OK:
        return False
    if result is Result.EXISTS:
        return True
    raise result_error(result, param=param)


def create_account_operation(request: AccountRequest) -> Callable[[BatchContext], tuple[Result, Account | None]]:
    """An engine operation opening one account, where a replay must also match the credit limit
    the account was first asked with (the ledger compares ledger, flags and metadata)."""
    fingerprint = orjson.dumps({"credit_limit": request.credit_limit})

    def operation(ctx: BatchContext) -> tuple[Result, Account | None]:
        [(result, account)] = ctx.create_accounts([request])
        if result is Result.OK:
            ctx.put_document(ACCOUNT_REQUEST_KIND, request.id, fingerprint)
        elif result is Result.EXISTS:
            stored = ctx.get_document(ACCOUNT_REQUEST_KIND, request.id)
            if stored is not None and stored != fingerprint:
                result = Result.EXISTS_WITH_DIFFERENT_FIELDS
        return result, account

    return operation
