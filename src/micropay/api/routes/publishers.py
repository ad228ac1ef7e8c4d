"""Publishers, their sites and content, and their earnings from pools.

Admin creates and lists everything; a publisher key reads itself, its sites and content, and
its own earnings (another publisher's answers 404). Payer and merchant keys: 403.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, check_owner, require_roles
from micropay.api.idempotency import new_id
from micropay.api.pagination import Page, PageParams, split_page
from micropay.api.pool_schemas import (
    ContentIn,
    EarningsOut,
    Period,
    PublisherIn,
    PublisherList,
    PublisherOut,
    SiteIn,
    SiteList,
    SiteOut,
)
from micropay.api.routes.docs import create_responses, read_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN, metadata_pairs
from micropay.api.serialise import JsonResponse, created, page, rfc3339
from micropay.api.services import get_services
from micropay.engine import Engine
from micropay.errors import NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models import chart
from micropay.models import pools as P

router = APIRouter(tags=["publishers"], route_class=OrjsonRoute)

IdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN, description="The id.")]
PublisherReader = Annotated[Principal, Depends(require_roles("admin", "publisher"))]
EARNINGS_DOCUMENTS_MAX = 1000
"""Most pool periods one earnings answer holds (``has_more`` says when there are more)."""


def publisher_not_found(publisher_id: str) -> NotFound:
    return NotFound("publisher_not_found", f"No publisher {publisher_id}.", "publisher_id")


# ----------------------------------------------------------------- rendering
def render_publisher(engine: Engine, publisher: P.Publisher) -> dict[str, Any]:
    account = engine.account(chart.publisher_account(publisher.id))
    return {
        "id": publisher.id,
        "ledger": publisher.ledger,
        "balance": 0 if account is None else account.balance,
        "created_at": rfc3339(publisher.created_at_ns),
        "metadata": dict(publisher.metadata),
    }


def render_owned(record: P.Site | P.Content) -> dict[str, Any]:
    return {
        "id": record.id,
        "publisher_id": record.publisher_id,
        "created_at": rfc3339(record.created_at_ns),
        "metadata": dict(record.metadata),
    }


def render_earnings(earnings: P.Earnings) -> dict[str, Any]:
    members = [
        {"payer_id": line.payer_id, "role": line.role, "amount": line.amount}
        for line in earnings.lines
        if line.payer_id
    ]
    network = [{"role": line.role, "amount": line.amount} for line in earnings.lines if not line.payer_id]
    return {
        "pool_id": earnings.pool_id,
        "period": earnings.period,
        "total": earnings.total,
        "members": members,
        "network": network,
    }


def _publisher(engine: Engine, publisher_id: str) -> P.Publisher:
    body = engine.document(P.PUBLISHER, publisher_id)
    if body is None:
        raise publisher_not_found(publisher_id)
    return P.decode_publisher(body)


# ----------------------------------------------------------------- publishers
@router.post("/v1/publishers", status_code=201, response_model=PublisherOut, responses=create_responses(PublisherOut))
async def create_publisher(body: PublisherIn, request: Request, _caller: Admin) -> Response:
    """A publisher and its earnings account on ``ledger``. ``id`` is the idempotency key."""
    services = get_services(request)
    operation = P.create_publisher(body.id or new_id("pub"), body.ledger, services.rails, metadata_pairs(body.metadata))
    publisher, replayed = await services.engine.call_async(operation)
    return created(render_publisher(services.engine, publisher), replayed=replayed)


@router.get("/v1/publishers", response_model=PublisherList, responses=read_responses())
def list_publishers(request: Request, caller: PublisherReader, page_params: Page) -> Response:
    """Publishers ordered by id (a publisher key: itself)."""
    engine = get_services(request).engine
    if caller.is_admin:
        rows = engine.store.list_documents(P.PUBLISHER, page_params.starting_after, page_params.limit + 1)
        data, has_more = split_page(rows, page_params.limit)
        return JsonResponse(page([render_publisher(engine, P.decode_publisher(b)) for _, b in data], has_more))
    own = caller.subject_id or ""
    body = engine.document(P.PUBLISHER, own)
    shown = body is not None and (page_params.starting_after is None or own > page_params.starting_after)
    return JsonResponse(page([render_publisher(engine, P.decode_publisher(body))] if shown and body else [], False))


@router.get("/v1/publishers/{publisher_id}", response_model=PublisherOut, responses=read_responses())
def get_publisher(publisher_id: IdPath, request: Request, caller: PublisherReader) -> Response:
    """A publisher with the balance of its earnings account."""
    check_owner(caller, publisher_id, publisher_not_found(publisher_id))
    engine = get_services(request).engine
    return JsonResponse(render_publisher(engine, _publisher(engine, publisher_id)))


@router.get("/v1/publishers/{publisher_id}/earnings", response_model=EarningsOut, responses=read_responses())
def get_earnings(
    publisher_id: IdPath,
    request: Request,
    caller: PublisherReader,
    period: Annotated[Period | None, Query(description="Only this month (`YYYY-MM`); else every period.")] = None,
) -> Response:
    """What the publisher earned from pool distributions, per pool and period, with the part
    each member's fee paid (and its part of carried or shared unread fees)."""
    check_owner(caller, publisher_id, publisher_not_found(publisher_id))
    engine = get_services(request).engine
    account = engine.account(chart.publisher_account(_publisher(engine, publisher_id).id))
    prefix = f"{publisher_id}:{period}:" if period else f"{publisher_id}:"
    rows = engine.store.list_documents(P.EARNINGS, prefix, EARNINGS_DOCUMENTS_MAX + 1)
    rows = [(document_id, body) for document_id, body in rows if document_id.startswith(prefix)]
    data, has_more = split_page(rows, EARNINGS_DOCUMENTS_MAX)
    entries = [render_earnings(P.decode_earnings(body)) for _, body in data]
    answer = {
        "publisher_id": publisher_id,
        "period": period,
        "total": sum(entry["total"] for entry in entries),
        "balance": 0 if account is None else account.balance,
        "data": entries,
        "has_more": has_more,
    }
    return JsonResponse(answer)


# ----------------------------------------------------------------- sites and content
def _owned(request: Request, caller: Principal, kind: str, object_id: str) -> P.Site | P.Content:
    """A site or content record; 404 unless admin or its publisher asks."""
    not_found = NotFound(f"{kind}_not_found", f"No {kind} {object_id}.", f"{kind}_id")
    body = get_services(request).engine.document(kind, object_id)
    if body is None:
        raise not_found
    record = P.decode_site(body) if kind == P.SITE else P.decode_content(body)
    check_owner(caller, record.publisher_id, not_found)
    return record


def _list_owned(request: Request, kind: str, page_params: PageParams) -> Response:
    store = get_services(request).engine.store
    rows = store.list_documents(kind, page_params.starting_after, page_params.limit + 1)
    data, has_more = split_page(rows, page_params.limit)
    decode = P.decode_site if kind == P.SITE else P.decode_content
    return JsonResponse(page([render_owned(decode(body)) for _, body in data], has_more))


@router.post("/v1/sites", status_code=201, response_model=SiteOut, responses=create_responses(SiteOut))
async def create_site(body: SiteIn, request: Request, _caller: Admin) -> Response:
    """A publisher's site (reads name it as host or referrer). ``id`` is the idempotency key."""
    operation = P.create_site(body.id or new_id("site"), body.publisher_id, metadata_pairs(body.metadata))
    site, replayed = await get_services(request).engine.call_async(operation)
    return created(render_owned(site), replayed=replayed)


@router.get("/v1/sites", response_model=SiteList, responses=read_responses())
def list_sites(request: Request, _caller: Admin, page_params: Page) -> Response:
    """Sites ordered by id."""
    return _list_owned(request, P.SITE, page_params)


@router.get("/v1/sites/{site_id}", response_model=SiteOut, responses=read_responses())
def get_site(site_id: IdPath, request: Request, caller: PublisherReader) -> Response:
    """A site (a publisher key: its own)."""
    return JsonResponse(render_owned(_owned(request, caller, P.SITE, site_id)))


@router.post("/v1/content", status_code=201, response_model=SiteOut, responses=create_responses(SiteOut))
async def create_content(body: ContentIn, request: Request, _caller: Admin) -> Response:
    """A publisher's content (reads name it; its publisher is the owner). ``id`` is the idempotency key."""
    operation = P.create_content(body.id or new_id("content"), body.publisher_id, metadata_pairs(body.metadata))
    content, replayed = await get_services(request).engine.call_async(operation)
    return created(render_owned(content), replayed=replayed)


@router.get("/v1/content", response_model=SiteList, responses=read_responses())
def list_content(request: Request, _caller: Admin, page_params: Page) -> Response:
    """Content ordered by id."""
    return _list_owned(request, P.CONTENT, page_params)


@router.get("/v1/content/{content_id}", response_model=SiteOut, responses=read_responses())
def get_content(content_id: IdPath, request: Request, caller: PublisherReader) -> Response:
    """One piece of content (a publisher key: its own)."""
    return JsonResponse(render_owned(_owned(request, caller, P.CONTENT, content_id)))
