"""Helpers for the metering tests: plans, events and usage over a models_testkit World.

Imported by the tests in this directory (the conftest puts the model tests' kit on sys.path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from models_testkit import World

from micropay.errors import ApiError
from micropay.models import metering, metering_batch, payments
from micropay.models.metering import EventRequest, EventResult, Plan, PlanRequest, Usage, UsageEvent
from micropay.models.records import decode_charge
from micropay.models.tab import read_accrual

PER_UNIT = {"model": "per_unit", "unit_price": "0.0004"}


class Meter:
    """Shorthands for the metering operations, each through ``engine.call``."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.serial = 0

    @property
    def engine(self) -> Any:
        return self.world.engine

    def plan(
        self,
        plan_id: str,
        merchant_id: str,
        pricing: dict[str, Any],
        *,
        minimum: str | None = None,
        metric: str = "api_calls",
    ) -> Plan:
        plan, _ = self.world.call(metering.create_plan(PlanRequest(plan_id, merchant_id, metric, pricing, minimum)))
        return plan

    def next_id(self) -> str:
        self.serial += 1
        return f"ev{self.serial}"

    def request(
        self, payer_id: str, plan_id: str, quantity: int, *, event_id: str | None = None, at_ns: int | None = None
    ) -> EventRequest:
        return EventRequest(event_id or self.next_id(), payer_id, plan_id, quantity, at_ns)

    def event(
        self, payer_id: str, plan_id: str, quantity: int, *, event_id: str | None = None, at_ns: int | None = None
    ) -> UsageEvent:
        """Record one event through the one-by-one path; return the event (new or replayed)."""
        record, _ = self.world.call(
            metering.record_event(self.request(payer_id, plan_id, quantity, event_id=event_id, at_ns=at_ns))
        )
        return record

    def record(self, request: EventRequest) -> tuple[UsageEvent, bool]:
        return self.world.call(metering.record_event(request))

    def batch(self, requests: Sequence[EventRequest]) -> list[EventResult]:
        """Record events through the batch path (one operation per call)."""
        return metering_batch.rate_events(self.engine, list(requests))

    def one_by_one(self, requests: Sequence[EventRequest]) -> list[EventResult]:
        """Record events through the reference path, one operation (and engine batch) each."""
        results: list[EventResult] = []
        for request in requests:
            try:
                results.append(self.record(request))
            except ApiError as error:
                results.append(error)
        return results

    def usage(self, payer_id: str, plan_id: str, period: str) -> Usage:
        return self.world.call(lambda ctx: metering.read_usage(ctx, plan_id, period, payer_id))

    def read_event(self, event_id: str) -> UsageEvent:
        body = self.engine.document(metering.USAGE_EVENT, event_id)
        assert body is not None, event_id
        return metering.decode_event(body)

    def read_plan(self, plan_id: str) -> Plan:
        return self.world.call(lambda ctx: metering.get_plan(ctx, plan_id))

    def close(self, plan_id: str, period: str) -> metering.PeriodClose:
        return metering.close_and_true_up(self.engine, plan_id, period)

    def charge_amount(self, charge_id: str) -> int:
        body = self.engine.document(payments.CHARGE, charge_id)
        assert body is not None, charge_id
        return decode_charge(body).amount

    def accrued(self, payer_id: str) -> dict[int, int]:
        return dict(self.world.call(lambda ctx: read_accrual(ctx, payer_id)).minutes)


def result_view(result: EventResult) -> tuple[Any, ...]:
    """What a caller sees of one event's result, comparable across the two paths."""
    if isinstance(result, ApiError):
        return ("error", type(result).__name__, result.code)
    event, replayed = result
    return (
        "event",
        replayed,
        event.id,
        event.payer_id,
        event.plan_id,
        event.quantity,
        event.timestamp_ns,
        event.period,
        event.status,
        event.amount,
        event.decline_code,
    )
