"""Usage events (admin; a payer key: its own), rated and charged at once from the wallet or tab,
and a payer's usage of a plan in a period.

A declined event is still created (201, ``status: "declined"``, ``amount`` 0, its decline code)
and does not count in usage. A batch answers one result per event: ``ok``, ``exists`` (a replay),
the decline code of a declined event, or the code that refused it; one bad event never fails
the others.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.metering_schemas import (
    PERIOD_PATTERN,
    UsageBatchIn,
    UsageBatchOut,
    UsageEventIn,
    UsageEventList,
    UsageEventOut,
    UsageOut,
    render_event,
    render_usage,
)
from micropay.api.pagination import Page
from micropay.api.payment_schemas import timestamp_ns
from micropay.api.payment_views import guard, list_all, payer_not_found, read_payer, render_page
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routes.plans import plan_not_found, read_plan
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN, metadata_pairs
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.errors import ApiError, InvalidRequest, NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models.metering import (
    USAGE,
    USAGE_EVENT,
    EventRequest,
    EventResult,
    Usage,
    decode_event,
    decode_usage,
    list_payer_events,
    record_event,
    usage_key,
)
from micropay.models.metering_batch import rate_events_async
from micropay.models.rules import period_key

router = APIRouter(tags=["metering"], route_class=OrjsonRoute)

EventIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The usage event id.")
]
PayerIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The payer id.")
]
IdQuery = Annotated[str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
PeriodQuery = Annotated[
    str | None, Query(pattern=PERIOD_PATTERN, description="A UTC month, `YYYY-MM`; omitted: the current one.")
]
EventWriter = Annotated[Principal, Depends(require_roles("admin", "payer"))]
EventReader = Annotated[Principal, Depends(require_roles("admin", "merchant", "payer"))]


def _event_not_found(event_id: str) -> NotFound:
    return NotFound("usage_event_not_found", f"No usage event {event_id}.", "event_id")


def to_request(item: UsageEventIn, param: str = "timestamp") -> EventRequest:
    """A model request from the wire shape (``param``: where the timestamp is, for errors)."""
    timestamp = item.get("timestamp")
    at_ns = None
    if timestamp is not None:
        try:
            at_ns = timestamp_ns(timestamp)
        except ValueError as error:
            raise InvalidRequest("parameter_invalid", f"{param}: {error}.", param) from None
    metadata = item.get("metadata")
    return EventRequest(
        item.get("id") or new_id("ue"),
        item["payer_id"],
        item["plan_id"],
        item["quantity"],
        at_ns,
        metadata_pairs(metadata) if metadata else (),
    )


@router.post(
    "/v1/usage_events", status_code=201, response_model=UsageEventOut, responses=create_responses(UsageEventOut)
)
async def create_usage_event(body: UsageEventIn, request: Request, caller: EventWriter) -> Response:
    """Rate an event against its plan and charge it at once. Its charge is
    ``floor(price(q_after)) - floor(price(q_before))`` of the payer's quantity in the plan and
    month, so a period's charges add up exactly to the price of its total (fractions carry)."""
    event_request = to_request(body)
    guard(caller, payer_not_found(event_request.payer_id), payer_id=event_request.payer_id)
    event, replayed = await get_services(request).engine.call_async(record_event(event_request))
    return created(render_event(event), replayed=replayed)


def _batch_result(index: int, event_id: str, answer: EventResult) -> dict[str, Any]:
    if isinstance(answer, ApiError):
        return {
            "index": index,
            "id": event_id,
            "result": answer.code,
            "amount": 0,
            "status": None,
            "decline_code": None,
        }
    event, replayed = answer
    result = "exists" if replayed else (event.decline_code or "ok")
    return {
        "index": index,
        "id": event.id,
        "result": result,
        "amount": event.amount,
        "status": event.status,
        "decline_code": event.decline_code or None,
    }


@router.post("/v1/usage_events/batch", response_model=UsageBatchOut, responses=write_responses())
async def create_usage_event_batch(body: UsageBatchIn, request: Request, caller: EventWriter) -> Response:
    """Up to 8190 events rated in order, each on its own: ``ok``, ``exists``, a decline code
    (the event is recorded as declined) or the code that refused it. A payer key may send only
    its own events (others answer ``payer_not_found``)."""
    requests = [to_request(item, f"events[{index}].timestamp") for index, item in enumerate(body.events)]
    own = caller.subject_id if caller.role == "payer" else None
    allowed = [request for request in requests if own is None or request.payer_id == own]
    answers = iter(await rate_events_async(get_services(request).engine, allowed))
    results = []
    for index, event_request in enumerate(requests):
        if own is None or event_request.payer_id == own:
            answer = next(answers)
        else:
            answer = payer_not_found(event_request.payer_id)
        results.append(_batch_result(index, event_request.id, answer))
    return JsonResponse({"results": results})


@router.get("/v1/usage_events", response_model=UsageEventList, responses=read_responses())
def list_usage_events(request: Request, caller: EventWriter, page_params: Page, payer_id: IdQuery = None) -> Response:
    """Usage events: all (admin), ordered by id; or one payer's (a payer key: its own), in the
    order they were recorded. ``starting_after`` is the last event id of the previous page."""
    engine = get_services(request).engine
    if caller.role == "payer":
        payer_id = payer_id or caller.subject_id
    if payer_id is None:
        bodies, has_more = list_all(engine, USAGE_EVENT, page_params)
        return JsonResponse(page([render_event(decode_event(body)) for body in bodies], has_more))
    guard(caller, payer_not_found(payer_id), payer_id=payer_id)
    read_payer(engine, payer_id)
    ids, has_more = list_payer_events(engine, payer_id, page_params.starting_after, page_params.limit)
    return JsonResponse(render_page(engine, USAGE_EVENT, ids, has_more, lambda b: render_event(decode_event(b))))


@router.get("/v1/usage_events/{event_id}", response_model=UsageEventOut, responses=read_responses())
def get_usage_event(event_id: EventIdPath, request: Request, caller: EventReader) -> Response:
    """A usage event: seen by admin, its payer, and the merchant whose plan rated it."""
    engine = get_services(request).engine
    body = engine.document(USAGE_EVENT, event_id)
    if body is None:
        raise _event_not_found(event_id)
    event = decode_event(body)
    merchant_id = None
    if caller.role == "merchant":
        plan = read_plan(engine, event.plan_id)
        merchant_id = None if plan is None else plan.merchant_id
    guard(caller, _event_not_found(event_id), payer_id=event.payer_id, merchant_id=merchant_id)
    return JsonResponse(render_event(event))


@router.get("/v1/payers/{payer_id}/usage", response_model=UsageOut, responses=read_responses())
def get_payer_usage(
    payer_id: PayerIdPath,
    request: Request,
    caller: EventReader,
    plan_id: Annotated[str, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)],
    period: PeriodQuery = None,
) -> Response:
    """What a payer used of a plan in a month, and what it cost: ``amount`` is exactly
    floor(price(quantity)) (plus the minimum true-up once the period is closed). Seen by admin,
    the payer, and the plan's merchant."""
    engine = get_services(request).engine
    plan = read_plan(engine, plan_id)
    if caller.role == "merchant":
        if plan is None:
            raise plan_not_found(plan_id)
        guard(caller, plan_not_found(plan_id), merchant_id=plan.merchant_id)
    else:
        guard(caller, payer_not_found(payer_id), payer_id=payer_id)
    read_payer(engine, payer_id)
    if plan is None:
        raise plan_not_found(plan_id)
    month = period or period_key("month", engine.now_ns())
    body = engine.document(USAGE, usage_key(plan.id, month, payer_id))
    usage = Usage(plan.id, month, payer_id) if body is None else decode_usage(body)
    return JsonResponse(render_usage(usage, plan))
