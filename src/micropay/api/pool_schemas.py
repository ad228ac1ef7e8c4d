"""Request and response models of collaborative pools: publishers, sites, content, pools,
memberships, reads, distributions and earnings (strict, like ``api.schemas``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from micropay.api.schemas import Id, LedgerCode, MetadataIn, StrictModel
from micropay.api.timestamps import check_rfc3339
from micropay.ledger.limits import AMOUNT_MAX
from micropay.models.pools import READ_WINDOW_S_DEFAULT

BPS_BOUND = 10**6
"""Bound on each ``split_bps`` entry in requests (so it always fits); the pool rules refuse a split
whose entries are negative or do not add up to 10000 (``invalid_split``)."""
READ_WINDOW_S_BOUND = 10**9


Timestamp = Annotated[
    str,
    StringConstraints(min_length=10, max_length=64),
    AfterValidator(check_rfc3339),
    Field(json_schema_extra={"format": "date-time"}, description="RFC 3339, e.g. `2026-05-01T12:00:00Z`."),
]
Period = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9]{4}-(0[1-9]|1[0-2])$"),
    Field(description="A UTC calendar month, `YYYY-MM`."),
]
IdIn = Annotated[Id | None, Field(description="Idempotency key; the server makes one if omitted.")]
Bps = Annotated[int, Field(ge=-BPS_BOUND, le=BPS_BOUND)]
Role = Literal["owner", "host", "referrer", "platform"]


# ----------------------------------------------------------------- requests
class PublisherIn(StrictModel):
    id: IdIn = None
    ledger: LedgerCode
    metadata: MetadataIn = Field(default_factory=dict)


class SiteIn(StrictModel):
    id: IdIn = None
    publisher_id: Id
    metadata: MetadataIn = Field(default_factory=dict)


class ContentIn(StrictModel):
    id: IdIn = None
    publisher_id: Id
    metadata: MetadataIn = Field(default_factory=dict)


class SplitIn(StrictModel):
    owner: Bps
    host: Bps
    referrer: Bps
    platform: Bps


class PoolIn(StrictModel):
    id: IdIn = None
    ledger: LedgerCode
    price: Annotated[int, Field(ge=-AMOUNT_MAX, le=AMOUNT_MAX, description="Per member per month, minor units.")]
    split_bps: Annotated[SplitIn, Field(description="Basis points per role; they add up to 10000.")]
    unread: Literal["carry", "share"] = Field(
        default="carry",
        description="Fees of members who read nothing: `carry` to the next distribution, or `share` at once.",
    )
    read_window_s: Annotated[int, Field(ge=-READ_WINDOW_S_BOUND, le=READ_WINDOW_S_BOUND)] = Field(
        default=READ_WINDOW_S_DEFAULT,
        description="A read of the same content by the same member less than this after its previous one is a repeat.",
    )
    metadata: MetadataIn = Field(default_factory=dict)


class MemberIn(StrictModel):
    payer_id: Id | None = Field(default=None, description="The payer joining (a payer key: itself, the default).")


class ReadIn(StrictModel):
    id: IdIn = None
    pool_id: Id
    payer_id: Id
    content_id: Id
    host_site_id: Id
    referrer_site_id: Id | None = None
    timestamp: Timestamp
    metadata: MetadataIn = Field(default_factory=dict)


class DistributionIn(StrictModel):
    id: IdIn = Field(
        default=None,
        description="Optional idempotency key: the same id again answers the distribution (200); "
        "without it, a period distributed again is 409 `already_distributed`.",
    )
    period: Period


# ----------------------------------------------------------------- responses (documentation)
class PublisherOut(BaseModel):
    id: str
    ledger: str
    balance: int = Field(description="Earnings held for the publisher (its account `publisher:{id}`).")
    created_at: datetime
    metadata: dict[str, str]


class SiteOut(BaseModel):
    id: str
    publisher_id: str
    created_at: datetime
    metadata: dict[str, str]


class SplitOut(BaseModel):
    owner: int
    host: int
    referrer: int
    platform: int


class MembershipOut(BaseModel):
    pool_id: str
    payer_id: str
    period: str
    fee: int
    created_at: datetime


class PoolOut(BaseModel):
    id: str
    ledger: str
    price: int
    split_bps: SplitOut
    unread: Literal["carry", "share"]
    read_window_s: int
    balance: int = Field(description="What the pool account holds: undistributed fees.")
    carried: int = Field(description="Unread fees waiting for the next distribution.")
    distributed_periods: list[str]
    created_at: datetime
    metadata: dict[str, str]


class PoolMemberOut(PoolOut):
    membership: MembershipOut


class ReadOut(BaseModel):
    id: str
    pool_id: str
    payer_id: str
    content_id: str
    host_site_id: str
    referrer_site_id: str | None
    timestamp: datetime
    period: str
    counted: bool
    reason: Literal["repeat", "own_content"] | None = Field(description="Why the read does not count.")
    created_at: datetime
    metadata: dict[str, str]


class LineOut(BaseModel):
    recipient_id: str = Field(description='A publisher id, or `"platform"` for the platform line.')
    role: Role
    amount: int


class DistributionOut(BaseModel):
    id: str
    pool_id: str
    period: str
    total: int
    lines: list[LineOut]
    collected: int
    carried_in: int
    carried_out: int
    members: int
    members_paid: int
    created_at: datetime


class MemberPartOut(BaseModel):
    payer_id: str
    role: Role
    amount: int


class NetworkPartOut(BaseModel):
    role: Role
    amount: int


class PoolEarningsOut(BaseModel):
    pool_id: str
    period: str
    total: int
    members: list[MemberPartOut] = Field(description="What each member's fee paid the publisher, per role.")
    network: list[NetworkPartOut] = Field(description="Its part of carried or shared unread fees, per role.")


class EarningsOut(BaseModel):
    publisher_id: str
    period: str | None
    total: int
    balance: int
    data: list[PoolEarningsOut]
    has_more: bool


class PublisherList(BaseModel):
    data: list[PublisherOut]
    has_more: bool


class SiteList(BaseModel):
    data: list[SiteOut]
    has_more: bool


class PoolList(BaseModel):
    data: list[PoolOut]
    has_more: bool


class MembershipList(BaseModel):
    data: list[MembershipOut]
    has_more: bool


class ReadList(BaseModel):
    data: list[ReadOut]
    has_more: bool


class DistributionList(BaseModel):
    data: list[DistributionOut]
    has_more: bool
