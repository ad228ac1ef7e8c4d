"""Post-pay tab usage, bucketed per minute until a statement bills it."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from micropay.engine import BatchContext
from micropay.errors import Refused
from micropay.models.records import encode

TAB_ACCRUAL = "tab_accrual"
NS_PER_MINUTE = 60 * 1_000_000_000
ACCRUAL_BUCKETS_MAX = 50_000
"""Minutes of unbilled usage one tab may hold (about five weeks of usage every minute)."""


@dataclass(frozen=True, slots=True)
class TabAccrual:
    payer_id: str
    minutes: tuple[tuple[int, int], ...] = ()  # (minute since epoch, net amount accrued)
    last_ns: int = 0  # when the newest accrual happened (a period end after it bills every bucket)


def read_accrual(ctx: BatchContext, payer_id: str) -> TabAccrual:
    body = ctx.get_document(TAB_ACCRUAL, payer_id)
    if body is None:
        return TabAccrual(payer_id)
    data = orjson.loads(body)
    minutes = tuple((int(minute), int(amount)) for minute, amount in data["minutes"])
    return TabAccrual(payer_id, minutes, int(data.get("last_ns", 0)))


def accrue(ctx: BatchContext, payer_id: str, amount: int) -> None:
    """Record ``amount`` (negative for a refund) on the tab in the current minute."""
    if not amount:
        return
    accrual = read_accrual(ctx, payer_id)
    minute = ctx.now_ns // NS_PER_MINUTE
    buckets = dict(accrual.minutes)
    buckets[minute] = buckets.get(minute, 0) + amount
    if len(buckets) > ACCRUAL_BUCKETS_MAX:
        raise Refused("tab_usage_unbilled_too_long", "close a statement for this tab first", "payer_id")
    last_ns = max(accrual.last_ns, ctx.now_ns)
    ctx.put_document(TAB_ACCRUAL, payer_id, encode(TabAccrual(payer_id, tuple(sorted(buckets.items())), last_ns)))
