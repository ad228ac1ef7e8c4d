"""The models' records: plain immutable data, stored as JSON documents beside the ledger.

A record never holds money: balances live in ledger accounts. Records hold settings (a payer's
mode and caps) and what the ledger cannot say by itself (which promo grant a charge spent, what
a refund returned where).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from micropay.models.rules import PromoGrant, Sources


@dataclass(frozen=True, slots=True)
class SpendCap:
    period: str  # "day" | "month" (UTC calendar periods)
    amount: int


@dataclass(frozen=True, slots=True)
class Payer:
    id: str
    ledger: str
    mode: str  # "prepay" | "postpay" | "hybrid"
    status: str  # "active" | "suspended"
    credit_limit: int
    spend_caps: tuple[SpendCap, ...]
    created_at_ns: int
    ledgers: tuple[str, ...] = ()  # other ledgers holding a wallet of this payer (exchange)
    suspended_reason: str = ""  # "" | "past_due" | "admin"


@dataclass(frozen=True, slots=True)
class PayerPromo:
    """A payer's promo grants in one ledger (the promo account holds their money)."""

    payer_id: str
    ledger: str
    grants: tuple[PromoGrant, ...] = ()
    expiries: int = 0  # how many expiry sweeps moved credit (numbers their transfers)


@dataclass(frozen=True, slots=True)
class CapUsage:
    """What a payer spent per period key (``YYYY-MM-DD``, ``YYYY-MM``); only current keys are kept."""

    payer_id: str
    used: tuple[tuple[str, int], ...] = ()

    def amount(self, key: str) -> int:
        return dict(self.used).get(key, 0)


@dataclass(frozen=True, slots=True)
class Merchant:
    id: str
    ledger: str
    fee_percent_bps: int
    fee_fixed: int
    payout_threshold: int
    payout_hold_days: int
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class MerchantHolds:
    """A merchant's net earnings per UTC day, kept for ``hold_days`` to know what is on hold."""

    merchant_id: str
    days: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    payer_id: str
    merchant_id: str
    ledger: str
    amount: int
    platform_fee: int
    merchant_amount: int
    sources: Sources
    promo_taken: tuple[tuple[str, int], ...]
    refunded: Sources
    description: str
    status: str  # "succeeded"
    created_at_ns: int
    kind: str = "charge"  # "charge" | "pass" | "membership"
    refund_ids: tuple[str, ...] = field(default=())

    @property
    def amount_refunded(self) -> int:
        return self.refunded.total


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    charge_id: str
    amount: int
    returned: Sources
    status: str  # "succeeded"
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class Topup:
    id: str
    payer_id: str
    ledger: str
    amount: int
    rail: str
    fee: int
    status: str  # "pending" | "succeeded" | "failed"
    failure_code: str
    created_at_ns: int
    settles_at_ns: int
    simulate_failure: bool = False


def encode(record: object) -> bytes:
    """A record as JSON bytes (dataclasses serialise natively)."""
    return orjson.dumps(record)


def _sources(data: Any) -> Sources:
    return Sources(int(data["promo"]), int(data["wallet"]), int(data["tab"]))


def _pairs(data: Any) -> tuple[tuple[str, int], ...]:
    return tuple((str(key), int(value)) for key, value in data)


def decode_payer(body: bytes) -> Payer:
    data = orjson.loads(body)
    caps = tuple(SpendCap(str(c["period"]), int(c["amount"])) for c in data["spend_caps"])
    return Payer(
        id=data["id"],
        ledger=data["ledger"],
        mode=data["mode"],
        status=data["status"],
        credit_limit=int(data["credit_limit"]),
        spend_caps=caps,
        created_at_ns=int(data["created_at_ns"]),
        ledgers=tuple(data["ledgers"]),
        suspended_reason=data["suspended_reason"],
    )


def decode_payer_promo(body: bytes) -> PayerPromo:
    data = orjson.loads(body)
    grants = tuple(
        PromoGrant(str(g["id"]), int(g["amount"]), int(g["remaining"]), int(g["expires_at_ns"])) for g in data["grants"]
    )
    return PayerPromo(payer_id=data["payer_id"], ledger=data["ledger"], grants=grants, expiries=int(data["expiries"]))


def decode_cap_usage(body: bytes) -> CapUsage:
    data = orjson.loads(body)
    return CapUsage(payer_id=data["payer_id"], used=_pairs(data["used"]))


def decode_merchant(body: bytes) -> Merchant:
    data = orjson.loads(body)
    return Merchant(**{name: data[name] for name in Merchant.__dataclass_fields__})


def decode_merchant_holds(body: bytes) -> MerchantHolds:
    data = orjson.loads(body)
    return MerchantHolds(merchant_id=data["merchant_id"], days=_pairs(data["days"]))


def decode_charge(body: bytes) -> Charge:
    data = orjson.loads(body)
    return Charge(
        id=data["id"],
        payer_id=data["payer_id"],
        merchant_id=data["merchant_id"],
        ledger=data["ledger"],
        amount=int(data["amount"]),
        platform_fee=int(data["platform_fee"]),
        merchant_amount=int(data["merchant_amount"]),
        sources=_sources(data["sources"]),
        promo_taken=_pairs(data["promo_taken"]),
        refunded=_sources(data["refunded"]),
        description=data["description"],
        status=data["status"],
        created_at_ns=int(data["created_at_ns"]),
        kind=data["kind"],
        refund_ids=tuple(data["refund_ids"]),
    )


def decode_refund(body: bytes) -> Refund:
    data = orjson.loads(body)
    return Refund(
        id=data["id"],
        charge_id=data["charge_id"],
        amount=int(data["amount"]),
        returned=_sources(data["returned"]),
        status=data["status"],
        created_at_ns=int(data["created_at_ns"]),
    )


def decode_topup(body: bytes) -> Topup:
    data = orjson.loads(body)
    return Topup(**{name: data[name] for name in Topup.__dataclass_fields__})
