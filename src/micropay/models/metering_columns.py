"""The column path of a metering batch: a batch's events rated together, when that is certain
to answer exactly what the batch path (``metering_batch``) answers.

Most batches are plain: new ids, valid quantities and timestamps, known plans of open periods,
and payers who pay from the wallet alone (active, prepay, no caps, no promo grants) with room
for the sum the batch charges them. Then no event is refused or declined, every event is
charged what its group's running quantity says, and the work is passes over columns plus one
short loop of arithmetic per event. The money moves as the batch path moves it (per payer and
merchant: one charge named after its first paying event, its wallet transfer, its fee), and the
same records are written. Anything else answers None before anything moves or is written, and
the batch path rates the events one at a time. The tests hold both paths to the same answers,
records and balances.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from micropay.engine import BatchContext
from micropay.errors import NotFound
from micropay.ledger.limits import AMOUNT_MAX
from micropay.ledger.validate import plain_columns
from micropay.models import chart
from micropay.models import payments as pay
from micropay.models.collection import wallet_alone
from micropay.models.metering import (
    FUTURE_SKEW_NS,
    NS_PER_DAY,
    USAGE,
    USAGE_EVENT,
    EventRequest,
    EventResult,
    Plan,
    Usage,
    UsageEvent,
    encode_usage,
    load_plan,
    put_event_bucket,
    usage_charge_id,
    usage_key,
    usage_of,
)
from micropay.models.payments import DESCRIPTION_LENGTH_MAX
from micropay.models.pricing import QUANTITY_MAX
from micropay.models.records import NO_SOURCES, Charge, Merchant, Payer, dumps, encode_charge, sources_of
from micropay.models.rules import period_key, platform_fee

COLUMN_EVENTS_MIN = 8
"""Fewest events worth the column passes (and the ledger's fast path wants 8 transfers)."""

_CHARGED = "charged"
_new_tuple = tuple.__new__  # UsageEvent(*row) for a row of all its fields, without the call's frame


@dataclass(slots=True)
class _RatedPlan:
    plan: Plan
    capacity: int
    floor: Callable[[int], int]
    merchant: Merchant


@dataclass(slots=True)
class _Group:
    """One (plan, period, payer) of the batch: its stored usage (under ``document_id``), the
    plan's rating, and the running quantity, its price's floor and what the batch charged."""

    usage: Usage
    document_id: str
    price_floor: Callable[[int], int]
    capacity: int
    quantity: int
    floor: int
    amount: int = 0


@dataclass(slots=True)
class _Charge:
    """What a payer pays one merchant in this batch (as ``metering_batch`` makes it)."""

    charge_id: str
    metrics: list[str]
    amount: int = 0
    fee: int = 0


@dataclass(slots=True)
class _Payer:
    payer: Payer
    wallet_account: str
    charges: dict[str, _Charge] = field(default_factory=dict)  # by merchant, in order of the first paying event
    event_ids: list[str] = field(default_factory=list)


def rate_columns(ctx: BatchContext, requests: Sequence[EventRequest]) -> list[EventResult] | None:
    """Rate and charge every event of ``requests`` when each is certain to be charged as the
    batch path would charge it; else None, having moved and written nothing."""
    count = len(requests)
    if count < COLUMN_EVENTS_MIN:
        return None
    ids = [request.id for request in requests]
    quantities = [request.quantity for request in requests]
    if len(set(ids)) != count or set(map(type, quantities)) != {int}:
        return None
    if min(quantities) <= 0 or max(quantities) > QUANTITY_MAX:
        return None
    now_ns = ctx.now_ns
    timestamps = [now_ns if request.timestamp_ns is None else request.timestamp_ns for request in requests]
    if set(map(type, timestamps)) != {int} or min(timestamps) < 0 or max(timestamps) > now_ns + FUTURE_SKEW_NS:
        return None
    if ctx.any_document_exists(USAGE_EVENT, ids):
        return None  # a replay: only the batch path answers those
    periods = _periods(timestamps)
    payer_ids = [request.payer_id for request in requests]
    plan_ids = [request.plan_id for request in requests]
    keys = list(zip(plan_ids, periods, payer_ids, strict=True))
    group_keys = list(dict.fromkeys(keys))
    parties = _parties(ctx, payer_ids, plan_ids, group_keys)
    if parties is None:
        return None
    payers, plans = parties

    rated = _rate(ctx, plans, keys, group_keys, quantities)
    if rated is None:
        return None
    amounts, groups = rated
    totals: dict[str, int] = {}
    for (_, _, payer_id), group in groups.items():
        totals[payer_id] = totals.get(payer_id, 0) + group.amount
    available = ctx.available
    if any(total > (available(payers[payer_id].wallet_account) or 0) for payer_id, total in totals.items()):
        return None
    charge_ids = _group_charges(payers, plans, ids, payer_ids, plan_ids, amounts)
    if not _move(ctx, payers, plans):
        return None

    # The money has moved: nothing below refuses.
    rows = list(
        zip(
            ids,
            payer_ids,
            plan_ids,
            quantities,
            timestamps,
            periods,
            repeat(_CHARGED),
            amounts,
            repeat(""),
            repeat(now_ns),
            charge_ids,
            [request.metadata for request in requests],
        )
    )
    ctx.create_documents(USAGE_EVENT, ids, [dumps(row) for row in rows])  # what encode_event writes
    events: list[UsageEvent] = list(map(_new_tuple, repeat(UsageEvent), rows))
    _book(ctx, payers, plans, groups)
    return list(zip(events, repeat(False)))


_Groups = dict[tuple[str, str, str], _Group]
"""The batch's (plan, period, payer) groups, in order of their first event."""


def _periods(timestamps: list[int]) -> list[str]:
    """Each timestamp's UTC month, worked out once per day."""
    by_day: dict[int, str] = {}
    periods = []
    for timestamp_ns in timestamps:
        day = timestamp_ns // NS_PER_DAY
        period = by_day.get(day)
        if period is None:
            period = by_day[day] = period_key("month", timestamp_ns)
        periods.append(period)
    return periods


def _parties(
    ctx: BatchContext, payer_ids: list[str], plan_ids: list[str], group_keys: list[tuple[str, str, str]]
) -> tuple[dict[str, _Payer], dict[str, _RatedPlan]] | None:
    """The batch's payers (each paying from its wallet alone) and plans (with their merchants),
    or None if any is unknown, a payer pays otherwise, a period is closed, or a payer and a plan
    are on different ledgers."""
    try:
        plans: dict[str, _RatedPlan] = {}
        for plan_id in dict.fromkeys(plan_ids):
            plan, rates = load_plan(ctx, plan_id)
            merchant = pay.get_merchant(ctx, plan.merchant_id)
            plans[plan_id] = _RatedPlan(plan, rates.capacity, rates.floor_function(), merchant)
        payers: dict[str, _Payer] = {}
        for payer_id in dict.fromkeys(payer_ids):
            payer = pay.get_payer(ctx, payer_id)
            wallet = wallet_alone(ctx, payer)
            if wallet is None:
                return None
            payers[payer_id] = _Payer(payer, wallet)
    except NotFound:
        return None
    for plan_id, period, payer_id in group_keys:
        plan = plans[plan_id].plan
        if payers[payer_id].payer.ledger != plan.ledger or period in plan.closed_periods:
            return None
    return payers, plans


def _rate(
    ctx: BatchContext,
    plans: dict[str, _RatedPlan],
    keys: list[tuple[str, str, str]],
    group_keys: list[tuple[str, str, str]],
    quantities: list[int],
) -> tuple[list[int], _Groups] | None:
    """Each event's amount, ``floor(price(after)) - floor(price(before))`` in its group (its
    ``keys`` entry), in order, and the groups as the events leave them; None if a group would
    end past its plan's capacity (quantities only grow, so no event before its end was) or an
    event would cost more than one transfer may move."""
    document_ids = [usage_key(*key) for key in group_keys]
    bodies = ctx.get_documents(USAGE, document_ids)
    groups: _Groups = {}
    for key, document_id in zip(group_keys, document_ids, strict=True):
        body = bodies.get(document_id)
        usage = Usage(*key) if body is None else usage_of(body)
        rated = plans[key[0]]
        groups[key] = _Group(
            usage, document_id, rated.floor, rated.capacity, usage.quantity, rated.floor(usage.quantity)
        )
    amounts: list[int] = []
    append = amounts.append
    for key, quantity in zip(keys, quantities, strict=True):
        group = groups[key]
        after = group.quantity + quantity
        floor_after = group.price_floor(after)  # past the capacity too: refused below
        amount = floor_after - group.floor
        append(amount)
        group.quantity = after
        group.floor = floor_after
        group.amount += amount
    if max(amounts) > AMOUNT_MAX or any(group.quantity > group.capacity for group in groups.values()):
        return None
    return amounts, groups


def _group_charges(
    payers: dict[str, _Payer],
    plans: dict[str, _RatedPlan],
    ids: list[str],
    payer_ids: list[str],
    plan_ids: list[str],
    amounts: list[int],
) -> list[str]:
    """Each paying event's share in its payer's charge for the plan's merchant (named after the
    first paying event of the two), the fee of each event's own charge added; each event's
    charge id ("" when it costs nothing)."""
    charge_ids: list[str] = []
    for event_id, payer_id, plan_id, amount in zip(ids, payer_ids, plan_ids, amounts, strict=True):
        state = payers[payer_id]
        state.event_ids.append(event_id)
        if not amount:
            charge_ids.append("")
            continue
        rated = plans[plan_id]
        merchant = rated.merchant
        charge = state.charges.get(merchant.id)
        if charge is None:
            charge = state.charges[merchant.id] = _Charge(usage_charge_id(event_id), [rated.plan.metric])
        elif rated.plan.metric not in charge.metrics:
            charge.metrics.append(rated.plan.metric)
        charge.amount += amount
        charge.fee += platform_fee(amount, merchant.fee_percent_bps, merchant.fee_fixed)
        charge_ids.append(charge.charge_id)
    return charge_ids


def _move(ctx: BatchContext, payers: dict[str, _Payer], plans: dict[str, _RatedPlan]) -> bool:
    """Each payer's charges, in the batch path's order (payers by their first event, each one's
    merchants by their first paying event): the wallet transfer, then the fee. All at once by
    the ledger's fast path; False, having moved nothing, when it cannot take them so."""
    ledgers = {state.payer.ledger for state in payers.values()}
    if len(ledgers) != 1:
        return False
    [ledger] = ledgers
    fees_account = chart.fees_account(ledger)
    ids: list[str] = []
    debits: list[str] = []
    credits: list[str] = []
    amounts: list[int] = []
    for state in payers.values():
        for merchant_id, charge in state.charges.items():
            merchant_account = chart.merchant_account(merchant_id)
            prefix = "charge:" + charge.charge_id
            ids.append(prefix + ":wallet")
            debits.append(state.wallet_account)
            credits.append(merchant_account)
            amounts.append(charge.amount)
            if charge.fee:
                ids.append(prefix + ":fee")
                debits.append(merchant_account)
                credits.append(fees_account)
                amounts.append(charge.fee)
    if not ids:
        return True
    return ctx.create_plain_transfers(plain_columns(ids, debits, credits, amounts, ledger))


def _book(ctx: BatchContext, payers: dict[str, _Payer], plans: dict[str, _RatedPlan], groups: _Groups) -> None:
    """Write what the batch path writes once the money has moved: each payer's charges and its
    events' bucket, the merchants' earnings on hold, each group's usage."""
    now_ns = ctx.now_ns
    merchants = {rated.merchant.id: rated.merchant for rated in plans.values()}
    earnings: dict[str, int] = {}
    for state in payers.values():
        payer = state.payer
        for merchant_id, charge in state.charges.items():
            record = Charge(
                charge.charge_id,
                payer.id,
                merchant_id,
                payer.ledger,
                charge.amount,
                charge.fee,
                charge.amount - charge.fee,
                sources_of(0, charge.amount, 0),
                (),
                NO_SOURCES,
                ", ".join(charge.metrics)[:DESCRIPTION_LENGTH_MAX],
                "succeeded",
                now_ns,
                "usage",
            )
            ctx.put_document(pay.CHARGE, record.id, encode_charge(record))
            earnings[merchant_id] = earnings.get(merchant_id, 0) + charge.amount - charge.fee
        if state.event_ids:
            put_event_bucket(ctx, payer.id, state.event_ids)
    for merchant_id, net in earnings.items():
        pay._add_earnings(ctx, merchants[merchant_id], net, now_ns)
    document_ids: list[str] = []
    bodies: list[bytes] = []
    for (plan_id, period, payer_id), group in groups.items():
        old = group.usage
        usage = Usage(
            plan_id,
            period,
            payer_id,
            group.quantity,
            old.amount + group.amount,
            old.minimum_charged,
            old.minimum_decline_code,
        )
        document_ids.append(group.document_id)
        bodies.append(encode_usage(usage))
    ctx.put_documents(USAGE, document_ids, bodies)
