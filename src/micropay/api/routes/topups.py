"""Top-ups (cash-in through a rail): create for a payer, read, list (admin, the payer itself)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.pagination import Page
from micropay.api.payment_schemas import TopupIn, TopupList, TopupOut
from micropay.api.payment_views import (
    guard,
    list_all,
    list_owned,
    payer_not_found,
    read_metadata,
    read_payer,
    read_topup,
    render_page,
    render_stored_topup,
    render_topup,
    with_metadata,
)
from micropay.api.routes.docs import create_responses, read_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.errors import NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models import index
from micropay.models.payments import TOPUP, TopupRequest, topup

router = APIRouter(tags=["top-ups"], route_class=OrjsonRoute)

IdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
PayerReader = Annotated[Principal, Depends(require_roles("admin", "payer"))]


def _not_found(topup_id: str) -> NotFound:
    return NotFound("topup_not_found", f"No top-up {topup_id}.", "topup_id")


@router.post(
    "/v1/payers/{payer_id}/topups", status_code=201, response_model=TopupOut, responses=create_responses(TopupOut)
)
async def create_topup(payer_id: IdPath, body: TopupIn, request: Request, caller: PayerReader) -> Response:
    """Cash-in through a rail (``card``, ``bank``): the wallet receives ``amount`` in full when the
    top-up ``succeeded``; the rail's fee is the platform's expense. ``card`` answers at once;
    ``bank`` answers ``pending`` and settles a few seconds later."""
    guard(caller, payer_not_found(payer_id), payer_id=payer_id)
    services = get_services(request)
    topup_request = TopupRequest(body.id or new_id("topup"), payer_id, body.amount, body.rail, body.simulate_failure)
    operation = with_metadata(topup(topup_request, services.rails), TOPUP, topup_request.id, body.metadata)
    record, replayed = await services.engine.call_async(operation)
    return created(render_topup(record, body.metadata), replayed=replayed)


@router.get("/v1/topups", response_model=TopupList, responses=read_responses())
def list_topups(
    request: Request,
    caller: PayerReader,
    page_params: Page,
    payer_id: Annotated[str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)] = None,
) -> Response:
    """Top-ups ordered by id: all of them (admin), or one payer's (``payer_id``; a payer key: its own)."""
    engine = get_services(request).engine
    owner = payer_id if caller.is_admin else (payer_id or caller.subject_id or "")
    if owner is None:
        bodies, has_more = list_all(engine, TOPUP, page_params)
        return JsonResponse(page([render_stored_topup(engine, body) for body in bodies], has_more))
    guard(caller, payer_not_found(owner), payer_id=owner)
    read_payer(engine, owner)
    ids, has_more = list_owned(engine, index.TOPUP_BY_PAYER, owner, page_params)
    return JsonResponse(render_page(engine, TOPUP, ids, has_more, lambda body: render_stored_topup(engine, body)))


@router.get("/v1/topups/{topup_id}", response_model=TopupOut, responses=read_responses())
def get_topup(topup_id: IdPath, request: Request, caller: PayerReader) -> Response:
    engine = get_services(request).engine
    record = read_topup(engine, topup_id)
    if record is None:
        raise _not_found(topup_id)
    guard(caller, _not_found(topup_id), payer_id=record.payer_id)
    return JsonResponse(render_topup(record, read_metadata(engine, TOPUP, record.id)))
