"""Charges and refunds.

A charge is made by admin, by the merchant it pays (its own ``merchant_id``) or by the payer it
charges (its own ``payer_id``); each sees its own charges. Refunds are made by admin or the
charge's merchant, and seen by whoever sees the charge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.lean import lean_post
from micropay.api.pagination import Page, split_page
from micropay.api.payment_schemas import (
    ChargeBatchIn,
    ChargeBatchOut,
    ChargeIn,
    ChargeList,
    ChargeOut,
    RefundIn,
    RefundList,
    RefundOut,
)
from micropay.api.payment_views import (
    guard,
    list_all,
    may_see,
    merchant_not_found,
    payer_not_found,
    read,
    read_charge,
    read_merchant,
    read_metadata,
    read_payer,
    render_charge,
    render_page,
    render_refund,
    render_stored_charge,
    render_stored_refund,
    with_metadata,
)
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN, LEDGER_ID_PATTERN
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.engine import BatchContext
from micropay.errors import ApiError, InvalidRequest, InvariantViolation, NotFound
from micropay.ledger.limits import ID_LENGTH_MAX, LEDGER_ID_LENGTH_MAX
from micropay.models import chart
from micropay.models.charge_batcher import ChargeBatcher
from micropay.models.metadata import metadata_body
from micropay.models.payments import (
    CHARGE,
    REFUND,
    ChargeRequest,
    Outcome,
    RefundRequest,
    get_charge,
    owner_charge_ids,
    refund,
)
from micropay.models.records import Charge, Refund, decode_refund

router = APIRouter(tags=["charges"], route_class=OrjsonRoute)

ChargeIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=LEDGER_ID_LENGTH_MAX,
        pattern=LEDGER_ID_PATTERN,
        description="The charge id (charges made by passes and metering carry a `:`).",
    ),
]
RefundIdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
OwnerQuery = Annotated[str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
ChargeParty = Annotated[Principal, Depends(require_roles("admin", "merchant", "payer"))]
ChargeMerchant = Annotated[Principal, Depends(require_roles("admin", "merchant"))]


def _charge_not_found(charge_id: str) -> NotFound:
    return NotFound("charge_not_found", f"No charge {charge_id}.", "charge_id")


def _refund_not_found(refund_id: str) -> NotFound:
    return NotFound("refund_not_found", f"No refund {refund_id}.", "refund_id")


@lean_post(router, "/v1/charges", status_code=201, response_model=ChargeOut, responses=create_responses(ChargeOut))
async def create_charge(body: ChargeIn, request: Request, caller: ChargeParty) -> Response:
    """Charge a payer for a merchant: 201 ``succeeded``, or 422 ``payment_declined`` with the
    decline code (``insufficient_funds``, ``credit_limit_exceeded``, ``spend_cap_exceeded``,
    ``payer_suspended``, ``risk_blocked``); a decline moves nothing."""
    if caller.role == "merchant":
        guard(caller, merchant_not_found(body.merchant_id), merchant_id=body.merchant_id)
    elif caller.role == "payer":
        guard(caller, payer_not_found(body.payer_id), payer_id=body.payer_id)
    outcome = await charge_batcher(request).charge(to_charge_request(body), metadata_body(body.metadata))
    return charge_response(outcome, body.metadata)


def to_charge_request(body: ChargeIn) -> ChargeRequest:
    """The charge a create request asks for (with a server-made id if it names none)."""
    return ChargeRequest(body.id or new_id("ch"), body.payer_id, body.merchant_id, body.amount, body.description)


def charge_response(outcome: Outcome[Charge], metadata: dict[str, str]) -> Response:
    """The answer to a charge made (201) or replayed (200, ``Idempotent-Replayed``)."""
    record, replayed = outcome
    return created(render_charge(record, metadata), replayed=replayed)


@lean_post(router, "/v1/charges/batch", response_model=ChargeBatchOut, responses=write_responses())
async def create_charge_batch(body: ChargeBatchIn, request: Request, caller: ChargeParty) -> Response:
    """Up to 8190 independent charges in one request, each answered as ``POST /v1/charges``
    would answer it alone: ``result`` is ``ok``, ``exists`` (a replay) or the refusal's code."""
    batcher = charge_batcher(request)
    made: list[tuple[ChargeRequest, dict[str, str]] | ApiError] = []
    for item in body.charges:
        try:
            if caller.role == "merchant":
                guard(caller, merchant_not_found(item.merchant_id), merchant_id=item.merchant_id)
            elif caller.role == "payer":
                guard(caller, payer_not_found(item.payer_id), payer_id=item.payer_id)
        except ApiError as error:
            made.append(error)
            continue
        charge_request = ChargeRequest(
            item.id or new_id("ch"), item.payer_id, item.merchant_id, item.amount, item.description
        )
        made.append((charge_request, item.metadata))
    pending = [batcher.charge(one[0], metadata_body(one[1])) for one in made if not isinstance(one, ApiError)]
    answers = iter(await asyncio.gather(*pending, return_exceptions=True))
    results: list[dict[str, Any]] = []
    for position, one in enumerate(made):
        if isinstance(one, ApiError):
            results.append({"index": position, "id": body.charges[position].id, "result": one.code, "charge": None})
            continue
        answer = next(answers)
        if isinstance(answer, ApiError):
            results.append({"index": position, "id": one[0].id, "result": answer.code, "charge": None})
        elif isinstance(answer, BaseException):
            raise answer
        else:
            record, replayed = answer
            rendered = render_charge(record, one[1])
            results.append(
                {"index": position, "id": record.id, "result": "exists" if replayed else "ok", "charge": rendered}
            )
    return JsonResponse({"results": results})


def charge_batcher(request: Request) -> ChargeBatcher:
    """The app's charge batcher: concurrent charges share engine operations."""
    batcher = get_services(request).charges
    if batcher is None:
        raise InvariantViolation("the app has no charge batcher")
    return batcher


@router.get("/v1/charges", response_model=ChargeList, responses=read_responses())
def list_charges(
    request: Request,
    caller: ChargeParty,
    page_params: Page,
    payer_id: OwnerQuery = None,
    merchant_id: OwnerQuery = None,
) -> Response:
    """Charges: all in id order (admin), or one payer's (``payer_id``) or one merchant's
    (``merchant_id``) newest first, read from the ledger's history of its accounts; a payer or
    merchant key sees only its own. ``starting_after`` is the last id of the previous page."""
    if payer_id is not None and merchant_id is not None:
        raise InvalidRequest("parameter_invalid", "Filter by payer_id or by merchant_id, not both.", "merchant_id")
    engine = get_services(request).engine
    if caller.role == "payer":
        payer_id = payer_id or caller.subject_id
    elif caller.role == "merchant":
        merchant_id = merchant_id or caller.subject_id
    if payer_id is not None:
        guard(caller, payer_not_found(payer_id), payer_id=payer_id)
        payer = read_payer(engine, payer_id)
        accounts = [account(payer.id, payer.ledger) for account in PAYER_ACCOUNTS]
        ids, has_more = owner_charge_ids(
            engine, accounts, paid_from=True, starting_after=page_params.starting_after, limit=page_params.limit
        )
    elif merchant_id is not None:
        guard(caller, merchant_not_found(merchant_id), merchant_id=merchant_id)
        merchant = read_merchant(engine, merchant_id)
        ids, has_more = owner_charge_ids(
            engine,
            [chart.merchant_account(merchant.id)],
            paid_from=False,
            starting_after=page_params.starting_after,
            limit=page_params.limit,
        )
    else:
        bodies, has_more = list_all(engine, CHARGE, page_params)
        return JsonResponse(page([render_stored_charge(engine, body) for body in bodies], has_more))
    return JsonResponse(render_page(engine, CHARGE, ids, has_more, lambda body: render_stored_charge(engine, body)))


PAYER_ACCOUNTS = (chart.promo_account, chart.wallet_account, chart.tab_account)
"""The accounts a charge takes a payer's money from."""


@router.get("/v1/charges/{charge_id}", response_model=ChargeOut, responses=read_responses())
def get_charge_route(charge_id: ChargeIdPath, request: Request, caller: ChargeParty) -> Response:
    engine = get_services(request).engine
    record = read_charge(engine, charge_id)
    if record is None:
        raise _charge_not_found(charge_id)
    guard(caller, _charge_not_found(charge_id), payer_id=record.payer_id, merchant_id=record.merchant_id)
    return JsonResponse(render_charge(record, read_metadata(engine, CHARGE, record.id)))


def _refund_of_own_charge(
    operation: Callable[[BatchContext], Outcome[Refund]], caller: Principal, charge_id: str
) -> Callable[[BatchContext], Outcome[Refund]]:
    """``operation``, run only if the caller may refund the charge (else ``charge_not_found``)."""

    def run(ctx: BatchContext) -> Outcome[Refund]:
        record = get_charge(ctx, charge_id)
        guard(caller, _charge_not_found(charge_id), merchant_id=record.merchant_id)
        return operation(ctx)

    return run


@router.post(
    "/v1/charges/{charge_id}/refunds", status_code=201, response_model=RefundOut, responses=create_responses(RefundOut)
)
async def create_refund(charge_id: ChargeIdPath, body: RefundIn, request: Request, caller: ChargeMerchant) -> Response:
    """Refund all (``amount`` omitted) or part of a charge, back to where it came from: the paid
    part first (wallet, tab), promo last. Past what is left: 422 ``refund_exceeds_charge``."""
    refund_id = body.id or new_id("re")
    operation = with_metadata(
        refund(RefundRequest(refund_id, charge_id, body.amount)), REFUND, refund_id, body.metadata
    )
    if not caller.is_admin:
        operation = _refund_of_own_charge(operation, caller, charge_id)
    record, replayed = await get_services(request).engine.call_async(operation)
    return created(render_refund(record, body.metadata), replayed=replayed)


@router.get("/v1/charges/{charge_id}/refunds", response_model=RefundList, responses=read_responses())
def list_charge_refunds(charge_id: ChargeIdPath, request: Request, caller: ChargeParty, page_params: Page) -> Response:
    """A charge's refunds, oldest first; ``starting_after`` is a refund id."""
    engine = get_services(request).engine
    record = read_charge(engine, charge_id)
    if record is None:
        raise _charge_not_found(charge_id)
    guard(caller, _charge_not_found(charge_id), payer_id=record.payer_id, merchant_id=record.merchant_id)
    refund_ids = list(record.refund_ids)
    if page_params.starting_after is not None:
        if page_params.starting_after not in refund_ids:
            raise NotFound("refund_not_found", "starting_after is not a refund of this charge.", "starting_after")
        refund_ids = refund_ids[refund_ids.index(page_params.starting_after) + 1 :]
    ids, has_more = split_page(refund_ids, page_params.limit)
    return JsonResponse(render_page(engine, REFUND, ids, has_more, lambda body: render_stored_refund(engine, body)))


@router.get("/v1/refunds/{refund_id}", response_model=RefundOut, responses=read_responses())
def get_refund(refund_id: RefundIdPath, request: Request, caller: ChargeParty) -> Response:
    engine = get_services(request).engine
    record = read(engine, REFUND, refund_id, decode_refund)
    if record is None:
        raise _refund_not_found(refund_id)
    if not caller.is_admin:
        charge_record = read_charge(engine, record.charge_id)
        if charge_record is None or not may_see(
            caller, payer_id=charge_record.payer_id, merchant_id=charge_record.merchant_id
        ):
            raise _refund_not_found(refund_id)
    return JsonResponse(render_refund(record, read_metadata(engine, REFUND, record.id)))
