"""Rating a batch of usage events in one operation (``record_events``, ``rate_events``).

Each event is checked and rated on its own, in order, against the batch's running state (period
quantities per payer, plan and period; each payer's promo, wallet and tab room and spending
caps), so it answers exactly what ``metering.record_event`` would had the events run one by
one; then each (payer, merchant) is charged once: one charge and one transfer per money source.
A bad event gets its own error and touches nothing. ``rate_events`` runs it, falling back to
one operation per event should the grouped booking ever fail (all of the batch operation is
undone first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from micropay.engine import BatchContext, Engine
from micropay.errors import ApiError, InvariantViolation, MicropayError, Refused
from micropay.ledger import Result, TransferRequest, outcome_codes
from micropay.ledger.limits import AMOUNT_MAX
from micropay.models import chart
from micropay.models import payments as pay
from micropay.models.collection import PayerRoom, check_amount, collection_legs, open_room
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
    check_plan_and_payer,
    checked_timestamp,
    decode_event,
    encode_usage,
    event_of,
    load_plan,
    put_event_bucket,
    quantity_after,
    read_usage,
    record_event,
    replay_event,
    usage_charge_id,
    usage_key,
    usage_of,
)
from micropay.models.metering_columns import rate_columns
from micropay.models.payments import DESCRIPTION_LENGTH_MAX, Outcome, get_merchant, get_payer
from micropay.models.pricing import QUANTITY_MAX, Pricing
from micropay.models.records import NO_SOURCES, Charge, Merchant, Payer, dumps, encode_charge, sources_of
from micropay.models.rules import period_key, platform_fee


@dataclass(slots=True)
class _PayerState:
    payer: Payer
    active: bool
    room: PayerRoom | None = None  # what the payer can still spend (read at its first charge)
    charges: dict[str, _Charge] = field(default_factory=dict)  # by merchant, in order of the first event
    event_ids: list[str] = field(default_factory=list)  # events recorded for the payer in this batch


@dataclass(slots=True)
class _Charge:
    """What a payer pays one merchant in this batch: one charge (named after its first paying
    event), one transfer per money source, and the platform fee of each event."""

    merchant_id: str
    charge_id: str
    metrics: list[str]
    promo: int = 0
    wallet: int = 0
    tab: int = 0
    fee: int = 0


@dataclass(slots=True)
class _Group:
    """One (payer, plan, period) in this batch: its usage as it grows."""

    plan: Plan
    rates: Pricing
    usage: Usage
    quantity: int
    floor: int  # floor(price(quantity))
    amount: int
    changed: bool = False


@dataclass(slots=True)
class _PlanState:
    plan: Plan
    rates: Pricing
    capacity: int
    floor: Callable[[int], int]


class GroupedChargeFailed(MicropayError):
    """A batch's grouped transfers did not all apply; the batch operation is undone whole."""


class _Batch:
    """The running state of one batch operation. ``rate`` answers each event exactly as
    ``record_event`` would, in order; ``book`` then moves the money and writes the records."""

    def __init__(self, ctx: BatchContext, stored: dict[str, bytes]) -> None:
        self.ctx = ctx
        self.now_ns = ctx.now_ns
        self.stored = stored  # events of this batch's ids recorded before it
        self.events: dict[str, UsageEvent] = {}
        self.plans: dict[str, _PlanState] = {}
        self.payers: dict[str, _PayerState] = {}
        self.merchants: dict[str, tuple[int, int]] = {}  # fee: (percent_bps, fixed)
        self.merchant_records: dict[str, Merchant] = {}
        self.groups: dict[tuple[str, str, str], _Group] = {}
        self.periods: dict[int, str] = {}
        self.usage_bodies: dict[str, bytes] = {}
        self.usage_read: set[str] = set()

    # ------------------------------------------------------------- per event
    def rate(self, request: EventRequest) -> EventResult:
        try:
            return self._rate(request)
        except ApiError as error:
            return error

    def _rate(self, request: EventRequest) -> Outcome[UsageEvent]:
        # The checks of record_event, in its order, inlined: this runs once per event.
        event_id, payer_id, plan_id, quantity, timestamp_ns, metadata = request
        earlier = self.events.get(event_id)
        if earlier is not None:
            return replay_event(earlier, request)
        body = self.stored.get(event_id)
        if body is not None:
            return replay_event(decode_event(body), request)
        if not 0 < quantity <= QUANTITY_MAX:
            raise Refused("invalid_quantity", f"quantity is 1 to {QUANTITY_MAX}", "quantity")
        now_ns = self.now_ns
        if timestamp_ns is None:
            timestamp_ns = now_ns
        elif timestamp_ns < 0 or timestamp_ns > now_ns + FUTURE_SKEW_NS:
            checked_timestamp(request, now_ns)  # raises the refusal
        plan_state = self.plans.get(plan_id) or self._plan(plan_id)
        state = self.payers.get(payer_id) or self._payer(payer_id)
        plan = plan_state.plan
        day = timestamp_ns // NS_PER_DAY
        period = self.periods.get(day) or self._period(day, timestamp_ns)
        if state.payer.ledger != plan.ledger or period in plan.closed_periods:
            check_plan_and_payer(plan, state.payer, period)  # raises the refusal
        key = (plan_id, period, payer_id)
        group = self.groups.get(key) or self._group(key, plan_state)
        after = group.quantity + quantity
        if after > plan_state.capacity:
            quantity_after(group.quantity, quantity, plan_state.rates)  # raises the refusal
        floor_after = plan_state.floor(after)
        amount = floor_after - group.floor
        status, decline_code, charge_id = "charged", "", ""
        if not state.active:
            status, decline_code, amount = "declined", "payer_suspended", 0
        elif amount:
            spent = self._spend(state, plan, amount, event_id)
            if isinstance(spent, str):
                status, decline_code, amount = "declined", spent, 0
            else:
                charge_id = spent.charge_id
        if status == "charged":
            group.quantity, group.floor, group.amount, group.changed = after, floor_after, group.amount + amount, True
        row = (
            event_id,
            payer_id,
            plan_id,
            quantity,
            timestamp_ns,
            period,
            status,
            amount,
            decline_code,
            now_ns,
            charge_id,
            metadata,
        )
        self.ctx.put_document(USAGE_EVENT, event_id, dumps(row))  # what encode_event writes
        event = self.events[event_id] = event_of(row)
        state.event_ids.append(event_id)
        return event, False

    def _plan(self, plan_id: str) -> _PlanState:
        plan, rates = load_plan(self.ctx, plan_id)
        state = self.plans[plan_id] = _PlanState(plan, rates, rates.capacity, rates.floor_function())
        return state

    def _payer(self, payer_id: str) -> _PayerState:
        payer = get_payer(self.ctx, payer_id)
        state = self.payers[payer_id] = _PayerState(payer, payer.status == "active")
        return state

    def _period(self, day: int, timestamp_ns: int) -> str:
        period = self.periods[day] = period_key("month", timestamp_ns)
        return period

    def prefetch_usage(self, requests: Sequence[EventRequest]) -> None:
        """Read the usage documents the batch's events name (one store read for those not in
        memory), so that rating finds them at hand."""
        now_ns, periods = self.now_ns, self.periods
        keys: set[str] = set()
        for request in requests:
            timestamp_ns = now_ns if request.timestamp_ns is None else request.timestamp_ns
            if timestamp_ns < 0:
                continue
            day = timestamp_ns // NS_PER_DAY
            period = periods.get(day) or self._period(day, timestamp_ns)
            keys.add(usage_key(request.plan_id, period, request.payer_id))
        self.usage_bodies = self.ctx.get_documents(USAGE, keys)
        self.usage_read = keys

    def _group(self, key: tuple[str, str, str], plan_state: _PlanState) -> _Group:
        plan_id, period, payer_id = key
        document_id = usage_key(plan_id, period, payer_id)
        body = self.usage_bodies.get(document_id)
        if body is not None:
            usage = usage_of(body)
        elif document_id in self.usage_read:
            usage = Usage(plan_id, period, payer_id)  # read ahead: none yet
        else:
            usage = read_usage(self.ctx, plan_id, period, payer_id)
        floor = plan_state.rates.price_floor(usage.quantity)
        group = self.groups[key] = _Group(plan_state.plan, plan_state.rates, usage, usage.quantity, floor, usage.amount)
        return group

    def _merchant(self, merchant_id: str) -> tuple[int, int]:
        merchant = get_merchant(self.ctx, merchant_id)
        fee = self.merchants[merchant_id] = (merchant.fee_percent_bps, merchant.fee_fixed)
        self.merchant_records[merchant_id] = merchant
        return fee

    def _spend(self, state: _PayerState, plan: Plan, amount: int, event_id: str) -> _Charge | str:
        """Take ``amount`` from the payer's running room as ``charge_now`` would: answer the
        decline code, or the batch's charge of this payer and merchant that took it (raise for
        what ``charge_now`` would raise)."""
        if amount > AMOUNT_MAX:
            check_amount(amount)  # raises the refusal
        merchant_id = plan.merchant_id
        percent_bps, fixed = self.merchants.get(merchant_id) or self._merchant(merchant_id)
        room = state.room or self._room(state)
        taken = room.take(self.ctx, amount)
        if isinstance(taken, str):
            return taken
        promo, wallet, tab = taken
        charge = state.charges.get(merchant_id)
        if charge is None:
            charge = state.charges[merchant_id] = _Charge(merchant_id, usage_charge_id(event_id), [plan.metric])
        elif plan.metric not in charge.metrics:
            charge.metrics.append(plan.metric)
        charge.promo += promo
        charge.wallet += wallet
        charge.tab += tab
        if percent_bps or fixed:  # the fee of each event's own charge
            charge.fee += platform_fee(amount, percent_bps, fixed)
        return charge

    def _room(self, state: _PayerState) -> PayerRoom:
        room = state.room = open_room(self.ctx, state.payer)
        return room

    # ------------------------------------------------------------- booking the batch
    def book(self) -> None:
        """Move the money (per payer and merchant: one transfer per money source, and the fee),
        then write the records."""
        ctx, now_ns = self.ctx, self.now_ns
        legs: list[TransferRequest] = []
        for state in self.payers.values():
            room = state.room
            for charge in state.charges.values():
                if room is None:
                    raise InvariantViolation("a payer charged in a batch has no room")
                merchant_account = chart.merchant_account(charge.merchant_id)
                prefix = "charge:" + charge.charge_id
                legs += collection_legs(room, (charge.promo, charge.wallet, charge.tab), merchant_account, prefix)
                if charge.fee:
                    fees = chart.fees_account(room.payer.ledger)
                    legs.append(TransferRequest(prefix + ":fee", merchant_account, fees, charge.fee, room.payer.ledger))
        if legs and any(code is not Result.OK for code in outcome_codes(ctx.create_transfers(legs))):
            raise GroupedChargeFailed("a grouped usage transfer did not apply")
        earnings: dict[str, int] = {}
        for state in self.payers.values():
            if state.room is not None:
                self._book_payer(state, state.room, earnings)
            if state.event_ids:
                put_event_bucket(ctx, state.payer.id, state.event_ids)
        for merchant_id, net in earnings.items():
            pay._add_earnings(ctx, self.merchant_records[merchant_id], net, now_ns)
        for (plan_id, period, payer_id), group in self.groups.items():
            if group.changed:
                old = group.usage
                usage = Usage(
                    plan_id,
                    period,
                    payer_id,
                    group.quantity,
                    group.amount,
                    old.minimum_charged,
                    old.minimum_decline_code,
                )
                ctx.put_document(USAGE, usage_key(plan_id, period, payer_id), encode_usage(usage))

    def _book_payer(self, state: _PayerState, room: PayerRoom, earnings: dict[str, int]) -> None:
        ctx, now_ns, payer = self.ctx, self.now_ns, state.payer
        for charge in state.charges.values():
            amount = charge.promo + charge.wallet + charge.tab
            record = Charge(
                charge.charge_id,
                payer.id,
                charge.merchant_id,
                payer.ledger,
                amount,
                charge.fee,
                amount - charge.fee,
                sources_of(charge.promo, charge.wallet, charge.tab),
                room.spend_promo(charge.promo),
                NO_SOURCES,
                ", ".join(charge.metrics)[:DESCRIPTION_LENGTH_MAX],
                "succeeded",
                now_ns,
                "usage",
            )
            ctx.put_document(pay.CHARGE, record.id, encode_charge(record))
            earnings[charge.merchant_id] = earnings.get(charge.merchant_id, 0) + amount - charge.fee
        room.book(ctx)


def record_events(
    requests: Sequence[EventRequest], *, by_columns: bool = True
) -> Callable[[BatchContext], list[EventResult]]:
    """Rate and charge a batch of events in one operation, each answering what ``record_event``
    would have answered had they been run one by one in this order. Plain batches are rated
    column by column (``metering_columns``; ``by_columns=False`` turns that off, for the tests
    comparing the two)."""

    def run(ctx: BatchContext) -> list[EventResult]:
        if by_columns:
            together = rate_columns(ctx, requests)
            if together is not None:
                return together
        # Most ids are new: one store read finds the few that are not. The usage of every
        # payer, plan and month the batch names is read the same way.
        batch = _Batch(ctx, ctx.get_documents(USAGE_EVENT, [request.id for request in requests]))
        batch.prefetch_usage(requests)
        rate = batch.rate
        results = [rate(request) for request in requests]
        batch.book()
        return results

    return run


def _settled(future: Future[Outcome[UsageEvent]]) -> EventResult:
    try:
        return future.result()
    except ApiError as error:
        return error


def rate_events(engine: Engine, requests: Sequence[EventRequest]) -> list[EventResult]:
    """Rate up to ``BATCH_SIZE_MAX`` events as one batch operation (see ``record_events``)."""
    if not requests:
        return []
    try:
        return engine.call(record_events(requests), len(requests))
    except GroupedChargeFailed:
        futures = [engine.submit(record_event(request)) for request in requests]
        return [_settled(future) for future in futures]


async def rate_events_async(engine: Engine, requests: Sequence[EventRequest]) -> list[EventResult]:
    if not requests:
        return []
    try:
        return await engine.call_async(record_events(requests), len(requests))
    except GroupedChargeFailed:
        pass
    futures = [asyncio.wrap_future(engine.submit(record_event(request))) for request in requests]
    answers = await asyncio.gather(*futures, return_exceptions=True)
    results: list[EventResult] = []
    for answer in answers:
        if isinstance(answer, ApiError):
            results.append(answer)
        elif isinstance(answer, BaseException):
            raise answer
        else:
            results.append(answer)
    return results
