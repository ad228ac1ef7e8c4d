"""Pay-as-you-go metering: price plans, usage events rated and charged at once.

An event's charge is ``floor(price(q_after)) - floor(price(q_before))`` for its payer, plan and
UTC month (``models.pricing``), so the charges of a period add up exactly to the plan's price
of the period's total quantity: fractions carry, nothing is lost or invented. A declined event
is recorded with its decline code, charges nothing and does not count in usage. Event ids are
idempotency keys against everything stored: a replay charges nothing and answers the first
result.

Two ways to rate events, with the same per-event results:

- ``record_event``: one event, one operation, charged through ``payments.charge_now`` (one
  charge per event). The reference path.
- ``metering_batch.record_events``: a batch of events in one operation, each answering what
  the one-by-one path would (see that module).

A period is closed by ``close_period`` (later events for it: ``period_closed``), then each payer
with usage is trued up to the plan's minimum by ``true_up`` (one operation per payer).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import orjson

from micropay.engine import BatchContext, Engine
from micropay.errors import ApiError, Conflict, NotFound, PaymentDeclined, Refused, require
from micropay.ledger.limits import NS_PER_S
from micropay.models import index
from micropay.models.collection import check_amount
from micropay.models.payments import ChargeRequest, Outcome, charge_now, get_merchant, get_payer
from micropay.models.pricing import QUANTITY_MAX, Pricing, minimum_text, parse_pricing, pricing_to_json
from micropay.models.records import Payer, dumps, encode
from micropay.models.rules import period_key

PLAN, USAGE, USAGE_EVENT = "plan", "usage", "usage_event"
PLAN_BY_MERCHANT = "plan_by_merchant"
"""Owner index (``models.index``): a merchant's plans."""
USAGE_EVENT_BY_PAYER = "usage_event_by_payer"
"""A payer's usage events in buckets: id ``{payer_id}:{created_at_ns:020d}:{first event id}``,
body the JSON list of the ids of the events one operation recorded for the payer, in order (a
batch writes one document per payer, not one per event). Read with ``list_payer_events``."""

METRIC_LENGTH_MAX = 64
FUTURE_SKEW_NS = 300 * NS_PER_S
"""How far past the engine's clock an event's timestamp may be (clock skew of the sender)."""
CLOSED_PERIODS_MAX = 1200
PERIOD_LENGTH = 7  # "YYYY-MM"
TRUE_UP_CHUNK = 1024
"""Payers whose true-up operations are queued at once when a period closes."""
NS_PER_DAY = 86_400 * NS_PER_S
_RATED_PLANS_MAX = 4096

Metadata = tuple[tuple[str, str], ...]


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
    metadata: Metadata = ()

    def rates(self) -> Pricing:
        return parse_pricing(self.pricing, self.minimum)


class Usage(NamedTuple):
    """A payer's usage of one plan in one period: charged quantity and amount (the amount
    includes the minimum true-up once the period is closed). A tuple: a metering batch makes
    one per payer and plan it charges, and a frozen dataclass took three times as long to make.
    Written by ``encode_usage`` (as an array of the fields), never by ``encode``."""

    plan_id: str
    period: str
    payer_id: str
    quantity: int = 0
    amount: int = 0
    minimum_charged: int = 0
    minimum_decline_code: str = ""  # the true-up was declined (retried when the period is closed again)


class UsageEvent(NamedTuple):
    """A recorded event (a tuple: one is made per event, so it must be cheap to make)."""

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
    charge_id: str = ""  # the charge that paid this event ("" when it cost nothing or was declined)
    metadata: Metadata = ()


def event_of(row: tuple[Any, ...]) -> UsageEvent:
    """``UsageEvent(*row)`` for a row of all its fields: a third of the cost of the call (0.22
    against 0.54 µs, measured), made once per rated event."""
    return _new_tuple(UsageEvent, row)


_new_tuple = tuple.__new__


def _fields(cls: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The dataclass fields present in ``data`` (fields added later take their defaults)."""
    return {name: data[name] for name in cls.__dataclass_fields__ if name in data}


def _pairs(data: Any) -> Metadata:
    return tuple((str(key), str(value)) for key, value in data)


def decode_plan(body: bytes) -> Plan:
    fields = _fields(Plan, orjson.loads(body))
    fields["closed_periods"] = tuple(fields.get("closed_periods", ()))
    fields["metadata"] = _pairs(fields.get("metadata", ()))
    return Plan(**fields)


USAGE_KEPT_MAX = 16_384
"""Usage records written, kept decoded by their bytes for the next batch to read: in two
generations of up to this many each (the newer and the one before), so that what one batch
wrote (at most one record an event) is still there for the next. Each record is rewritten by
every batch that meters it, so older ones are mostly superseded: kept in one dict of 100,000
they made every look-up slower and were all freed at once when it filled."""
_usage_written: list[dict[bytes, Usage]] = [{}, {}]  # the newer generation, the older


def encode_usage(usage: Usage) -> bytes:
    """A usage record's bytes, the record remembered by them: most batches read back the usage
    the one before wrote (each of a busy payer's plans, every batch), and decoding it again
    cost a tenth of a batch's time. Records are immutable, and bytes always decode to the
    record that made them.

    A JSON array of the fields in order: a metering batch writes thousands, and the array is
    a third of the bytes of the fields' object (50 against 138 in the benchmark) and quicker
    to make (0.35 against 0.6 µs, measured). Records written as the object still read."""
    body = dumps(usage[:])  # a plain tuple of the fields (orjson takes no named tuple)
    newer = _usage_written[0]
    if len(newer) >= USAGE_KEPT_MAX:
        newer = {}
        _usage_written[:] = [newer, _usage_written[0]]
    newer[body] = usage
    return body


def usage_of(body: bytes) -> Usage:
    """``decode_usage``, answered from the records batches wrote when it is one of them."""
    newer, older = _usage_written
    usage = newer.get(body)
    if usage is None:
        usage = older.get(body)
    return decode_usage(body) if usage is None else usage


def decode_usage(body: bytes) -> Usage:
    """A usage record from its array (``encode_usage``) or from the fields' object that
    records were written as before."""
    data = orjson.loads(body)
    if type(data) is list:
        return Usage(*data)
    return Usage(
        data["plan_id"],
        data["period"],
        data["payer_id"],
        data["quantity"],
        data["amount"],
        data.get("minimum_charged", 0),
        data.get("minimum_decline_code", ""),
    )


def encode_event(event: UsageEvent) -> bytes:
    """An event as a JSON array of its fields in order: written once per event, so kept small
    and quick to make (a third of the time and half the bytes of the object form)."""
    return dumps(tuple(event))


def decode_event(body: bytes) -> UsageEvent:
    data = orjson.loads(body)
    if isinstance(data, dict):  # the object form of the first metering release
        return UsageEvent(
            **{name: data[name] for name in UsageEvent._fields if name in data and name != "metadata"},
            metadata=_pairs(data.get("metadata", ())),
        )
    event_id, payer_id, plan_id, quantity, timestamp, period, status, amount, decline, created, charge, metadata = data
    return UsageEvent(
        event_id,
        payer_id,
        plan_id,
        quantity,
        timestamp,
        period,
        status,
        amount,
        decline,
        created,
        charge,
        _pairs(metadata),
    )


_rated_plans: dict[bytes, tuple[Plan, Pricing]] = {}


def plan_and_rates(body: bytes) -> tuple[Plan, Pricing]:
    """A stored plan and its parsed pricing, parsed once per version of the plan's document."""
    found = _rated_plans.get(body)
    if found is None:
        plan = decode_plan(body)
        found = (plan, plan.rates())
        if len(_rated_plans) >= _RATED_PLANS_MAX:
            _rated_plans.clear()
        _rated_plans[body] = found
    return found


def load_plan(ctx: BatchContext, plan_id: str) -> tuple[Plan, Pricing]:
    body = ctx.get_document(PLAN, plan_id)
    if body is None:
        raise NotFound("plan_not_found", f"no plan {plan_id}", "plan_id")
    return plan_and_rates(body)


def get_plan(ctx: BatchContext, plan_id: str) -> Plan:
    return load_plan(ctx, plan_id)[0]


def usage_key(plan_id: str, period: str, payer_id: str) -> str:
    """Usage documents sort by plan and period, so a period's payers can be listed by prefix
    (client ids never hold a ``:``)."""
    return f"{plan_id}:{period}:{payer_id}"


def usage_prefix(plan_id: str, period: str) -> str:
    return f"{plan_id}:{period}:"


def read_usage(ctx: BatchContext, plan_id: str, period: str, payer_id: str) -> Usage:
    body = ctx.get_document(USAGE, usage_key(plan_id, period, payer_id))
    if body is None:
        return Usage(plan_id, period, payer_id)
    return decode_usage(body)


def _bucket_moment(now_ns: int) -> str:
    return f":{now_ns:020d}:"


def put_event_bucket(ctx: BatchContext, payer_id: str, event_ids: list[str]) -> None:
    """Index a payer's events recorded by one operation (in order) under the moment they were
    (``{payer}:{ns:020d}:{first event id}``)."""
    key = payer_id + _bucket_moment(ctx.now_ns) + event_ids[0]
    ctx.put_document(USAGE_EVENT_BY_PAYER, key, dumps(event_ids))


def put_event_buckets(ctx: BatchContext, payer_ids: list[str], event_ids: list[list[str]]) -> None:
    """``put_event_bucket`` of each payer (each with events), as one bulk write."""
    require(len(payer_ids) == len(event_ids) and all(event_ids), "put_event_buckets: one non-empty list a payer")
    moment = _bucket_moment(ctx.now_ns)
    keys = [payer_id + moment + ids[0] for payer_id, ids in zip(payer_ids, event_ids, strict=True)]
    ctx.put_documents(USAGE_EVENT_BY_PAYER, keys, list(map(dumps, event_ids)))


def list_payer_events(
    engine: Engine, payer_id: str, starting_after: str | None, limit: int, page: int = 100
) -> tuple[list[str], bool]:
    """A payer's event ids by the moment they were recorded (events recorded at one moment: by
    operation, in the id order of each one's first event; in order within an operation):
    ``limit`` of them after the event ``starting_after`` (an event of this payer; else the page
    is empty), and whether more follow."""
    prefix = f"{payer_id}:"
    after, skip_until, bucket_prefix = prefix, None, ""
    if starting_after is not None:
        body = engine.document(USAGE_EVENT, starting_after)
        event = None if body is None else decode_event(body)
        if event is None or event.payer_id != payer_id:
            return [], False
        after = f"{prefix}{event.created_at_ns:020d}"
        bucket_prefix = after + ":"
        skip_until = starting_after
    ids: list[str] = []
    while len(ids) <= limit:
        rows = engine.store.list_documents(USAGE_EVENT_BY_PAYER, after, page)
        for key, body in rows:
            if not key.startswith(prefix):
                return ids[:limit], len(ids) > limit
            if skip_until is not None and not key.startswith(bucket_prefix):
                skip_until = None  # past the buckets of the cursor's moment
            for event_id in orjson.loads(body):
                if skip_until is None:
                    ids.append(event_id)
                elif event_id == skip_until:
                    skip_until = None
        if len(rows) < page:
            break
        after = rows[-1][0]
    return ids[:limit], len(ids) > limit


def is_period(text: str) -> bool:
    """``YYYY-MM``, a month of a year from 1970 on."""
    return (
        len(text) == PERIOD_LENGTH
        and text[4] == "-"
        and text[:4].isascii()
        and text[:4].isdigit()
        and text[5:].isascii()
        and text[5:].isdigit()
        and int(text[:4]) >= 1970
        and 1 <= int(text[5:]) <= 12
    )


# ----------------------------------------------------------------- plans
@dataclass(frozen=True, slots=True)
class PlanRequest:
    id: str
    merchant_id: str
    metric: str
    pricing: dict[str, object]
    minimum: str | None = None
    metadata: Metadata = ()


def create_plan(request: PlanRequest) -> Callable[[BatchContext], Outcome[Plan]]:
    def run(ctx: BatchContext) -> Outcome[Plan]:
        rates = parse_pricing(request.pricing, request.minimum)
        canonical = pricing_to_json(rates)
        minimum = minimum_text(rates)
        body = ctx.get_document(PLAN, request.id)
        if body is not None:
            existing = decode_plan(body)
            asked = (request.merchant_id, request.metric, canonical, minimum, request.metadata)
            if (existing.merchant_id, existing.metric, existing.pricing, existing.minimum, existing.metadata) != asked:
                raise Conflict("exists_with_different_fields", f"plan {request.id} exists with other fields", "id")
            return existing, True
        if not 0 < len(request.metric) <= METRIC_LENGTH_MAX:
            raise Refused("invalid_metric", f"metric is 1 to {METRIC_LENGTH_MAX} characters", "metric")
        merchant = get_merchant(ctx, request.merchant_id)
        plan = Plan(
            request.id,
            merchant.id,
            merchant.ledger,
            request.metric,
            canonical,
            minimum,
            ctx.now_ns,
            metadata=request.metadata,
        )
        ctx.put_document(PLAN, plan.id, encode(plan))
        index.put_owner_index(ctx, PLAN_BY_MERCHANT, merchant.id, plan.id)
        return plan, False

    return run


# ----------------------------------------------------------------- rating, shared by both paths
class EventRequest(NamedTuple):
    id: str
    payer_id: str
    plan_id: str
    quantity: int
    timestamp_ns: int | None = None  # None: now
    metadata: Metadata = ()


EventResult = tuple[UsageEvent, bool] | ApiError
"""One event's answer: the event and whether it replays an earlier one, or what refused it."""


def replay_event(existing: UsageEvent, request: EventRequest) -> Outcome[UsageEvent]:
    same = (
        existing.payer_id == request.payer_id
        and existing.plan_id == request.plan_id
        and existing.quantity == request.quantity
        and (request.timestamp_ns is None or existing.timestamp_ns == request.timestamp_ns)
        and existing.metadata == request.metadata
    )
    if not same:
        raise Conflict("exists_with_different_fields", f"event {request.id} exists with other fields", "id")
    return existing, True


def checked_timestamp(request: EventRequest, now_ns: int) -> int:
    """The event's checked timestamp (its quantity checked first)."""
    if not 0 < request.quantity <= QUANTITY_MAX:
        raise Refused("invalid_quantity", f"quantity is 1 to {QUANTITY_MAX}", "quantity")
    timestamp_ns = now_ns if request.timestamp_ns is None else request.timestamp_ns
    if timestamp_ns < 0:
        raise Refused("invalid_timestamp", "the event's timestamp is before 1970", "timestamp")
    if timestamp_ns > now_ns + FUTURE_SKEW_NS:
        raise Refused("timestamp_in_future", "the event's timestamp is later than now", "timestamp")
    return timestamp_ns


def check_plan_and_payer(plan: Plan, payer: Payer, period: str) -> None:
    if payer.ledger != plan.ledger:
        raise Refused("ledger_mismatch", "the payer and the plan's merchant are on different ledgers", "payer_id")
    if period in plan.closed_periods:
        raise Refused("period_closed", f"period {period} of plan {plan.id} is closed", "timestamp")


def quantity_after(before: int, quantity: int, rates: Pricing) -> int:
    after = before + quantity
    if after > rates.capacity:
        raise Refused("quantity_over_maximum", f"the plan prices at most {rates.capacity} units per period", "quantity")
    return after


def usage_charge_id(event_id: str) -> str:
    """The charge that pays an event (and, in a batch, the later events of its group)."""
    return f"usage:{event_id}"


def record_event(request: EventRequest) -> Callable[[BatchContext], Outcome[UsageEvent]]:
    """Rate and charge one usage event (or replay it): the reference path."""

    def run(ctx: BatchContext) -> Outcome[UsageEvent]:
        body = ctx.get_document(USAGE_EVENT, request.id)
        if body is not None:
            return replay_event(decode_event(body), request)
        timestamp_ns = checked_timestamp(request, ctx.now_ns)
        plan, rates = load_plan(ctx, request.plan_id)
        payer = get_payer(ctx, request.payer_id)
        period = period_key("month", timestamp_ns)
        check_plan_and_payer(plan, payer, period)
        usage = read_usage(ctx, plan.id, period, payer.id)
        after = quantity_after(usage.quantity, request.quantity, rates)
        amount = rates.price_floor(after) - rates.price_floor(usage.quantity)
        status, decline_code, charge_id = "charged", "", ""
        if payer.status != "active":
            # Even an event that would cost nothing now: its units would be paid for later.
            status, decline_code, amount = "declined", "payer_suspended", 0
        elif amount:
            check_amount(amount)
            charge_id = usage_charge_id(request.id)
            try:
                charge_now(ctx, ChargeRequest(charge_id, payer.id, plan.merchant_id, amount, plan.metric, kind="usage"))
            except PaymentDeclined as declined:
                # charge_now declines before it moves or writes anything, so nothing needs undoing.
                status, decline_code, amount, charge_id = "declined", declined.code, 0, ""
        event = UsageEvent(
            request.id,
            payer.id,
            plan.id,
            request.quantity,
            timestamp_ns,
            period,
            status,
            amount,
            decline_code,
            ctx.now_ns,
            charge_id,
            request.metadata,
        )
        if status == "charged":
            updated = usage._replace(quantity=after, amount=usage.amount + amount)
            ctx.put_document(USAGE, usage_key(plan.id, period, payer.id), encode_usage(updated))
        ctx.put_document(USAGE_EVENT, event.id, encode_event(event))
        put_event_bucket(ctx, payer.id, [event.id])
        return event, False

    return run


# ----------------------------------------------------------------- closing a period
def close_period(plan_id: str, period: str) -> Callable[[BatchContext], Plan]:
    """Close a plan's period: later events for it are refused (``period_closed``). Closing a
    closed period again answers the plan as it is. The minimum is charged by ``true_up``."""

    def run(ctx: BatchContext) -> Plan:
        plan = get_plan(ctx, plan_id)
        if period in plan.closed_periods:
            return plan
        if not is_period(period):
            raise Refused("invalid_period", "a period is a month written YYYY-MM", "period")
        if period >= period_key("month", ctx.now_ns):
            raise Refused("period_not_over", f"period {period} has not ended yet", "period")
        if len(plan.closed_periods) >= CLOSED_PERIODS_MAX:
            raise Refused("too_many_closed_periods", "this plan has closed too many periods", "period")
        closed = replace(plan, closed_periods=(*plan.closed_periods, period))
        ctx.put_document(PLAN, plan.id, encode(closed))
        return closed

    return run


def minimum_charge_id(plan_id: str, period: str, payer_id: str) -> str:
    """The true-up charge of one payer, plan and period (a digest: the ids would not fit a
    transfer id written out)."""
    digest = hashlib.sha256(usage_key(plan_id, period, payer_id).encode()).hexdigest()[:32]
    return f"usage_minimum:{digest}"


def true_up(plan_id: str, period: str, payer_id: str) -> Callable[[BatchContext], Usage]:
    """Charge a payer the rest of the plan's minimum for a closed period, once. A declined
    true-up is noted on the usage (``minimum_decline_code``) and tried again by the next call."""

    def run(ctx: BatchContext) -> Usage:
        plan, rates = load_plan(ctx, plan_id)
        if period not in plan.closed_periods:
            raise Refused("period_open", f"period {period} of plan {plan.id} is not closed", "period")
        usage = read_usage(ctx, plan.id, period, payer_id)
        short = rates.minimum_floor() - usage.amount
        if usage.minimum_charged or short <= 0 or not usage.quantity:
            return usage
        request = ChargeRequest(
            minimum_charge_id(plan.id, period, payer_id),
            payer_id,
            plan.merchant_id,
            short,
            f"{plan.metric} minimum {period}",
            kind="usage",
        )
        try:
            charge_now(ctx, request)
        except PaymentDeclined as declined:
            usage = usage._replace(minimum_decline_code=declined.code)
        else:
            usage = usage._replace(amount=usage.amount + short, minimum_charged=short, minimum_decline_code="")
        ctx.put_document(USAGE, usage_key(plan.id, period, payer_id), encode_usage(usage))
        return usage

    return run


def usage_payers(engine: Engine, plan_id: str, period: str, page: int = 1000) -> list[str]:
    """The payers with usage of a plan in a period (committed), listed by the usage documents' prefix."""
    prefix = usage_prefix(plan_id, period)
    payers: list[str] = []
    after = prefix
    while True:
        rows = engine.store.list_documents(USAGE, after, page)
        for document_id, _ in rows:
            if not document_id.startswith(prefix):
                return payers
            payers.append(document_id[len(prefix) :])
        if len(rows) < page:
            return payers
        after = rows[-1][0]


@dataclass(frozen=True, slots=True)
class PeriodClose:
    """What closing a period did: the plan, each payer's usage after the true-up, and the
    payers whose true-up failed with an error other than a decline."""

    plan: Plan
    period: str
    usages: tuple[Usage, ...]
    errors: tuple[tuple[str, str], ...] = ()  # (payer id, error code)

    @property
    def minimum_charged(self) -> int:
        return sum(usage.minimum_charged for usage in self.usages)

    @property
    def declined(self) -> tuple[Usage, ...]:
        return tuple(usage for usage in self.usages if usage.minimum_decline_code)


def _close_result(plan: Plan, period: str, payers: list[str], answers: list[Usage | BaseException]) -> PeriodClose:
    usages: list[Usage] = []
    errors: list[tuple[str, str]] = []
    for payer_id, answer in zip(payers, answers, strict=True):
        if isinstance(answer, ApiError):
            errors.append((payer_id, answer.code))
        elif isinstance(answer, BaseException):
            raise answer
        else:
            usages.append(answer)
    return PeriodClose(plan, period, tuple(usages), tuple(errors))


def close_and_true_up(engine: Engine, plan_id: str, period: str) -> PeriodClose:
    """Close the period, then true up every payer who used the plan in it (each in its own
    operation, queued together). Safe to run again: it retries what did not go through."""
    plan = engine.call(close_period(plan_id, period))
    payers = usage_payers(engine, plan_id, period)
    answers: list[Usage | BaseException] = []
    for start in range(0, len(payers), TRUE_UP_CHUNK):
        futures = [
            engine.submit(true_up(plan_id, period, payer_id)) for payer_id in payers[start : start + TRUE_UP_CHUNK]
        ]
        for future in futures:
            try:
                answers.append(future.result())
            except ApiError as error:
                answers.append(error)
    return _close_result(plan, period, payers, answers)


async def close_and_true_up_async(engine: Engine, plan_id: str, period: str) -> PeriodClose:
    plan = await engine.call_async(close_period(plan_id, period))
    payers = await asyncio.to_thread(usage_payers, engine, plan_id, period)
    answers: list[Usage | BaseException] = []
    for start in range(0, len(payers), TRUE_UP_CHUNK):
        chunk = payers[start : start + TRUE_UP_CHUNK]
        futures = [asyncio.wrap_future(engine.submit(true_up(plan_id, period, payer_id))) for payer_id in chunk]
        answers.extend(await asyncio.gather(*futures, return_exceptions=True))
    return _close_result(plan, period, payers, answers)
