"""Time passes: bought from the payer's balance as one charge, ``active`` by the engine clock.

Bought by admin, by the payer itself or by the merchant selling it (its own ``merchant_id``);
each sees its own passes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.pagination import Page
from micropay.api.payment_schemas import PassIn, PassList, PassOut
from micropay.api.payment_views import (
    guard,
    list_all,
    list_owned,
    merchant_not_found,
    payer_not_found,
    read_merchant,
    read_metadata,
    read_pass,
    read_payer,
    render_page,
    render_pass,
    render_stored_pass,
    with_metadata,
)
from micropay.api.routes.docs import create_responses, read_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.errors import InvalidRequest, NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models import index
from micropay.models.passes import PASS, buy_pass

router = APIRouter(prefix="/v1/passes", tags=["passes"], route_class=OrjsonRoute)

PassIdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
OwnerQuery = Annotated[str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
PassParty = Annotated[Principal, Depends(require_roles("admin", "merchant", "payer"))]


def _not_found(pass_id: str) -> NotFound:
    return NotFound("pass_not_found", f"No pass {pass_id}.", "pass_id")


@router.post("", status_code=201, response_model=PassOut, responses=create_responses(PassOut))
async def create_pass(body: PassIn, request: Request, caller: PassParty) -> Response:
    """Buy access for ``duration_s`` from now, charged like any charge (declines alike)."""
    if caller.role == "merchant":
        guard(caller, merchant_not_found(body.merchant_id), merchant_id=body.merchant_id)
    elif caller.role == "payer":
        guard(caller, payer_not_found(body.payer_id), payer_id=body.payer_id)
    engine = get_services(request).engine
    pass_id = body.id or new_id("pass")
    operation = buy_pass(pass_id, body.payer_id, body.merchant_id, body.price, body.duration_s)
    record, replayed = await engine.call_async(with_metadata(operation, PASS, pass_id, body.metadata))
    return created(render_pass(record, engine.now_ns(), body.metadata), replayed=replayed)


@router.get("", response_model=PassList, responses=read_responses())
def list_passes(
    request: Request,
    caller: PassParty,
    page_params: Page,
    payer_id: OwnerQuery = None,
    merchant_id: OwnerQuery = None,
) -> Response:
    """Passes ordered by id: all (admin), one payer's or one merchant's; a payer or merchant key
    sees only its own."""
    if payer_id is not None and merchant_id is not None:
        raise InvalidRequest("parameter_invalid", "Filter by payer_id or by merchant_id, not both.", "merchant_id")
    engine = get_services(request).engine
    now_ns = engine.now_ns()
    if caller.role == "payer":
        payer_id = payer_id or caller.subject_id
    elif caller.role == "merchant":
        merchant_id = merchant_id or caller.subject_id
    if payer_id is not None:
        guard(caller, payer_not_found(payer_id), payer_id=payer_id)
        read_payer(engine, payer_id)
        ids, has_more = list_owned(engine, index.PASS_BY_PAYER, payer_id, page_params)
    elif merchant_id is not None:
        guard(caller, merchant_not_found(merchant_id), merchant_id=merchant_id)
        read_merchant(engine, merchant_id)
        ids, has_more = list_owned(engine, index.PASS_BY_MERCHANT, merchant_id, page_params)
    else:
        bodies, has_more = list_all(engine, PASS, page_params)
        return JsonResponse(page([render_stored_pass(engine, body, now_ns) for body in bodies], has_more))
    return JsonResponse(render_page(engine, PASS, ids, has_more, lambda body: render_stored_pass(engine, body, now_ns)))


@router.get("/{pass_id}", response_model=PassOut, responses=read_responses())
def get_pass(pass_id: PassIdPath, request: Request, caller: PassParty) -> Response:
    """A pass; ``active`` while the engine clock is within ``[valid_from, valid_until)``."""
    engine = get_services(request).engine
    record = read_pass(engine, pass_id)
    if record is None:
        raise _not_found(pass_id)
    guard(caller, _not_found(pass_id), payer_id=record.payer_id, merchant_id=record.merchant_id)
    return JsonResponse(render_pass(record, engine.now_ns(), read_metadata(engine, PASS, record.id)))
