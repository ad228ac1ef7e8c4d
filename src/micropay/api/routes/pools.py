"""Collaborative pools: pools, joining them, reads, and distributions.

Admin does everything. A payer key joins pools and records reads for itself, and sees its own
memberships and reads (another payer's answer 404). Pool terms are readable by payer and
publisher keys. Distributions are admin's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, require_roles
from micropay.api.idempotency import new_id
from micropay.api.pagination import Page, split_page
from micropay.api.pool_schemas import (
    DistributionIn,
    DistributionList,
    DistributionOut,
    MemberIn,
    MembershipList,
    Period,
    PoolIn,
    PoolList,
    PoolMemberOut,
    PoolOut,
    ReadIn,
    ReadList,
    ReadOut,
)
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN, metadata_pairs
from micropay.api.serialise import REPLAYED_HEADER, JsonResponse, created, page, rfc3339
from micropay.api.services import get_services
from micropay.api.timestamps import rfc3339_ns
from micropay.engine import Engine
from micropay.errors import InvalidRequest, NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models import chart
from micropay.models import pools as P

router = APIRouter(tags=["pools"], route_class=OrjsonRoute)

IdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The id.")]
PeriodPath = Annotated[str, Path(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$", description="A UTC month, `YYYY-MM`.")]
PoolReader = Annotated[Principal, Depends(require_roles("admin", "payer", "publisher"))]
PayerCaller = Annotated[Principal, Depends(require_roles("admin", "payer"))]


def pool_not_found(pool_id: str) -> NotFound:
    return NotFound("pool_not_found", f"No pool {pool_id}.", "pool_id")


def _payer_of(caller: Principal, payer_id: str | None) -> str:
    """The payer a request acts for: admin names it; a payer key acts only for itself (another
    payer's id answers 404, as if it did not exist)."""
    if caller.is_admin:
        if payer_id is None:
            raise InvalidRequest("parameter_missing", "payer_id is required.", "payer_id")
        return payer_id
    own = caller.subject_id or ""
    if payer_id is not None and payer_id != own:
        raise NotFound("payer_not_found", f"No payer {payer_id}.", "payer_id")
    return own


# ----------------------------------------------------------------- rendering
def render_pool(engine: Engine, pool: P.Pool) -> dict[str, Any]:
    account = engine.account(chart.pool_account(pool.id))
    return {
        "id": pool.id,
        "ledger": pool.ledger,
        "price": pool.price,
        "split_bps": dict(pool.split_bps),
        "unread": pool.unread,
        "read_window_s": pool.read_window_s,
        "balance": 0 if account is None else account.balance,
        "carried": pool.carried,
        "distributed_periods": list(pool.distributed_periods),
        "created_at": rfc3339(pool.created_at_ns),
        "metadata": dict(pool.metadata),
    }


def render_membership(membership: P.Membership) -> dict[str, Any]:
    return {
        "pool_id": membership.pool_id,
        "payer_id": membership.payer_id,
        "period": membership.period,
        "fee": membership.fee,
        "created_at": rfc3339(membership.created_at_ns),
    }


def render_read(read: P.Read) -> dict[str, Any]:
    return {
        "id": read.id,
        "pool_id": read.pool_id,
        "payer_id": read.payer_id,
        "content_id": read.content_id,
        "host_site_id": read.host_site_id,
        "referrer_site_id": read.referrer_site_id or None,
        "timestamp": rfc3339(read.timestamp_ns),
        "period": read.period,
        "counted": read.counted,
        "reason": read.reason or None,
        "created_at": rfc3339(read.created_at_ns),
        "metadata": dict(read.metadata),
    }


def render_distribution(distribution: P.Distribution) -> dict[str, Any]:
    return {
        "id": distribution.id,
        "pool_id": distribution.pool_id,
        "period": distribution.period,
        "total": distribution.total,
        "lines": [
            {"recipient_id": line.recipient_id, "role": line.role, "amount": line.amount} for line in distribution.lines
        ],
        "collected": distribution.collected,
        "carried_in": distribution.carried_in,
        "carried_out": distribution.carried_out,
        "members": distribution.members,
        "members_paid": distribution.members_paid,
        "created_at": rfc3339(distribution.created_at_ns),
    }


def _pool(engine: Engine, pool_id: str) -> P.Pool:
    body = engine.document(P.POOL, pool_id)
    if body is None:
        raise pool_not_found(pool_id)
    return P.decode_pool(body)


# ----------------------------------------------------------------- pools
@router.post("/v1/pools", status_code=201, response_model=PoolOut, responses=create_responses(PoolOut))
async def create_pool(body: PoolIn, request: Request, _caller: Admin) -> Response:
    """A pool: members pay ``price`` a month; each member's fee is split over what it read by
    ``split_bps`` (owner, host, referrer, platform; adding up to 10000). ``id`` is the idempotency key."""
    services = get_services(request)
    split = body.split_bps
    pool_request = P.PoolRequest(
        id=body.id or new_id("pool"),
        ledger=body.ledger,
        price=body.price,
        split_bps=(
            ("owner", split.owner),
            ("host", split.host),
            ("referrer", split.referrer),
            ("platform", split.platform),
        ),
        unread=body.unread,
        read_window_s=body.read_window_s,
        metadata=metadata_pairs(body.metadata),
    )
    pool, replayed = await services.engine.call_async(P.create_pool(pool_request, services.rails))
    return created(await run_in_threadpool(render_pool, services.engine, pool), replayed=replayed)


@router.get("/v1/pools", response_model=PoolList, responses=read_responses())
def list_pools(request: Request, _caller: PoolReader, page_params: Page) -> Response:
    """Pools ordered by id."""
    engine = get_services(request).engine
    rows = engine.store.list_documents(P.POOL, page_params.starting_after, page_params.limit + 1)
    data, has_more = split_page(rows, page_params.limit)
    return JsonResponse(page([render_pool(engine, P.decode_pool(body)) for _, body in data], has_more))


@router.get("/v1/pools/{pool_id}", response_model=PoolOut, responses=read_responses())
def get_pool(pool_id: IdPath, request: Request, _caller: PoolReader) -> Response:
    """A pool's terms, what its account holds, and which periods are distributed."""
    engine = get_services(request).engine
    return JsonResponse(render_pool(engine, _pool(engine, pool_id)))


# ----------------------------------------------------------------- members
@router.post("/v1/pools/{pool_id}/members", response_model=PoolMemberOut, responses=write_responses())
async def join_pool(pool_id: IdPath, body: MemberIn, request: Request, caller: PayerCaller) -> Response:
    """Join for the current month: charges the price into the pool (promo, wallet or tab, by the
    payer's mode; declines move nothing). Joining again that month charges nothing. Answers the
    pool with the membership."""
    engine = get_services(request).engine
    payer_id = _payer_of(caller, body.payer_id)
    membership, replayed = await engine.call_async(P.join_pool(pool_id, payer_id))
    rendered = await run_in_threadpool(render_pool, engine, _pool(engine, pool_id))
    rendered["membership"] = render_membership(membership)
    return JsonResponse(rendered, headers={REPLAYED_HEADER: "true"} if replayed else None)


@router.get("/v1/pools/{pool_id}/members", response_model=MembershipList, responses=read_responses())
def list_members(
    pool_id: IdPath,
    request: Request,
    caller: PayerCaller,
    page_params: Page,
    period: Annotated[Period | None, Query(description="The month (`YYYY-MM`); the current one if omitted.")] = None,
) -> Response:
    """A period's members ordered by payer id (a payer key: its own membership)."""
    engine = get_services(request).engine
    pool = _pool(engine, pool_id)
    month = period or engine.call(P.current_period)
    prefix = P.members_prefix(pool.id, month)
    if caller.is_admin:
        after = prefix + (page_params.starting_after or "")
        rows = engine.store.list_documents(P.MEMBERSHIP, after, page_params.limit + 1)
        rows = [(document_id, body) for document_id, body in rows if document_id.startswith(prefix)]
        data, has_more = split_page(rows, page_params.limit)
        return JsonResponse(page([render_membership(P.decode_membership(body)) for _, body in data], has_more))
    own = caller.subject_id or ""
    body = engine.document(P.MEMBERSHIP, prefix + own)
    shown = body is not None and (page_params.starting_after is None or own > page_params.starting_after)
    return JsonResponse(page([render_membership(P.decode_membership(body))] if shown and body else [], False))


# ----------------------------------------------------------------- reads
@router.post("/v1/reads", status_code=201, response_model=ReadOut, responses=create_responses(ReadOut))
async def create_read(body: ReadIn, request: Request, caller: PayerCaller) -> Response:
    """A member read content. It counts unless it repeats a read of the same content less than the
    pool's ``read_window_s`` before it, or the content is the reader's own (``reason`` says which).
    ``id`` is the idempotency key."""
    engine = get_services(request).engine
    read_request = P.ReadRequest(
        id=body.id or new_id("read"),
        pool_id=body.pool_id,
        payer_id=_payer_of(caller, body.payer_id),
        content_id=body.content_id,
        host_site_id=body.host_site_id,
        referrer_site_id=body.referrer_site_id or "",
        timestamp_ns=rfc3339_ns(body.timestamp),
        metadata=metadata_pairs(body.metadata),
    )
    read, replayed = await engine.call_async(P.record_read(read_request))
    return created(render_read(read), replayed=replayed)


def read_not_found(read_id: str) -> NotFound:
    return NotFound("read_not_found", f"No read {read_id}.", "read_id")


@router.get("/v1/reads", response_model=ReadList, responses=read_responses())
def list_reads(request: Request, caller: PayerCaller, page_params: Page) -> Response:
    """Reads ordered by id (a payer key: its own)."""
    engine = get_services(request).engine
    if caller.is_admin:
        rows = engine.store.list_documents(P.READ, page_params.starting_after, page_params.limit + 1)
        data, has_more = split_page(rows, page_params.limit)
        return JsonResponse(page([render_read(P.decode_read(body)) for _, body in data], has_more))
    prefix = f"{caller.subject_id}:"
    rows = engine.store.list_documents(P.PAYER_READ, prefix + (page_params.starting_after or ""), page_params.limit + 1)
    ids = [document_id[len(prefix) :] for document_id, _ in rows if document_id.startswith(prefix)]
    page_ids, has_more = split_page(ids, page_params.limit)
    reads = [engine.document(P.READ, read_id) for read_id in page_ids]
    return JsonResponse(page([render_read(P.decode_read(body)) for body in reads if body is not None], has_more))


@router.get("/v1/reads/{read_id}", response_model=ReadOut, responses=read_responses())
def get_read(read_id: IdPath, request: Request, caller: PayerCaller) -> Response:
    """A read as it now counts (a later read less than the window before it makes it a repeat)."""
    body = get_services(request).engine.document(P.READ, read_id)
    if body is None:
        raise read_not_found(read_id)
    read = P.decode_read(body)
    if not caller.is_admin and caller.subject_id != read.payer_id:
        raise read_not_found(read_id)
    return JsonResponse(render_read(read))


# ----------------------------------------------------------------- distributions
@router.post(
    "/v1/pools/{pool_id}/distributions",
    status_code=201,
    response_model=DistributionOut,
    responses=create_responses(DistributionOut),
)
async def create_distribution(pool_id: IdPath, body: DistributionIn, request: Request, _caller: Admin) -> Response:
    """Close a month and pay it out, user-centric: each member's fee split over what it read,
    by largest remainder, in one linked chain. Later joins and reads for it: 422 ``period_closed``;
    distributing it again: 409 ``already_distributed`` (unless the same ``id`` is sent again)."""
    engine = get_services(request).engine
    distribution, replayed = await P.run_distribution_async(engine, pool_id, body.period, body.id or "")
    return created(render_distribution(distribution), replayed=replayed)


@router.get("/v1/pools/{pool_id}/distributions", response_model=DistributionList, responses=read_responses())
def list_distributions(pool_id: IdPath, request: Request, _caller: Admin, page_params: Page) -> Response:
    """A pool's distributions by period; ``starting_after`` is a period (`YYYY-MM`)."""
    engine = get_services(request).engine
    prefix = f"{_pool(engine, pool_id).id}:"
    rows = engine.store.list_documents(
        P.DISTRIBUTION, prefix + (page_params.starting_after or ""), page_params.limit + 1
    )
    rows = [(document_id, body) for document_id, body in rows if document_id.startswith(prefix)]
    data, has_more = split_page(rows, page_params.limit)
    return JsonResponse(page([render_distribution(P.decode_distribution(body)) for _, body in data], has_more))


@router.get("/v1/pools/{pool_id}/distributions/{period}", response_model=DistributionOut, responses=read_responses())
def get_distribution(pool_id: IdPath, period: PeriodPath, request: Request, _caller: Admin) -> Response:
    """One period's distribution."""
    engine = get_services(request).engine
    _pool(engine, pool_id)
    body = engine.document(P.DISTRIBUTION, P.distribution_key(pool_id, period))
    if body is None:
        raise NotFound("distribution_not_found", f"Period {period} of pool {pool_id} is not distributed.", "period")
    return JsonResponse(render_distribution(P.decode_distribution(body)))
