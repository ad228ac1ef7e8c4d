"""Pay-as-you-go metering: price plans, usage events rated and charged at once.

An event's charge is ``floor(price(q_after)) - floor(price(q_before))`` for its payer, plan and
UTC month (``models.pricing``), so the charges of a period add up exactly to the plan's price
of the period's total quantity: fractions carry, nothing is lost or invented. A declined event
is recorded with its decline code and does not count in usage. Event ids are idempotency keys
against everything stored: a replay charges nothing and answers the first result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson

from micropay.engine import BatchContext
from micropay.errors import Conflict, NotFound, PaymentDeclined, Refused
from micropay.models.payments import ChargeRequest, Outcome, charge_now, get_merchant, get_payer
from micropay.models.pricing import QUANTITY_MAX, Pricing, minimum_text, parse_pricing, pricing_to_json
from micropay.models.records import encode
from micropay.models.rules import period_key

PLAN, USAGE, USAGE_EVENT = "plan", "usage", "usage_event"
METRIC_LENGTH_MAX = 64
FUTURE_SKEW_NS = 300 * 1_000_000_000
"""How far past the engine's clock an event's timestamp may be (clock skew of the sender)."""
CLOSED_PERIODS_MAX = 1200


@dataclass(frozen=True, slots=True)
class Plan:
    id: str
    merchant_id: str
    ledger: str
    metric: str
    pricing: dict[str, object]  # the API's pricing object, prices as exact decimal strings
    minimum: str  # per period, decimal string in minor units ("0": none)
    created_at_ns: int
    closed_periods: tuple[str, ...] = ()

    def rates(self) -> Pricing:
        return parse_pricing(self.pricing, self.minimum)


@dataclass(frozen=True, slots=True)
class Usage:
    """A payer's usage of one plan in one period: charged quantity and amount."""

    plan_id: str
    period: str
    payer_id: str
    quantity: int = 0
    amount: int = 0
    minimum_charged: int = 0


@dataclass(frozen=True, slots=True)
class UsageEvent:
    id: str
    payer_id: str
    plan_id: str
    quantity: int
    timestamp_ns: int
    period: str
    status: str  # "charged" | "declined"
    amount: int
    decline_code: str
    created_at_ns: int


def decode_plan(body: bytes) -> Plan:
    data = orjson.loads(body)
    fields = {name: data[name] for name in Plan.__dataclass_fields__}
    fields["closed_periods"] = tuple(fields["closed_periods"])
    return Plan(**fields)


def decode_usage(body: bytes) -> Usage:
    data = orjson.loads(body)
    return Usage(**{name: data[name] for name in Usage.__dataclass_fields__})


def decode_event(body: bytes) -> UsageEvent:
    data = orjson.loads(body)
    return UsageEvent(**{name: data[name] for name in UsageEvent.__dataclass_fields__})


def get_plan(ctx: BatchContext, plan_id: str) -> Plan:
    body = ctx.get_document(PLAN, plan_id)
    if body is None:
        raise NotFound("plan_not_found", f"no plan {plan_id}", "plan_id")
    return decode_plan(body)


def usage_key(plan_id: str, period: str, payer_id: str) -> str:
    """Usage documents sort by plan and period, so a period's payers can be listed by prefix."""
    return f"{plan_id}:{period}:{payer_id}"


def read_usage(ctx: BatchContext, plan_id: str, period: str, payer_id: str) -> Usage:
    body = ctx.get_document(USAGE, usage_key(plan_id, period, payer_id))
    if body is None:
        return Usage(plan_id, period, payer_id)
    return decode_usage(body)


@dataclass(frozen=True, slots=True)
class PlanRequest:
    id: str
    merchant_id: str
    metric: str
    pricing: dict[str, object]
    minimum: str | None = None


def create_plan(request: PlanRequest) -> Callable[[BatchContext], Outcome[Plan]]:
    def run(ctx: BatchContext) -> Outcome[Plan]:
        rates = parse_pricing(request.pricing, request.minimum)
        canonical = pricing_to_json(rates)
        minimum = minimum_text(rates)
        body = ctx.get_document(PLAN, request.id)
        if body is not None:
            existing = get_plan(ctx, request.id)
            asked = (request.merchant_id, request.metric, canonical, minimum)
            if (existing.merchant_id, existing.metric, existing.pricing, existing.minimum) != asked:
                raise Conflict("exists_with_different_fields", f"plan {request.id} exists with other fields", "id")
            return existing, True
        if not 0 < len(request.metric) <= METRIC_LENGTH_MAX:
            raise Refused("invalid_metric", f"metric is 1 to {METRIC_LENGTH_MAX} characters", "metric")
        merchant = get_merchant(ctx, request.merchant_id)
        plan = Plan(request.id, merchant.id, merchant.ledger, request.metric, canonical, minimum, ctx.now_ns)
        ctx.put_document(PLAN, plan.id, encode(plan))
        return plan, False

    return run


@dataclass(frozen=True, slots=True)
class EventRequest:
    id: str
    payer_id: str
    plan_id: str
    quantity: int
    timestamp_ns: int


def record_event(request: EventRequest) -> Callable[[BatchContext], Outcome[UsageEvent]]:
    """Rate and charge one usage event (or replay it)."""

    def run(ctx: BatchContext) -> Outcome[UsageEvent]:
        body = ctx.get_document(USAGE_EVENT, request.id)
        if body is not None:
            existing = decode_event(body)
            asked = (request.payer_id, request.plan_id, request.quantity, request.timestamp_ns)
            if (existing.payer_id, existing.plan_id, existing.quantity, existing.timestamp_ns) != asked:
                raise Conflict("exists_with_different_fields", f"event {request.id} exists with other fields", "id")
            return existing, True
        if not 0 < request.quantity <= QUANTITY_MAX:
            raise Refused("invalid_quantity", f"quantity is 1 to {QUANTITY_MAX}", "quantity")
        if request.timestamp_ns > ctx.now_ns + FUTURE_SKEW_NS:
            raise Refused("timestamp_in_future", "the event's timestamp is later than now", "timestamp")
        plan = get_plan(ctx, request.plan_id)
        payer = get_payer(ctx, request.payer_id)
        period = period_key("month", request.timestamp_ns)
        if period in plan.closed_periods:
            raise Refused("period_closed", f"period {period} of plan {plan.id} is closed", "timestamp")
        usage = read_usage(ctx, plan.id, period, payer.id)
        after = usage.quantity + request.quantity
        if after > QUANTITY_MAX:
            raise Refused("quantity_over_maximum", f"a period holds at most {QUANTITY_MAX} units", "quantity")
        amount = plan.rates().charge(usage.quantity, after)
        event = UsageEvent(
            request.id,
            payer.id,
            plan.id,
            request.quantity,
            request.timestamp_ns,
            period,
            "charged",
            amount,
            "",
            ctx.now_ns,
        )
        if amount:
            try:
                charge_now(
                    ctx,
                    ChargeRequest(f"usage:{request.id}", payer.id, plan.merchant_id, amount, plan.metric, kind="usage"),
                )
            except PaymentDeclined as declined:
                # charge_now refuses before it moves or writes anything, so nothing needs undoing.
                event = replace(event, status="declined", amount=0, decline_code=declined.code)
        if event.status == "charged":
            updated = replace(usage, quantity=after, amount=usage.amount + amount)
            ctx.put_document(USAGE, usage_key(plan.id, period, payer.id), encode(updated))
        ctx.put_document(USAGE_EVENT, event.id, encode(event))
        return event, False

    return run


def close_period(plan_id: str, period: str, payer_ids: list[str]) -> Callable[[BatchContext], list[Usage]]:
    """Close a plan's period: true up each listed payer to the plan's minimum, then refuse later
    events for it (``period_closed``). ``payer_ids``: every payer with usage in the period."""

    def run(ctx: BatchContext) -> list[Usage]:
        plan = get_plan(ctx, plan_id)
        if period in plan.closed_periods:
            return [read_usage(ctx, plan.id, period, payer_id) for payer_id in payer_ids]
        if period >= period_key("month", ctx.now_ns):
            raise Refused("period_not_over", f"period {period} has not ended yet", "period")
        if len(plan.closed_periods) >= CLOSED_PERIODS_MAX:
            raise Refused("too_many_closed_periods", "this plan has closed too many periods", "period")
        minimum = plan.rates().minimum_floor()
        trued = []
        for payer_id in payer_ids:
            usage = read_usage(ctx, plan.id, period, payer_id)
            short = minimum - usage.amount
            if short > 0:
                charge_now(
                    ctx,
                    ChargeRequest(
                        f"usage_minimum:{plan.id}:{period}:{payer_id}",
                        payer_id,
                        plan.merchant_id,
                        short,
                        f"{plan.metric} minimum {period}",
                        kind="usage",
                    ),
                )
                usage = replace(usage, amount=usage.amount + short, minimum_charged=short)
                ctx.put_document(USAGE, usage_key(plan.id, period, payer_id), encode(usage))
            trued.append(usage)
        closed = replace(plan, closed_periods=(*plan.closed_periods, period))
        ctx.put_document(PLAN, plan.id, encode(closed))
        return trued

    return run
