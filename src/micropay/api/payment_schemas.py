"""Request and response models of the payment endpoints: payers, top-ups, merchants, charges,
refunds, vouchers, passes and post-pay statements.

Requests are strict (no floats where integers go, no unknown fields) and every number is bounded
so it fits 64 bits; refusals the business rules own (zero or negative amounts, unknown ledgers,
bad fees) reach the models, which answer them with a result code (422).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from micropay.api.schemas import Amount, CreditLimit, Id, LedgerCode, MetadataIn, StrictModel
from micropay.api.timestamps import check_rfc3339, rfc3339_ns
from micropay.ledger.limits import AMOUNT_MAX
from micropay.models.passes import DURATION_S_MAX
from micropay.models.payments import (
    CHARGES_PER_OPERATION_MAX,
    DESCRIPTION_LENGTH_MAX,
    HOLD_DAYS_MAX,
    SPEND_CAPS_MAX,
)
from micropay.models.promo import CODE_LENGTH_MAX

RAIL_NAME_LENGTH_MAX = 32
DURATION_S_BOUND = 10**9
"""Bound on ``duration_s`` in requests (so it always fits); the pass rules refuse past ``DURATION_S_MAX``."""


Timestamp = Annotated[
    str,
    StringConstraints(min_length=10, max_length=64),
    Field(json_schema_extra={"format": "date-time"}, description="RFC 3339, e.g. `2026-05-01T00:00:00Z`."),
]
"""A point in time as the client writes it; ``timestamp_ns`` turns it into ns."""


timestamp_ns = rfc3339_ns

CheckedTimestamp = Annotated[Timestamp, AfterValidator(check_rfc3339)]
NonNegative = Annotated[int, Field(ge=0, le=AMOUNT_MAX)]
RailName = Annotated[str, StringConstraints(min_length=1, max_length=RAIL_NAME_LENGTH_MAX, pattern=r"^[a-z0-9_]+$")]
Description = Annotated[str, StringConstraints(max_length=DESCRIPTION_LENGTH_MAX)]
VoucherCode = Annotated[str, StringConstraints(min_length=1, max_length=CODE_LENGTH_MAX, pattern=r"^[\x21-\x7e]+$")]
PayerMode = Literal["prepay", "postpay", "hybrid"]
PayerStatus = Literal["active", "suspended"]
CapPeriod = Literal["day", "month"]
IdIn = Annotated[Id | None, Field(description="Idempotency key; the server makes one if omitted.")]
SimulateFailure = Annotated[
    bool, Field(description="Make the simulated rail decline this collection (tests and demos).")
]


# ----------------------------------------------------------------- requests
class SpendCapIn(StrictModel):
    period: CapPeriod
    amount: NonNegative


SpendCaps = Annotated[list[SpendCapIn], Field(max_length=SPEND_CAPS_MAX)]


class PayerIn(StrictModel):
    id: IdIn = None
    ledger: LedgerCode
    mode: PayerMode
    credit_limit: CreditLimit = 0
    spend_caps: SpendCaps = Field(default_factory=list)
    metadata: MetadataIn = Field(default_factory=dict)


class PayerPatch(StrictModel):
    credit_limit: CreditLimit | None = None
    spend_caps: SpendCaps | None = None
    status: PayerStatus | None = None


class TopupIn(StrictModel):
    id: IdIn = None
    amount: Amount
    rail: RailName
    simulate_failure: SimulateFailure = False
    metadata: MetadataIn = Field(default_factory=dict)


class FeeIn(StrictModel):
    percent_bps: Annotated[int, Field(ge=0, le=10_000)] = 0
    fixed: NonNegative = 0


class PayoutIn(StrictModel):
    threshold: NonNegative = 0
    hold_days: Annotated[int, Field(ge=0, le=HOLD_DAYS_MAX)] = 0


class MerchantIn(StrictModel):
    id: IdIn = None
    ledger: LedgerCode
    fee: FeeIn = Field(default_factory=FeeIn)
    payout: PayoutIn = Field(default_factory=PayoutIn)
    metadata: MetadataIn = Field(default_factory=dict)


class ChargeIn(StrictModel):
    id: IdIn = None
    payer_id: Id
    merchant_id: Id
    amount: Amount
    description: Description = ""
    metadata: MetadataIn = Field(default_factory=dict)


class ChargeBatchIn(StrictModel):
    charges: Annotated[list[ChargeIn], Field(min_length=1, max_length=CHARGES_PER_OPERATION_MAX)]


class RefundIn(StrictModel):
    id: IdIn = None
    amount: Amount | None = Field(default=None, description="Omitted: all that is left of the charge.")
    metadata: MetadataIn = Field(default_factory=dict)


class VoucherIn(StrictModel):
    code: VoucherCode = Field(description="The secret the payer redeems (stored only hashed); the idempotency key.")
    ledger: LedgerCode
    amount: Amount
    expires_at: CheckedTimestamp


class RedeemIn(StrictModel):
    code: VoucherCode


class PassIn(StrictModel):
    id: IdIn = None
    payer_id: Id
    merchant_id: Id
    price: Amount
    duration_s: Annotated[
        int, Field(ge=-DURATION_S_BOUND, le=DURATION_S_BOUND, description=f"1 to {DURATION_S_MAX} seconds.")
    ]
    metadata: MetadataIn = Field(default_factory=dict)


class StatementCloseIn(StrictModel):
    period_end: CheckedTimestamp | None = Field(
        default=None, description="Bill usage before this moment; omitted: now."
    )


class SettleIn(StrictModel):
    rail: RailName
    simulate_failure: SimulateFailure = False


# ----------------------------------------------------------------- responses (documentation)
class WalletOut(BaseModel):
    ledger: str
    balance: int = Field(description="Paid money in the wallet.")
    promo_balance: int = Field(description="Unexpired promo credit.")
    available: int = Field(description="`balance + promo_balance - held` (held: pending debits).")


class OwnWalletOut(BaseModel):
    balance: int
    promo_balance: int
    available: int


class TabOut(BaseModel):
    owed: int
    credit_limit: int


class CapOut(BaseModel):
    period: CapPeriod
    amount: int
    used: int = Field(description="Spent in the current UTC day or month.")


class PayerOut(BaseModel):
    id: str
    ledger: str
    mode: PayerMode
    status: PayerStatus
    wallet: OwnWalletOut
    wallets: list[WalletOut]
    tab: TabOut
    caps: list[CapOut]
    metadata: dict[str, str]
    created_at: dt.datetime


class TopupOut(BaseModel):
    id: str
    payer_id: str
    ledger: str
    amount: int
    rail: str
    fee: int = Field(description="The rail's fee: the platform's expense, never taken from the wallet.")
    status: Literal["pending", "succeeded", "failed"]
    failure_code: str | None
    settles_at: dt.datetime | None
    metadata: dict[str, str]
    created_at: dt.datetime


class FeeOut(BaseModel):
    percent_bps: int
    fixed: int


class PayoutOut(BaseModel):
    threshold: int
    hold_days: int


class MerchantOut(BaseModel):
    id: str
    ledger: str
    fee: FeeOut
    payout: PayoutOut
    balance: int
    available: int = Field(description="`balance` less earnings still on hold (`payout.hold_days`).")
    metadata: dict[str, str]
    created_at: dt.datetime


class SourcesOut(BaseModel):
    promo: int
    wallet: int
    tab: int


class ChargeOut(BaseModel):
    id: str
    payer_id: str
    merchant_id: str
    ledger: str
    amount: int
    platform_fee: int
    merchant_amount: int
    status: Literal["succeeded"]
    description: str
    kind: str = Field(description="`charge`, or what made it: `pass`, `usage`...")
    sources: SourcesOut = Field(description="Where the amount came from.")
    amount_refunded: int
    refunds: list[str]
    metadata: dict[str, str]
    created_at: dt.datetime


class ChargeBatchResultOut(BaseModel):
    index: int
    id: str
    result: str = Field(
        description="`ok` (made), `exists` (a replay) or the refusal's code, e.g. `insufficient_funds`."
    )
    charge: ChargeOut | None = Field(description="The charge, when `ok` or `exists`.")


class ChargeBatchOut(BaseModel):
    results: list[ChargeBatchResultOut]


class RefundOut(BaseModel):
    id: str
    charge_id: str
    amount: int
    status: Literal["succeeded"]
    sources: SourcesOut = Field(description="Where the amount went back to.")
    metadata: dict[str, str]
    created_at: dt.datetime


class VoucherOut(BaseModel):
    id: str
    ledger: str
    amount: int
    expires_at: dt.datetime
    redeemed: bool
    redeemed_by: str | None
    redeemed_at: dt.datetime | None
    created_at: dt.datetime


class RedeemOut(PayerOut):
    voucher: VoucherOut


class PassOut(BaseModel):
    id: str
    payer_id: str
    merchant_id: str
    price: int
    duration_s: int
    charge_id: str
    valid_from: dt.datetime
    valid_until: dt.datetime
    active: bool
    metadata: dict[str, str]
    created_at: dt.datetime


StatementStatus = Literal["open", "processing", "paid", "past_due", "failed"]


class StatementOut(BaseModel):
    id: str
    payer_id: str
    ledger: str
    amount_due: int
    status: StatementStatus = Field(
        description="`open`, `processing`, `paid` or `past_due`; a settle answer whose collection failed says `failed`."
    )
    period_end: dt.datetime
    attempts: int
    rail: str | None
    failure_code: str | None
    paid_at: dt.datetime | None
    created_at: dt.datetime


class PayerList(BaseModel):
    data: list[PayerOut]
    has_more: bool


class TopupList(BaseModel):
    data: list[TopupOut]
    has_more: bool


class MerchantList(BaseModel):
    data: list[MerchantOut]
    has_more: bool


class ChargeList(BaseModel):
    data: list[ChargeOut]
    has_more: bool


class RefundList(BaseModel):
    data: list[RefundOut]
    has_more: bool


class VoucherList(BaseModel):
    data: list[VoucherOut]
    has_more: bool


class PassList(BaseModel):
    data: list[PassOut]
    has_more: bool


class StatementList(BaseModel):
    data: list[StatementOut]
    has_more: bool
