"""Payers: create and list (admin; a payer key lists itself), read (admin, the payer itself),
change (admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.pagination import Page, split_page
from micropay.api.payment_schemas import PayerIn, PayerList, PayerOut, PayerPatch
from micropay.api.payment_views import guard, payer_not_found, read, read_payer, render_payer, with_metadata
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models.payments import PAYER, PayerRequest, create_payer, update_payer
from micropay.models.records import SpendCap, decode_payer

router = APIRouter(prefix="/v1/payers", tags=["payers"], route_class=OrjsonRoute)

PayerIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The payer id.")
]
PayerReader = Annotated[Principal, Depends(require_roles("admin", "payer"))]


@router.post("", status_code=201, response_model=PayerOut, responses=create_responses(PayerOut))
async def create_payer_route(body: PayerIn, request: Request, _caller: Admin) -> Response:
    """Open a payer: its wallet, promo balance and tab on its ledger. ``id`` is the idempotency key."""
    services = get_services(request)
    payer_request = PayerRequest(
        id=body.id or new_id("payer"),
        ledger=body.ledger,
        mode=body.mode,
        credit_limit=body.credit_limit,
        spend_caps=tuple(SpendCap(cap.period, cap.amount) for cap in body.spend_caps),
    )
    operation = with_metadata(create_payer(payer_request, services.rails), PAYER, payer_request.id, body.metadata)
    payer, replayed = await services.engine.call_async(operation)
    rendered = await run_in_threadpool(render_payer, services.engine, payer, services.engine.now_ns(), body.metadata)
    return created(rendered, replayed=replayed)


@router.get("", response_model=PayerList, responses=read_responses())
def list_payers(request: Request, caller: PayerReader, page_params: Page) -> Response:
    """Payers ordered by id (a payer key: itself)."""
    engine = get_services(request).engine
    now_ns = engine.now_ns()
    if caller.is_admin:
        rows = engine.store.list_documents(PAYER, page_params.starting_after, page_params.limit + 1)
        bodies, has_more = split_page([body for _, body in rows], page_params.limit)
        return JsonResponse(page([render_payer(engine, decode_payer(body), now_ns) for body in bodies], has_more))
    own = caller.subject_id or ""
    payer = read(engine, PAYER, own, decode_payer)
    mine = payer is not None and (page_params.starting_after is None or own > page_params.starting_after)
    return JsonResponse(page([render_payer(engine, payer, now_ns)] if mine and payer else [], False))


@router.get("/{payer_id}", response_model=PayerOut, responses=read_responses())
def get_payer(payer_id: PayerIdPath, request: Request, caller: PayerReader) -> Response:
    """A payer with its balances: ``available = balance + promo_balance - held``."""
    guard(caller, payer_not_found(payer_id, "payer_id"), payer_id=payer_id)
    engine = get_services(request).engine
    return JsonResponse(render_payer(engine, read_payer(engine, payer_id), engine.now_ns()))


@router.patch("/{payer_id}", response_model=PayerOut, responses=write_responses())
async def update_payer_route(payer_id: PayerIdPath, body: PayerPatch, request: Request, _caller: Admin) -> Response:
    """Change the credit limit (never below what the tab owes), the spending caps or the status."""
    engine = get_services(request).engine
    caps = None if body.spend_caps is None else tuple(SpendCap(cap.period, cap.amount) for cap in body.spend_caps)
    operation = update_payer(payer_id, credit_limit=body.credit_limit, spend_caps=caps, status=body.status)
    payer = await engine.call_async(operation)
    return JsonResponse(await run_in_threadpool(render_payer, engine, payer, engine.now_ns()))
