"""Ledgers (admin): ``POST /v1/ledgers``, ``GET /v1/ledgers``, ``GET /v1/ledgers/{code}``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from micropay.api.auth import Admin
from micropay.api.idempotency import replayed
from micropay.api.pagination import Page, split_page
from micropay.api.routes.docs import create_responses, read_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import LEDGER_CODE_PATTERN, LedgerIn, LedgerList, LedgerOut
from micropay.api.serialise import JsonResponse, created, page, render_ledger
from micropay.api.services import get_engine
from micropay.errors import NotFound
from micropay.ledger.limits import LEDGER_CODE_LENGTH_MAX

router = APIRouter(prefix="/v1/ledgers", tags=["ledgers"], route_class=OrjsonRoute)

LedgerCodePath = Annotated[str, Path(min_length=1, max_length=LEDGER_CODE_LENGTH_MAX, pattern=LEDGER_CODE_PATTERN)]


@router.post("", status_code=201, response_model=LedgerOut, responses=create_responses(LedgerOut))
async def create_ledger(body: LedgerIn, request: Request, _caller: Admin) -> Response:
    """Create a ledger (a currency or asset) named by its code, with its scale."""
    result, ledger = await get_engine(request).call_async(lambda ctx: ctx.create_ledger(body.code, body.scale))
    return created(render_ledger(ledger), replayed=replayed(result, param="code"))


@router.get("", response_model=LedgerList, responses=read_responses())
def list_ledgers(request: Request, _caller: Admin, page_params: Page) -> Response:
    """Ledgers ordered by code."""
    after = page_params.starting_after
    ledgers = [ledger for ledger in get_engine(request).ledgers() if after is None or ledger.code > after]
    data, has_more = split_page(ledgers, page_params.limit)
    return JsonResponse(page([render_ledger(ledger) for ledger in data], has_more))


@router.get("/{code}", response_model=LedgerOut, responses=read_responses())
def get_ledger(code: LedgerCodePath, request: Request, _caller: Admin) -> Response:
    ledger = get_engine(request).ledger(code)
    if ledger is None:
        raise NotFound("ledger_not_found", f"No ledger {code}.", "code")
    return JsonResponse(render_ledger(ledger))
