"""Vouchers: create, list and read (admin; the code itself is never stored or shown), and
redeem into a payer's promo credit (admin, the payer itself)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, require_roles
from micropay.api.pagination import Page, split_page
from micropay.api.payment_schemas import (
    RedeemIn,
    RedeemOut,
    VoucherIn,
    VoucherList,
    VoucherOut,
    timestamp_ns,
)
from micropay.api.payment_views import guard, payer_not_found, read_payer, render_payer, render_voucher
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN
from micropay.api.serialise import JsonResponse, created, page
from micropay.api.services import get_services
from micropay.errors import NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models.promo import VOUCHER, create_voucher, decode_voucher, redeem_voucher

router = APIRouter(tags=["vouchers"], route_class=OrjsonRoute)

IdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
PayerActor = Annotated[Principal, Depends(require_roles("admin", "payer"))]

_VOUCHER_ID_PREFIX = "vch_"
_HEX_DIGITS = 16
"""A voucher's id is ``vch_`` and the first 16 hex digits of its code's SHA-256, the id under
which its record is stored; so the record of an id is the first stored one after that prefix."""


def _digest_prefix(voucher_id: str) -> str | None:
    prefix = voucher_id.removeprefix(_VOUCHER_ID_PREFIX)
    if len(prefix) != _HEX_DIGITS or not voucher_id.startswith(_VOUCHER_ID_PREFIX):
        return None
    if any(char not in "0123456789abcdef" for char in prefix):
        return None
    return prefix


@router.post("/v1/vouchers", status_code=201, response_model=VoucherOut, responses=create_responses(VoucherOut))
async def create_voucher_route(body: VoucherIn, request: Request, _caller: Admin) -> Response:
    """A voucher worth ``amount`` of promo credit until ``expires_at``; its ``code`` is the
    idempotency key (the same code and fields again replay it)."""
    services = get_services(request)
    operation = create_voucher(body.code, body.ledger, body.amount, timestamp_ns(body.expires_at), services.rails)
    voucher, replayed = await services.engine.call_async(operation)
    return created(render_voucher(voucher), replayed=replayed)


@router.get("/v1/vouchers", response_model=VoucherList, responses=read_responses())
def list_vouchers(request: Request, _caller: Admin, page_params: Page) -> Response:
    """Vouchers ordered by id."""
    store = get_services(request).engine.store
    after = page_params.starting_after
    digest_after = None
    if after is not None:
        prefix = _digest_prefix(after)
        # Past every digest starting with that id's prefix ("~" sorts after every hex digit).
        digest_after = (prefix if prefix is not None else after) + "~"
    rows = store.list_documents(VOUCHER, digest_after, page_params.limit + 1)
    bodies, has_more = split_page([body for _, body in rows], page_params.limit)
    return JsonResponse(page([render_voucher(decode_voucher(body)) for body in bodies], has_more))


@router.get("/v1/vouchers/{voucher_id}", response_model=VoucherOut, responses=read_responses())
def get_voucher(voucher_id: IdPath, request: Request, _caller: Admin) -> Response:
    prefix = _digest_prefix(voucher_id)
    if prefix is not None:
        rows = get_services(request).engine.store.list_documents(VOUCHER, prefix, 1)
        if rows and rows[0][0].startswith(prefix):
            return JsonResponse(render_voucher(decode_voucher(rows[0][1])))
    raise NotFound("voucher_not_found", f"No voucher {voucher_id}.", "voucher_id")


@router.post("/v1/payers/{payer_id}/vouchers/redeem", response_model=RedeemOut, responses=write_responses())
async def redeem_voucher_route(payer_id: IdPath, body: RedeemIn, request: Request, caller: PayerActor) -> Response:
    """Turn a voucher into the payer's promo credit (spent before the wallet, until it expires).
    Answers the payer as it now is, with the voucher. A code already used: 422
    ``voucher_already_redeemed``; expired: 422 ``voucher_expired``. Redeeming again by the same
    payer replays (``Idempotent-Replayed: true``)."""
    guard(caller, payer_not_found(payer_id), payer_id=payer_id)
    engine = get_services(request).engine
    voucher, replayed = await engine.call_async(redeem_voucher(payer_id, body.code))

    def answer() -> dict[str, object]:
        rendered = render_payer(engine, read_payer(engine, payer_id), engine.now_ns())
        rendered["voucher"] = render_voucher(voucher)
        return rendered

    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return JsonResponse(await run_in_threadpool(answer), headers=headers)
