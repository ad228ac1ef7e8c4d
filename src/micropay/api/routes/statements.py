"""Post-pay statements: close a period (admin), read and list (admin, the payer itself), settle
by one rail charge (admin, the payer itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from micropay.api.auth import Admin, Principal, require_roles
from micropay.api.pagination import Page
from micropay.api.payment_schemas import (
    SettleIn,
    StatementCloseIn,
    StatementList,
    StatementOut,
    timestamp_ns,
)
from micropay.api.payment_views import (
    guard,
    list_all,
    list_owned,
    payer_not_found,
    read_payer,
    read_statement,
    render_page,
    render_statement,
)
from micropay.api.routes.docs import read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import ID_PATTERN
from micropay.api.serialise import JsonResponse, page
from micropay.api.services import get_services
from micropay.engine import BatchContext, Engine
from micropay.errors import NotFound
from micropay.ledger.limits import ID_LENGTH_MAX
from micropay.models import index
from micropay.models.statements import (
    STATEMENT,
    Statement,
    close_statements,
    decode_statement,
    get_statement,
    settle_statement,
)

router = APIRouter(prefix="/v1/statements", tags=["statements"], route_class=OrjsonRoute)

StatementIdPath = Annotated[str, Path(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
PayerQuery = Annotated[str | None, Query(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
PayerActor = Annotated[Principal, Depends(require_roles("admin", "payer"))]

CLOSE_CHUNK = 1000
"""Payers one closing operation handles (a period closes in several operations for many payers)."""


def _not_found(statement_id: str) -> NotFound:
    return NotFound("statement_not_found", f"No statement {statement_id}.", "statement_id")


def _postpay_payers(engine: Engine) -> list[list[str]]:
    """Every payer with a tab, in chunks, from the post-pay index (prepay payers are never read)."""
    chunks: list[list[str]] = []
    after: str | None = None
    while True:
        rows = engine.store.list_documents(index.POSTPAY_PAYER, after, CLOSE_CHUNK)
        if not rows:
            return chunks
        chunks.append([payer_id for payer_id, _ in rows])
        after = rows[-1][0]


@router.post("/close", status_code=201, response_model=StatementList, responses=write_responses())
async def close_period(body: StatementCloseIn, request: Request, _caller: Admin) -> Response:
    """Close the period ending at ``period_end`` (at most now; omitted: now): one ``open``
    statement per post-pay or hybrid payer that owes something for usage before it. Usage is
    billed to the minute, except that a tab with no usage since ``period_end`` is billed in full.
    Closing the same period end (the same minute) again answers the same statements."""
    engine = get_services(request).engine
    period_end_ns = engine.now_ns() if body.period_end is None else timestamp_ns(body.period_end)
    made: list[Statement] = []
    chunks = await run_in_threadpool(_postpay_payers, engine)
    for chunk in chunks or [[]]:  # at least one operation, which refuses a period end in the future
        made.extend(await engine.call_async(close_statements(chunk, period_end_ns, whole_minute_after_usage=True)))
    return JsonResponse(page([render_statement(statement) for statement in made], False), status_code=201)


@router.get("", response_model=StatementList, responses=read_responses())
def list_statements(request: Request, caller: PayerActor, page_params: Page, payer_id: PayerQuery = None) -> Response:
    """Statements ordered by id: all (admin) or one payer's (``payer_id``; a payer key: its own)."""
    engine = get_services(request).engine
    if caller.role == "payer":
        payer_id = payer_id or caller.subject_id
    if payer_id is None:
        bodies, has_more = list_all(engine, STATEMENT, page_params)
        return JsonResponse(page([render_statement(decode_statement(body)) for body in bodies], has_more))
    guard(caller, payer_not_found(payer_id), payer_id=payer_id)
    read_payer(engine, payer_id)
    ids, has_more = list_owned(engine, index.STATEMENT_BY_PAYER, payer_id, page_params)
    return JsonResponse(
        render_page(engine, STATEMENT, ids, has_more, lambda body: render_statement(decode_statement(body)))
    )


@router.get("/{statement_id}", response_model=StatementOut, responses=read_responses())
def get_statement_route(statement_id: StatementIdPath, request: Request, caller: PayerActor) -> Response:
    statement = read_statement(get_services(request).engine, statement_id)
    if statement is None:
        raise _not_found(statement_id)
    guard(caller, _not_found(statement_id), payer_id=statement.payer_id)
    return JsonResponse(render_statement(statement))


def _settle_operation(
    statement_id: str, caller: Principal, settle_one: Callable[[BatchContext], Statement]
) -> Callable[[BatchContext], tuple[Statement, bool]]:
    """``settle_one`` for a caller who may see the statement; answers it and whether this call
    made a collection attempt (a statement already paid or processing is answered as it is)."""

    def run(ctx: BatchContext) -> tuple[Statement, bool]:
        before = get_statement(ctx, statement_id)
        guard(caller, _not_found(statement_id), payer_id=before.payer_id)
        after = settle_one(ctx)
        return after, after.attempts != before.attempts

    return run


@router.post("/{statement_id}/settle", response_model=StatementOut, responses=write_responses())
async def settle(statement_id: StatementIdPath, body: SettleIn, request: Request, caller: PayerActor) -> Response:
    """Collect the amount due through a rail as one external charge: ``paid``, or ``failed`` (the
    statement is then ``past_due`` and the payer suspended until it is paid). A ``bank`` rail
    answers ``processing`` and concludes a few seconds later. A paid statement answers as it is."""
    services = get_services(request)
    settle_one = settle_statement(statement_id, body.rail, services.rails, body.simulate_failure)
    statement, attempted = await services.engine.call_async(_settle_operation(statement_id, caller, settle_one))
    return JsonResponse(render_statement(statement, attempt_failed=attempted))
