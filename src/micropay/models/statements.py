"""Post-pay statements: what a tab accrued up to a period end, settled by ONE external charge.

Tab usage accrues in per-minute buckets (``tab_accrual``), so a statement closed at
``period_end`` bills exactly what accrued before it, at one-minute resolution. Settlement
collects the amount through a rail into the tab; a failure makes the statement ``past_due`` and
suspends the payer until it is paid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson

from micropay.engine import BatchContext
from micropay.errors import NotFound, Refused
from micropay.models import chart, index
from micropay.models.payments import PAYER, book_cash_in, get_payer, scale_of
from micropay.models.records import Topup, encode
from micropay.models.tab import NS_PER_MINUTE, TAB_ACCRUAL, TabAccrual, read_accrual
from micropay.settlement.rails import Rails

STATEMENT = "statement"
PAST_DUE = "past_due"


@dataclass(frozen=True, slots=True)
class Statement:
    id: str
    payer_id: str
    ledger: str
    amount_due: int
    status: str  # "open" | "processing" | "paid" | "past_due"
    period_end_ns: int
    created_at_ns: int
    attempts: int = 0
    rail: str = ""
    failure_code: str = ""
    paid_at_ns: int = 0
    simulate_failure: bool = False
    settles_at_ns: int = 0  # when a ``processing`` collection's rail answers


def decode_statement(body: bytes) -> Statement:
    data = orjson.loads(body)
    return Statement(**{name: data[name] for name in Statement.__dataclass_fields__ if name in data})


def statement_id(payer_id: str, period_end_ns: int) -> str:
    digest = hashlib.sha256(f"{payer_id}:{period_end_ns // NS_PER_MINUTE}".encode()).hexdigest()
    return f"st_{digest[:24]}"


def get_statement(ctx: BatchContext, statement_id_: str) -> Statement:
    body = ctx.get_document(STATEMENT, statement_id_)
    if body is None:
        raise NotFound("statement_not_found", f"no statement {statement_id_}", "id")
    return decode_statement(body)


def close_statements(
    payer_ids: list[str], period_end_ns: int, *, whole_minute_after_usage: bool = False
) -> Callable[[BatchContext], list[Statement]]:
    """One statement per listed post-pay payer that accrued something before ``period_end_ns``.

    Usage is billed at one-minute resolution: the minute holding ``period_end_ns`` goes to the
    next statement. With ``whole_minute_after_usage``, a tab whose newest usage is before
    ``period_end_ns`` has all of it billed, that minute included (a period closed "now").
    Closing the same period end again answers the statements it made the first time.
    """

    def run(ctx: BatchContext) -> list[Statement]:
        if period_end_ns > ctx.now_ns:
            raise Refused("period_end_in_future", "period_end may not be later than now", "period_end")
        cut_minute = period_end_ns // NS_PER_MINUTE
        made = []
        for payer_id in payer_ids:
            existing = ctx.get_document(STATEMENT, statement_id(payer_id, period_end_ns))
            if existing is not None:
                made.append(decode_statement(existing))
                continue
            payer = get_payer(ctx, payer_id)
            accrual = read_accrual(ctx, payer_id)
            cut = cut_minute
            if whole_minute_after_usage and accrual.last_ns < period_end_ns:
                cut = cut_minute + 1
            due = sum(amount for minute, amount in accrual.minutes if minute < cut)
            left = tuple((minute, amount) for minute, amount in accrual.minutes if minute >= cut)
            if not due and len(left) == len(accrual.minutes):
                continue
            ctx.put_document(TAB_ACCRUAL, payer_id, encode(TabAccrual(payer_id, left, accrual.last_ns)))
            tab = ctx.account(chart.tab_account(payer.id, payer.ledger))
            owed = 0 if tab is None else max(0, -tab.balance)
            amount_due = min(due, owed)
            if amount_due <= 0:
                continue
            statement = Statement(
                id=statement_id(payer_id, period_end_ns),
                payer_id=payer_id,
                ledger=payer.ledger,
                amount_due=amount_due,
                status="open",
                period_end_ns=period_end_ns,
                created_at_ns=ctx.now_ns,
            )
            ctx.put_document(STATEMENT, statement.id, encode(statement))
            index.put_owner_index(ctx, index.STATEMENT_BY_PAYER, payer_id, statement.id)
            made.append(statement)
        return made

    return run


def settle_statement(
    statement_id_: str, rail_name: str, rails: Rails, simulate_failure: bool = False
) -> Callable[[BatchContext], Statement]:
    """Collect a statement's amount through ``rail_name`` as one external charge.

    Paid: the tab is credited and a suspension for non-payment lifts. Failed: ``past_due`` and
    the payer is suspended. A rail that answers ``pending`` leaves it ``processing`` until
    ``settle_processing`` sees the rail's answer.
    """

    def run(ctx: BatchContext) -> Statement:
        statement = get_statement(ctx, statement_id_)
        if statement.status in ("paid", "processing"):
            return statement
        rail = rails.get(rail_name)
        outcome = rail.collect(statement.amount_due, scale_of(ctx, statement.ledger), ctx.now_ns, simulate_failure)
        statement = replace(
            statement, attempts=statement.attempts + 1, rail=rail.name, simulate_failure=simulate_failure
        )
        if outcome.status == "pending":
            statement = replace(statement, status="processing", settles_at_ns=outcome.settles_at_ns)
            ctx.put_document(STATEMENT, statement.id, encode(statement))
            due_id = f"{statement.id}:{statement.attempts}"
            index.put_due(ctx, index.STATEMENT_DUE, outcome.settles_at_ns, due_id, {"statement_id": statement.id})
            return statement
        return _conclude(ctx, statement, outcome.status == "succeeded", outcome.fee, outcome.failure_code)

    return run


def settle_processing(statement_ids: list[str], rails: Rails) -> Callable[[BatchContext], list[Statement]]:
    """Conclude ``processing`` statements whose rail has answered (``settles_at_ns`` passed)."""

    def run(ctx: BatchContext) -> list[Statement]:
        done = []
        for statement_id_ in statement_ids:
            statement = get_statement(ctx, statement_id_)
            if statement.status != "processing" or statement.settles_at_ns > ctx.now_ns:
                continue
            outcome = rails.get(statement.rail).settle(
                statement.amount_due, scale_of(ctx, statement.ledger), statement.simulate_failure
            )
            done.append(_conclude(ctx, statement, outcome.status == "succeeded", outcome.fee, outcome.failure_code))
        return done

    return run


def _conclude(ctx: BatchContext, statement: Statement, paid: bool, fee: int, failure_code: str) -> Statement:
    payer = get_payer(ctx, statement.payer_id)
    if paid:
        collected = Topup(
            id=statement.id,
            payer_id=payer.id,
            ledger=statement.ledger,
            amount=statement.amount_due,
            rail=statement.rail,
            fee=fee,
            status="succeeded",
            failure_code="",
            created_at_ns=ctx.now_ns,
            settles_at_ns=ctx.now_ns,
        )
        book_cash_in(
            ctx,
            collected,
            chart.tab_account(payer.id, statement.ledger),
            f"statement:{statement.id}:{statement.attempts}",
        )
        statement = replace(statement, status="paid", paid_at_ns=ctx.now_ns, failure_code="")
        ctx.put_document(STATEMENT, statement.id, encode(statement))
        past_due = _past_due_ids(ctx, payer.id)
        if statement.id in past_due:
            past_due.discard(statement.id)
            _set_past_due(ctx, payer.id, past_due)
        if payer.status == "suspended" and payer.suspended_reason == "past_due" and not past_due:
            ctx.put_document(PAYER, payer.id, encode(replace(payer, status="active", suspended_reason="")))
        return statement
    statement = replace(statement, status="past_due", failure_code=failure_code or "payment_failed")
    ctx.put_document(STATEMENT, statement.id, encode(statement))
    _set_past_due(ctx, payer.id, _past_due_ids(ctx, payer.id) | {statement.id})
    if payer.status == "active":
        ctx.put_document(PAYER, payer.id, encode(replace(payer, status="suspended", suspended_reason="past_due")))
    return statement


def _past_due_ids(ctx: BatchContext, payer_id: str) -> set[str]:
    body = ctx.get_document(PAST_DUE, payer_id)
    return set() if body is None else {str(item) for item in orjson.loads(body)["ids"]}


def _set_past_due(ctx: BatchContext, payer_id: str, ids: set[str]) -> None:
    ctx.put_document(PAST_DUE, payer_id, orjson.dumps({"payer_id": payer_id, "ids": sorted(ids)}))
