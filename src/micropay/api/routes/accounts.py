"""Accounts (admin): create, list, read, change the credit limit, list an account's transfers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from micropay.api.auth import Admin
from micropay.api.errors import result_error
from micropay.api.history import account_history
from micropay.api.idempotency import create_account_operation, new_id, replayed
from micropay.api.pagination import Page, split_page
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import (
    LEDGER_ID_PATTERN,
    AccountIn,
    AccountList,
    AccountOut,
    AccountPatch,
    TransferList,
    metadata_pairs,
)
from micropay.api.serialise import JsonResponse, created, page, render_account
from micropay.api.services import get_engine
from micropay.errors import InvariantViolation, NotFound
from micropay.ledger import ACCOUNT_FLAG_NAMES, AccountRequest, Result
from micropay.ledger.limits import LEDGER_ID_LENGTH_MAX
from micropay.ledger.validate import is_valid_id

router = APIRouter(prefix="/v1/accounts", tags=["accounts"], route_class=OrjsonRoute)

AccountIdPath = Annotated[
    str,
    Path(min_length=1, max_length=LEDGER_ID_LENGTH_MAX, pattern=LEDGER_ID_PATTERN, description="The account id."),
]


def _not_found(account_id: str) -> NotFound:
    return NotFound("account_not_found", f"No account {account_id}.", "account_id")


@router.post("", status_code=201, response_model=AccountOut, responses=create_responses(AccountOut))
async def create_account(body: AccountIn, request: Request, _caller: Admin) -> Response:
    """Open an account on a ledger. ``id`` is the idempotency key."""
    flags = 0
    for name in body.flags:
        flags |= ACCOUNT_FLAG_NAMES[name]
    account_request = AccountRequest(
        id=body.id or new_id("acct"),
        ledger=body.ledger,
        flags=flags,
        credit_limit=body.credit_limit,
        metadata=metadata_pairs(body.metadata),
    )
    result, account = await get_engine(request).call_async(create_account_operation(account_request))
    is_replay = replayed(result)
    if account is None:
        raise InvariantViolation(f"account {account_request.id}: {result} without the account")
    return created(render_account(account), replayed=is_replay)


@router.get("", response_model=AccountList, responses=read_responses())
def list_accounts(request: Request, _caller: Admin, page_params: Page) -> Response:
    """Accounts ordered by id."""
    accounts = get_engine(request).accounts(page_params.starting_after, page_params.limit + 1)
    data, has_more = split_page(accounts, page_params.limit)
    return JsonResponse(page([render_account(account) for account in data], has_more))


@router.get("/{account_id}", response_model=AccountOut, responses=read_responses())
def get_account(account_id: AccountIdPath, request: Request, _caller: Admin) -> Response:
    account = get_engine(request).account(account_id)
    if account is None:
        raise _not_found(account_id)
    return JsonResponse(render_account(account))


@router.patch("/{account_id}", response_model=AccountOut, responses=write_responses())
async def update_account(account_id: AccountIdPath, body: AccountPatch, request: Request, _caller: Admin) -> Response:
    """Change the credit limit; never below what the account already uses of it.

    Accounts the business models keep (ids with ``:``) are changed through their own endpoints.
    """
    if not is_valid_id(account_id):
        raise _not_found(account_id)
    credit_limit = body.credit_limit
    result, account = await get_engine(request).call_async(lambda ctx: ctx.set_credit_limit(account_id, credit_limit))
    if result is Result.ACCOUNT_NOT_FOUND:
        raise _not_found(account_id)
    if result is not Result.OK or account is None:
        raise result_error(result)
    return JsonResponse(render_account(account))


@router.get("/{account_id}/transfers", response_model=TransferList, responses=read_responses())
def list_account_transfers(account_id: AccountIdPath, request: Request, _caller: Admin, page_params: Page) -> Response:
    """The account's transfers, newest first; ``starting_after`` is a transfer id."""
    return JsonResponse(account_history(get_engine(request), account_id, page_params, param="account_id"))
