"""Pure payment rules: fees, where a charge's money comes from, promo grants, caps, periods.

No I/O and no clock: time comes in as ``now_ns``. The operations in ``models.payments`` call
these and turn their answers into ledger transfers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from micropay.errors import require

BPS_DENOMINATOR = 10_000
NS_PER_S = 1_000_000_000

MODES = ("prepay", "postpay", "hybrid")
CAP_PERIODS = ("day", "month")


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a charge's amount comes from, in spending order: promo, wallet, tab."""

    promo: int
    wallet: int
    tab: int

    @property
    def total(self) -> int:
        return self.promo + self.wallet + self.tab


@dataclass(frozen=True, slots=True)
class PromoGrant:
    """Promo credit from one voucher: ``remaining`` of ``amount`` is spendable until ``expires_at_ns``."""

    id: str
    amount: int
    remaining: int
    expires_at_ns: int


def platform_fee(amount: int, percent_bps: int, fixed: int) -> int:
    """``min(amount, fixed + amount * percent_bps // 10000)``: never more than the charge."""
    require(amount > 0 and percent_bps >= 0 and fixed >= 0, "platform_fee: bad arguments")
    fee = min(amount, fixed + amount * percent_bps // BPS_DENOMINATOR)
    require(0 <= fee <= amount, "platform_fee: fee outside 0..amount")
    return fee


def platform_fees(amounts: list[int], terms: list[tuple[int, int]]) -> list[int]:
    """``platform_fee`` of each amount under its ``(percent_bps, fixed)`` terms, in one pass
    (the column paths: thousands of charges, checked once for the whole column)."""
    require(
        len(amounts) == len(terms) and all(percent_bps >= 0 and fixed >= 0 for percent_bps, fixed in set(terms)),
        "platform_fees: one pair of non-negative terms per amount",
    )
    fees = [
        min(amount, fixed + amount * percent_bps // BPS_DENOMINATOR)
        for amount, (percent_bps, fixed) in zip(amounts, terms, strict=True)
    ]
    require(min(amounts, default=1) > 0, "platform_fees: amounts are positive")
    require(all(map(int.__le__, fees, amounts)) and min(fees, default=0) >= 0, "platform_fees: fee outside 0..amount")
    return fees


def allocate(
    mode: str, amount: int, promo_available: int, wallet_available: int, tab_available: int
) -> tuple[int, int, int] | str:
    """Split ``amount`` over promo, wallet and tab by the payer's mode, or name the decline code.

    prepay: promo then wallet (``insufficient_funds``); postpay: the tab only
    (``credit_limit_exceeded``); hybrid: promo, wallet, then the tab for the rest
    (``credit_limit_exceeded``). Answers ``(promo, wallet, tab)``, which add up to ``amount``
    (a plain tuple: this runs once per charge and per metered event).
    """
    require(
        amount > 0 and promo_available >= 0 and wallet_available >= 0 and tab_available >= 0,
        "allocate: the amount must be positive and no availability negative",
    )
    if mode == "postpay":
        return (0, 0, amount) if amount <= tab_available else "credit_limit_exceeded"
    promo = amount if amount <= promo_available else promo_available
    rest = amount - promo
    wallet = rest if rest <= wallet_available else wallet_available
    rest -= wallet
    if not rest:
        return promo, wallet, 0
    if mode == "prepay":
        return "insufficient_funds"
    require(mode == "hybrid", f"allocate: unknown mode {mode}")
    return (promo, wallet, rest) if rest <= tab_available else "credit_limit_exceeded"


def spendable_grants(grants: tuple[PromoGrant, ...], now_ns: int) -> tuple[PromoGrant, ...]:
    """Unexpired grants with something left, soonest expiring first (ties by id)."""
    live = [grant for grant in grants if grant.remaining > 0 and grant.expires_at_ns > now_ns]
    return tuple(sorted(live, key=lambda grant: (grant.expires_at_ns, grant.id)))


def consume_grants(
    grants: tuple[PromoGrant, ...], amount: int, now_ns: int
) -> tuple[tuple[PromoGrant, ...], tuple[tuple[str, int], ...]]:
    """Spend ``amount`` of promo credit, soonest expiring first.

    Returns the grants after spending and what was taken from each ``(grant_id, amount)``.
    """
    require(amount >= 0, "consume_grants: negative amount")
    taken: dict[str, int] = {}
    left = amount
    for grant in spendable_grants(grants, now_ns):
        if not left:
            break
        take = min(left, grant.remaining)
        taken[grant.id] = take
        left -= take
    require(left == 0, "consume_grants: not enough promo credit")
    updated = tuple(replace(g, remaining=g.remaining - taken[g.id]) if g.id in taken else g for g in grants)
    return updated, tuple(taken.items())


def restore_grants(
    grants: tuple[PromoGrant, ...], returned: tuple[tuple[str, int], ...], now_ns: int
) -> tuple[PromoGrant, ...]:
    """Give refunded promo credit back to the grants it came from.

    A grant no longer kept (it expired and was dropped) comes back as an expired grant holding
    the refunded credit, so the next expiry sweep moves it to the reversal account.
    """
    back = dict(returned)
    known = {grant.id for grant in grants}
    updated = tuple(replace(g, remaining=g.remaining + back[g.id]) if g.id in back else g for g in grants)
    revived = tuple(
        PromoGrant(grant_id, amount, amount, now_ns) for grant_id, amount in back.items() if grant_id not in known
    )
    for grant in updated:
        require(
            grant.remaining <= grant.amount or grant.expires_at_ns <= now_ns,
            f"restore_grants: live grant {grant.id} over its amount",
        )
    return updated + revived


def expired_grants(grants: tuple[PromoGrant, ...], now_ns: int) -> tuple[tuple[PromoGrant, ...], int]:
    """Grants with the expired remainders zeroed, and the total that expired."""
    expired = sum(g.remaining for g in grants if g.expires_at_ns <= now_ns)
    updated = tuple(replace(g, remaining=0) if g.expires_at_ns <= now_ns and g.remaining else g for g in grants)
    return updated, expired


def utc_datetime(now_ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(now_ns // NS_PER_S, tz=dt.UTC)


def period_key(period: str, now_ns: int) -> str:
    """The UTC calendar period holding ``now_ns``: ``YYYY-MM-DD`` for a day, ``YYYY-MM`` for a month."""
    moment = utc_datetime(now_ns)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    require(period == "month", f"period_key: unknown period {period}")
    return moment.strftime("%Y-%m")


def refund_split(sources: Sources, refunded: Sources, amount: int) -> Sources:
    """How a refund of ``amount`` returns money: the paid part first (wallet, then tab), promo last.

    ``refunded`` is what earlier refunds of the same charge already returned.
    """
    left = Sources(sources.promo - refunded.promo, sources.wallet - refunded.wallet, sources.tab - refunded.tab)
    require(min(left.promo, left.wallet, left.tab) >= 0, "refund_split: refunded more than charged")
    require(0 < amount <= left.total, "refund_split: amount outside what is left")
    wallet = min(amount, left.wallet)
    tab = min(amount - wallet, left.tab)
    promo = amount - wallet - tab
    require(promo <= left.promo, "refund_split: promo part over what is left")
    return Sources(promo, wallet, tab)
