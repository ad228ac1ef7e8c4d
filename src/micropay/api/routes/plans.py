"""Price plans for metered usage: create, list and read (admin; a merchant key: its own plans),
and close a plan's period (admin), which charges each payer up to the plan's minimum."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.metering_schemas import PERIOD_PATTERN, PeriodCloseOut, PlanIn, PlanList, PlanOut, render_plan
from micropay.api.pagination import Page
from micropay.api.payment_views import guard, list_all, list_owned, merchant_not_found, read_merchant, render_page
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN, metadata_pairs
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.engine import Engine
from micropay.errors import InvalidRequest, NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models.metering import (
    PLAN,
    PLAN_BY_MERCHANT,
    Plan,
    PlanRequest,
    close_and_true_up_async,
    create_plan,
    decode_plan,
)

router = APIRouter(prefix="/v1/plans", tags=["metering"], route_class=OrjsonRoute)

PlanIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The plan id.")
]
PeriodPath = Annotated[str, Path(pattern=PERIOD_PATTERN, description="A UTC month, `YYYY-MM`.")]
MerchantQuery = Annotated[
    str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="Only its plans.")
]
PlanParty = Annotated[Principal, Depends(require_roles("admin", "merchant"))]


def plan_not_found(plan_id: str, param: str = "plan_id") -> NotFound:
    return NotFound("plan_not_found", f"No plan {plan_id}.", param)


def read_plan(engine: Engine, plan_id: str) -> Plan | None:
    body = engine.document(PLAN, plan_id)
    return None if body is None else decode_plan(body)


@router.post("", status_code=201, response_model=PlanOut, responses=create_responses(PlanOut))
async def create_plan_route(body: PlanIn, request: Request, caller: PlanParty) -> Response:
    """A price plan for one metric: ``per_unit``, ``graduated`` (tiers, optional flat fee per tier)
    or ``package`` (partial packages round up); prices are decimal strings in minor units and may
    be fractions of one. ``minimum``: least charged per payer and period."""
    merchant_id = body.merchant_id
    if merchant_id is None:
        if caller.is_admin:
            raise InvalidRequest("parameter_missing", "merchant_id is required.", "merchant_id")
        merchant_id = caller.subject_id or ""
    guard(caller, merchant_not_found(merchant_id), merchant_id=merchant_id)
    pricing = body.pricing.model_dump(exclude_none=True)
    minimum = pricing.pop("minimum", None)
    if body.minimum is not None:
        if minimum is not None and minimum != body.minimum:
            raise InvalidRequest("parameter_invalid", "minimum and pricing.minimum differ.", "minimum")
        minimum = body.minimum
    plan_request = PlanRequest(
        body.id or new_id("plan"), merchant_id, body.metric, pricing, minimum, metadata_pairs(body.metadata)
    )
    plan, replayed = await get_services(request).engine.call_async(create_plan(plan_request))
    return created(render_plan(plan), replayed=replayed)


@router.get("", response_model=PlanList, responses=read_responses())
def list_plans(request: Request, caller: PlanParty, page_params: Page, merchant_id: MerchantQuery = None) -> Response:
    """Plans ordered by id: all (admin) or one merchant's; a merchant key sees only its own."""
    engine = get_services(request).engine
    if caller.role == "merchant":
        merchant_id = merchant_id or caller.subject_id
    if merchant_id is None:
        bodies, has_more = list_all(engine, PLAN, page_params)
        return JsonResponse(page([render_plan(decode_plan(body)) for body in bodies], has_more))
    guard(caller, merchant_not_found(merchant_id), merchant_id=merchant_id)
    read_merchant(engine, merchant_id)
    ids, has_more = list_owned(engine, PLAN_BY_MERCHANT, merchant_id, page_params)
    return JsonResponse(render_page(engine, PLAN, ids, has_more, lambda body: render_plan(decode_plan(body))))


@router.get("/{plan_id}", response_model=PlanOut, responses=read_responses())
def get_plan(plan_id: PlanIdPath, request: Request, caller: PlanParty) -> Response:
    plan = read_plan(get_services(request).engine, plan_id)
    if plan is None:
        raise plan_not_found(plan_id)
    guard(caller, plan_not_found(plan_id), merchant_id=plan.merchant_id)
    return JsonResponse(render_plan(plan))


@router.post("/{plan_id}/periods/{period}/close", response_model=PeriodCloseOut, responses=write_responses())
async def close_plan_period(plan_id: PlanIdPath, period: PeriodPath, request: Request, _caller: Admin) -> Response:
    """Close a past period of the plan: later events for it are refused (``period_closed``), and
    every payer who used the plan in it is charged up to the plan's ``minimum``. A declined
    true-up is listed and tried again when the period is closed again (closing twice charges
    nobody twice)."""
    closed = await close_and_true_up_async(get_services(request).engine, plan_id, period)
    declined = [{"payer_id": usage.payer_id, "decline_code": usage.minimum_decline_code} for usage in closed.declined]
    declined += [{"payer_id": payer_id, "decline_code": code} for payer_id, code in closed.errors]
    return JsonResponse(
        {
            "plan_id": closed.plan.id,
            "period": closed.period,
            "status": "closed",
            "payers": len(closed.usages) + len(closed.errors),
            "minimum_charged": closed.minimum_charged,
            "declined": declined,
        }
    )
