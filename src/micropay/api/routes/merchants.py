"""Merchants: create (admin), list (admin; a merchant key lists itself), read (admin, the
merchant itself) with ``balance`` and ``available`` (balance less earnings on hold)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.pagination import Page, split_page
from micropay.api.payment_schemas import MerchantIn, MerchantList, MerchantOut
from micropay.api.payment_views import guard, merchant_not_found, read, read_merchant, render_merchant, with_metadata
from micropay.api.routes.docs import create_responses, read_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models.payments import MERCHANT, MerchantRequest, create_merchant
from micropay.models.records import decode_merchant

router = APIRouter(prefix="/v1/merchants", tags=["merchants"], route_class=OrjsonRoute)

MerchantIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The merchant id.")
]
MerchantReader = Annotated[Principal, Depends(require_roles("admin", "merchant"))]


@router.post("", status_code=201, response_model=MerchantOut, responses=create_responses(MerchantOut))
async def create_merchant_route(body: MerchantIn, request: Request, _caller: Admin) -> Response:
    """Open a merchant on a ledger, with its platform fee and payout terms."""
    services = get_services(request)
    merchant_request = MerchantRequest(
        id=body.id or new_id("merchant"),
        ledger=body.ledger,
        fee_percent_bps=body.fee.percent_bps,
        fee_fixed=body.fee.fixed,
        payout_threshold=body.payout.threshold,
        payout_hold_days=body.payout.hold_days,
    )
    operation = with_metadata(
        create_merchant(merchant_request, services.rails), MERCHANT, merchant_request.id, body.metadata
    )
    merchant, replayed = await services.engine.call_async(operation)
    engine = services.engine
    rendered = await run_in_threadpool(render_merchant, engine, merchant, engine.now_ns(), body.metadata)
    return created(rendered, replayed=replayed)


@router.get("", response_model=MerchantList, responses=read_responses())
def list_merchants(request: Request, caller: MerchantReader, page_params: Page) -> Response:
    """Merchants ordered by id (a merchant key: itself)."""
    engine = get_services(request).engine
    now_ns = engine.now_ns()
    if caller.is_admin:
        rows = engine.store.list_documents(MERCHANT, page_params.starting_after, page_params.limit + 1)
        bodies, has_more = split_page([body for _, body in rows], page_params.limit)
        data = [render_merchant(engine, decode_merchant(body), now_ns) for body in bodies]
        return JsonResponse(page(data, has_more))
    own = caller.subject_id or ""
    merchant = read(engine, MERCHANT, own, decode_merchant)
    if merchant is None or (page_params.starting_after is not None and own <= page_params.starting_after):
        return JsonResponse(page([], False))
    return JsonResponse(page([render_merchant(engine, merchant, now_ns)], False))


@router.get("/{merchant_id}", response_model=MerchantOut, responses=read_responses())
def get_merchant(merchant_id: MerchantIdPath, request: Request, caller: MerchantReader) -> Response:
    guard(caller, merchant_not_found(merchant_id), merchant_id=merchant_id)
    engine = get_services(request).engine
    return JsonResponse(render_merchant(engine, read_merchant(engine, merchant_id), engine.now_ns()))
