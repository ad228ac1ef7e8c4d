"""Request and response models of the metering endpoints (plans, usage events, usage), and how
their records are rendered.

Prices are decimal strings in and out (``"0.0004"``); a float where a price, quantity or size
goes is a 400. Shapes are checked here (400); what the pricing rules own (tiers in increasing
order, prices within bounds, quantities of at least one unit) is refused by the models (422).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import TypedDict

from micropay.api.payment_schemas import Timestamp
from micropay.api.schemas import Id, MetadataIn, StrictModel
from micropay.api.serialise import rfc3339
from micropay.ledger.limits import BATCH_SIZE_MAX
from micropay.models.metering import METRIC_LENGTH_MAX, Plan, Usage, UsageEvent
from micropay.models.pricing import PRICE_PATTERN, QUANTITY_MAX, TIERS_MAX

QUANTITY_BOUND = 10**15
"""Bound on quantities in requests (so they always fit 64 bits); the rules refuse past ``QUANTITY_MAX``."""
PERIOD_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"

Price = Annotated[
    str,
    StringConstraints(pattern=PRICE_PATTERN, max_length=32),
    Field(description='A decimal string in minor units, may be a fraction of one: `"0.0004"`.'),
]
IdIn = Annotated[Id | None, Field(description="Idempotency key; the server makes one if omitted.")]
Quantity = Annotated[int, Field(ge=-QUANTITY_BOUND, le=QUANTITY_BOUND, description="Units: a positive integer.")]
Metric = Annotated[str, StringConstraints(min_length=1, max_length=METRIC_LENGTH_MAX)]
UpTo = Annotated[int, Field(ge=1, le=QUANTITY_MAX)]
Minimum = Annotated[Price | None, Field(description="Least charged per payer and period (trued up at close).")]


# ----------------------------------------------------------------- requests
class TierIn(StrictModel):
    up_to: UpTo | None = Field(
        default=None, description="Last unit of the period's quantity in this tier; null: no end (the last tier)."
    )
    unit_price: Price
    flat: Price | None = Field(default=None, description="Charged once, when the first unit lands in the tier.")


class PerUnitIn(StrictModel):
    model: Literal["per_unit"]
    unit_price: Price
    minimum: Minimum = None


class GraduatedIn(StrictModel):
    model: Literal["graduated"]
    tiers: Annotated[list[TierIn], Field(min_length=1, max_length=TIERS_MAX)]
    minimum: Minimum = None


class PackageIn(StrictModel):
    model: Literal["package"]
    package_size: UpTo
    package_price: Price = Field(description="Per package; a partial package counts whole.")
    minimum: Minimum = None


PricingIn = Annotated[PerUnitIn | GraduatedIn | PackageIn, Field(discriminator="model")]


class PlanIn(StrictModel):
    id: IdIn = None
    merchant_id: Id | None = Field(default=None, description="Required for admin; a merchant key: itself.")
    metric: Metric = Field(description='What is counted, e.g. `"api_calls"`.')
    pricing: PricingIn
    minimum: Minimum = None
    metadata: MetadataIn = Field(default_factory=dict)


class UsageEventIn(TypedDict):
    """One usage event. A TypedDict, not a model: a batch validates 8190 of them at C speed."""

    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")  # type: ignore[misc]

    id: NotRequired[IdIn]
    payer_id: Id
    plan_id: Id
    quantity: Quantity
    timestamp: NotRequired[
        Annotated[Timestamp | None, Field(description="When the usage happened (RFC 3339); omitted: now.")]
    ]
    metadata: NotRequired[MetadataIn]


class UsageBatchIn(StrictModel):
    events: Annotated[list[UsageEventIn], Field(min_length=1, max_length=BATCH_SIZE_MAX)]


# ----------------------------------------------------------------- responses (documentation)
class TierOut(BaseModel):
    up_to: int | None
    unit_price: str
    flat: str


class PricingOut(BaseModel):
    model: Literal["per_unit", "graduated", "package"]
    unit_price: str | None = None
    tiers: list[TierOut] | None = None
    package_size: int | None = None
    package_price: str | None = None
    minimum: str


class PlanOut(BaseModel):
    id: str
    merchant_id: str
    ledger: str
    metric: str
    pricing: PricingOut
    minimum: str = Field(description='Per payer and period, a decimal string ("0": none).')
    closed_periods: list[str]
    metadata: dict[str, str]
    created_at: datetime


class PlanList(BaseModel):
    data: list[PlanOut]
    has_more: bool


class UsageEventOut(BaseModel):
    id: str
    payer_id: str
    plan_id: str
    quantity: int
    timestamp: datetime
    period: str
    status: Literal["charged", "declined"]
    amount: int = Field(description="What this event was charged (0 when declined or still a fraction).")
    decline_code: str | None
    charge_id: str | None = Field(description="The charge that paid it (a batch's events of one plan share one).")
    metadata: dict[str, str]
    created_at: datetime


class UsageEventList(BaseModel):
    data: list[UsageEventOut]
    has_more: bool


class UsageBatchResultOut(BaseModel):
    index: int
    id: str
    result: str = Field(
        description="`ok` (charged), `exists` (a replay), a decline code (recorded as declined) or a refusal code."
    )
    amount: int
    status: Literal["charged", "declined"] | None = Field(description="null when the event was refused.")
    decline_code: str | None


class UsageBatchOut(BaseModel):
    results: list[UsageBatchResultOut]


class UsageOut(BaseModel):
    payer_id: str
    plan_id: str
    period: str
    ledger: str
    quantity: int = Field(description="Units charged (declined events do not count).")
    amount: int = Field(description="What they cost: floor(price(quantity)), plus the minimum true-up once closed.")
    minimum_charged: int
    closed: bool


class PayerMinimumOut(BaseModel):
    payer_id: str
    decline_code: str


class PeriodCloseOut(BaseModel):
    plan_id: str
    period: str
    status: Literal["closed"]
    payers: int = Field(description="Payers with usage in the period.")
    minimum_charged: int = Field(description="True-up charged to payers below the minimum (in total, ever).")
    declined: list[PayerMinimumOut] = Field(description="True-ups declined; closing again retries them.")


# ----------------------------------------------------------------- rendering
def render_pricing(plan: Plan) -> dict[str, Any]:
    return {**plan.pricing, "minimum": plan.minimum}


def render_plan(plan: Plan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "merchant_id": plan.merchant_id,
        "ledger": plan.ledger,
        "metric": plan.metric,
        "pricing": render_pricing(plan),
        "minimum": plan.minimum,
        "closed_periods": list(plan.closed_periods),
        "metadata": dict(plan.metadata),
        "created_at": rfc3339(plan.created_at_ns),
    }


def render_event(event: UsageEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "payer_id": event.payer_id,
        "plan_id": event.plan_id,
        "quantity": event.quantity,
        "timestamp": rfc3339(event.timestamp_ns),
        "period": event.period,
        "status": event.status,
        "amount": event.amount,
        "decline_code": event.decline_code or None,
        "charge_id": event.charge_id or None,
        "metadata": dict(event.metadata),
        "created_at": rfc3339(event.created_at_ns),
    }


def render_usage(usage: Usage, plan: Plan) -> dict[str, Any]:
    return {
        "payer_id": usage.payer_id,
        "plan_id": usage.plan_id,
        "period": usage.period,
        "ledger": plan.ledger,
        "quantity": usage.quantity,
        "amount": usage.amount,
        "minimum_charged": usage.minimum_charged,
        "closed": usage.period in plan.closed_periods,
    }
