"""Taking money from a payer: the one set of collection rules every paying path uses.

A payer pays by its mode: promo credit first (the soonest-expiring grant first), then the
wallet, then, for ``postpay`` (the tab alone) and ``hybrid`` (the rest), the tab up to its
credit limit; never past a spending cap; not at all while suspended. The rules live here once:

- ``open_room`` reads, once per payer and operation, what the payer can spend: promo credit
  (unexpired grants, bounded by the promo account), wallet and tab room, and each cap's use;
- ``PayerRoom.take`` decides one amount against that room (``rules.allocate`` splits it) and
  deducts it, or names the decline; it moves and writes nothing;
- ``PayerRoom.spend_promo`` says which grants a charge's promo part came from;
- ``PayerRoom.book`` writes, once, what the operation took: the tab accrual, the promo grants
  and the cap usage.

So a charge made alone (``payments.collect``, ``payments.charge_now``), the charges of one
``charge_many`` operation and the events of one metering batch all decide alike: each amount
sees the room the earlier ones left, exactly as if each had run in its own operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from micropay.engine import BatchContext
from micropay.errors import InvariantViolation, PaymentDeclined, Refused, require
from micropay.ledger import TransferRequest
from micropay.ledger.limits import AMOUNT_MAX
from micropay.models import chart
from micropay.models.records import (
    CapUsage,
    Payer,
    PayerPromo,
    SpendCap,
    decode_cap_usage,
    decode_payer_promo,
    encode,
)
from micropay.models.rules import PromoGrant, allocate, consume_grants, period_key, spendable_grants
from micropay.models.tab import ACCRUAL_BUCKETS_MAX, NS_PER_MINUTE, accrue, read_accrual

PAYER_PROMO, CAP_USAGE = "payer_promo", "cap_usage"
"""Document kinds: a payer's promo grants per ledger (id ``{payer}:{ledger}``), its cap usage."""

Taken = tuple[int, int, int]
"""What one amount takes from promo, wallet and tab (in that order)."""

_DECLINE_MESSAGES = {
    "payer_suspended": "the payer is suspended",
    "insufficient_funds": "the payer cannot pay this amount",
    "credit_limit_exceeded": "the payer cannot pay this amount",
}


def check_amount(amount: int, param: str = "amount") -> None:
    """An amount a request names: a positive integer no larger than one transfer may move."""
    if amount <= 0:
        raise Refused("amount_must_be_positive", "the amount must be a positive integer", param)
    if amount > AMOUNT_MAX:
        raise Refused("amount_exceeds_maximum", f"the amount may be at most {AMOUNT_MAX}", param)


@dataclass(slots=True)
class PayerRoom:
    """What one payer can still spend in this operation, and what it has taken so far."""

    payer: Payer
    now_ns: int
    active: bool
    promo: int  # spendable promo credit left (unexpired grants, bounded by the promo account)
    wallet: int
    tab: int  # tab room left (credit limit included)
    caps: tuple[tuple[str, int, SpendCap], ...]  # (period key, amount, cap) per cap
    used: dict[str, int]  # period key -> spent, as the cap usage says plus this operation
    cap_usage: CapUsage | None  # the stored cap usage (None: the payer has no caps)
    promo_record: PayerPromo | None  # the stored grants (None: none read)
    grants: tuple[PromoGrant, ...]  # the grants as this operation's promo spending left them
    promo_account: str
    wallet_account: str
    tab_account: str
    tab_blocked: bool | None = None  # None: not looked at yet
    spent: int = 0
    promo_spent: int = 0
    tab_taken: int = 0
    cap_keys: tuple[str, ...] = field(default=())

    def take(self, ctx: BatchContext, amount: int) -> Taken | str:
        """Decide ``amount`` against the room, in the order a lone charge would: the amount
        itself (refused), the payer's status, each spending cap, then the split by mode; on
        success deduct it and answer the split, else answer the decline code and change
        nothing. Refuses a tab charge the tab's unbilled usage has no room for."""
        if amount <= 0 or amount > AMOUNT_MAX:
            check_amount(amount)
        if not self.active:
            return "payer_suspended"
        used = self.used
        for key, cap_amount, _ in self.caps:
            if used[key] + amount > cap_amount:
                return "spend_cap_exceeded"
        split = allocate(self.payer.mode, amount, self.promo, self.wallet, self.tab)
        if isinstance(split, str):
            return split
        promo, wallet, tab = split
        if tab and self._tab_blocked(ctx):
            raise Refused("tab_usage_unbilled_too_long", "close a statement for this tab first", "payer_id")
        self.promo -= promo
        self.wallet -= wallet
        self.tab -= tab
        self.spent += amount
        self.promo_spent += promo
        self.tab_taken += tab
        for key in self.cap_keys:
            used[key] += amount
        return split

    def take_whole(self, ctx: BatchContext, total: int) -> str | None:
        """Take ``total``, the sum of several amounts, when ``take`` is certain to take each of
        them, in any order, whole from one source: answer that source's leg (``"wallet"`` or
        ``"tab"``) having deducted the total, or None having changed nothing.

        Certain when the payer is active, no cap would be crossed by the total, no promo
        credit is spendable (``take`` would spend it first), and the mode's one source has
        room for the total: the wallet (prepay, hybrid) or the tab (postpay, which must also
        have room for a new accrual). Then every amount's ``take`` answers that source alone,
        since each sees at least the room the total leaves."""
        if total <= 0 or not self.active or self.promo:
            return None
        used = self.used
        for key, cap_amount, _ in self.caps:
            if used[key] + total > cap_amount:
                return None
        if self.payer.mode == "postpay":
            if total > self.tab or self._tab_blocked(ctx):
                return None
            self.tab -= total
            self.tab_taken += total
            leg = "tab"
        else:
            if total > self.wallet:
                return None
            self.wallet -= total
            leg = "wallet"
        self.spent += total
        for key in self.cap_keys:
            used[key] += total
        return leg

    def take_or_decline(self, ctx: BatchContext, amount: int) -> Taken:
        """``take``, raising the decline (``PaymentDeclined``) instead of answering it."""
        split = self.take(ctx, amount)
        if isinstance(split, str):
            raise self.declined(split, amount)
        return split

    def declined(self, code: str, amount: int) -> PaymentDeclined:
        """The refusal a lone charge of ``amount`` answers for the decline ``code``."""
        if code == "spend_cap_exceeded":
            crossed = next((cap for key, limit, cap in self.caps if self.used[key] + amount > limit), None)
            period = crossed.period if crossed is not None else "spending"
            return PaymentDeclined(code, f"the payer's {period} spending cap would be crossed")
        return PaymentDeclined(
            code,
            _DECLINE_MESSAGES.get(code, "the payer cannot pay this amount"),
            "payer_id" if code == "payer_suspended" else None,
        )

    def spend_promo(self, amount: int) -> tuple[tuple[str, int], ...]:
        """Which grants ``amount`` of promo (already taken) comes from, soonest expiring first."""
        if not amount:
            return ()
        self.grants, taken = consume_grants(self.grants, amount, self.now_ns)
        return taken

    def _tab_blocked(self, ctx: BatchContext) -> bool:
        """Whether accruing on the tab now would open a bucket past ``ACCRUAL_BUCKETS_MAX``
        (``tab.accrue`` would refuse: checked before anything is taken)."""
        if self.tab_blocked is None:
            minutes = dict(read_accrual(ctx, self.payer.id).minutes)
            minute = self.now_ns // NS_PER_MINUTE
            self.tab_blocked = minute not in minutes and len(minutes) + 1 > ACCRUAL_BUCKETS_MAX
        return self.tab_blocked

    def book(self, ctx: BatchContext) -> None:
        """Write what this operation took from the payer (once the money has moved): the tab's
        accrual, the promo grants left, the caps' usage."""
        payer = self.payer
        if self.tab_taken:
            accrue(ctx, payer.id, self.tab_taken)
        if self.promo_spent:
            promo = self.promo_record
            if promo is None:
                raise InvariantViolation("promo spent without promo grants")
            require(
                sum(grant.remaining for grant in promo.grants) - sum(grant.remaining for grant in self.grants)
                == self.promo_spent,
                "the promo grants spent do not add up to the promo taken",
            )
            ctx.put_document(PAYER_PROMO, promo_key(payer.id, payer.ledger), encode(replace(promo, grants=self.grants)))
        if self.cap_usage is not None and self.spent:
            add_cap_usage(ctx, self.cap_usage, payer.spend_caps, self.spent, self.now_ns)


_ACCOUNTS_KEPT_MAX = 100_000
_accounts_of: dict[tuple[str, str], tuple[str, str, str]] = {}


def payer_accounts(payer_id: str, ledger: str) -> tuple[str, str, str]:
    """The payer's promo, wallet and tab account ids in ``ledger`` (made once per payer: every
    operation that charges the payer names them)."""
    key = (payer_id, ledger)
    found = _accounts_of.get(key)
    if found is None:
        if len(_accounts_of) >= _ACCOUNTS_KEPT_MAX:
            _accounts_of.clear()
        found = _accounts_of[key] = (
            chart.promo_account(payer_id, ledger),
            chart.wallet_account(payer_id, ledger),
            chart.tab_account(payer_id, ledger),
        )
    return found


def promo_key(payer_id: str, ledger: str) -> str:
    """The id of a payer's promo grants record in ``ledger``."""
    return f"{payer_id}:{ledger}"


def _wallet_may_pay_alone(payer: Payer) -> bool:
    """An active prepay payer with no caps: its wallet alone pays, if it holds no promo grants."""
    return payer.mode == "prepay" and not payer.spend_caps and payer.status == "active"


def wallet_alone(ctx: BatchContext, payer: Payer) -> str | None:
    """The wallet account of a payer whose wallet alone pays, with nothing to book after: an
    active prepay payer with no caps and no promo grants (``open_room`` would give it a room of
    its wallet only, and ``PayerRoom.book`` would write nothing). None for any other payer."""
    if not _wallet_may_pay_alone(payer):
        return None
    if ctx.get_document(PAYER_PROMO, promo_key(payer.id, payer.ledger)) is not None:
        return None
    return payer_accounts(payer.id, payer.ledger)[1]


def wallets_alone(ctx: BatchContext, payers: Sequence[Payer]) -> list[str] | None:
    """``wallet_alone`` of each payer, or None if any of them pays otherwise (the promo grants
    of all read at once, their absence remembered: most payers never have any)."""
    if not all(map(_wallet_may_pay_alone, payers)):
        return None
    keys = [promo_key(payer.id, payer.ledger) for payer in payers]
    if ctx.get_documents(PAYER_PROMO, keys, remember_absent=True):
        return None
    return [payer_accounts(payer.id, payer.ledger)[1] for payer in payers]


def open_room(ctx: BatchContext, payer: Payer) -> PayerRoom:
    """Read what ``payer`` can spend now (nothing for a suspended payer; only the balances its
    mode can spend: a post-pay payer's tab alone, a prepay payer's promo and wallet)."""
    ledger, now_ns = payer.ledger, ctx.now_ns
    promo_account, wallet_account, tab_account = payer_accounts(payer.id, ledger)
    room = PayerRoom(
        payer,
        now_ns,
        payer.status == "active",
        0,
        0,
        0,
        (),
        {},
        None,
        None,
        (),
        promo_account,
        wallet_account,
        tab_account,
    )
    if not room.active:
        return room
    if payer.spend_caps:
        body = ctx.get_document(CAP_USAGE, payer.id)
        usage = room.cap_usage = CapUsage(payer.id) if body is None else decode_cap_usage(body)
        room.caps = tuple((period_key(cap.period, now_ns), cap.amount, cap) for cap in payer.spend_caps)
        room.used = {key: usage.amount(key) for key, _, _ in room.caps}
        room.cap_keys = tuple(room.used)
    mode = payer.mode
    require(mode in ("prepay", "postpay", "hybrid"), f"payer {payer.id} has an unknown mode {mode}")
    if mode != "postpay":
        # Most payers hold no grants: the promo account is read only for one that does.
        body = ctx.get_document(PAYER_PROMO, promo_key(payer.id, ledger))
        if body is not None:
            promo = room.promo_record = decode_payer_promo(body)
            room.grants = promo.grants
            spendable = sum(grant.remaining for grant in spendable_grants(promo.grants, now_ns))
            if spendable:
                room.promo = max(min(spendable, _available(ctx, promo_account)), 0)
        room.wallet = max(_available(ctx, wallet_account), 0)
    if mode != "prepay":
        room.tab = max(_available(ctx, tab_account), 0)
    return room


def _available(ctx: BatchContext, account_id: str) -> int:
    available = ctx.available(account_id)
    if available is None:
        raise InvariantViolation(f"account {account_id} is missing")
    return available


def add_cap_usage(ctx: BatchContext, usage: CapUsage, caps: tuple[SpendCap, ...], amount: int, now_ns: int) -> None:
    """Add ``amount`` to the payer's current cap periods (older periods are dropped)."""
    current = dict(usage.used)
    keys = {period_key(cap.period, now_ns) for cap in caps}
    used = tuple((key, current.get(key, 0) + amount) for key in sorted(keys))
    ctx.put_document(CAP_USAGE, usage.payer_id, encode(CapUsage(usage.payer_id, used)))


def collection_legs(room: PayerRoom, taken: Taken, destination: str, transfer_prefix: str) -> list[TransferRequest]:
    """The transfers moving what ``take`` answered into ``destination``: ``{prefix}:promo``,
    ``:wallet``, ``:tab``, each only when it moves something."""
    promo, wallet, tab = taken
    ledger = room.payer.ledger
    legs = []
    if promo:
        legs.append(TransferRequest(transfer_prefix + ":promo", room.promo_account, destination, promo, ledger))
    if wallet:
        legs.append(TransferRequest(transfer_prefix + ":wallet", room.wallet_account, destination, wallet, ledger))
    if tab:
        legs.append(TransferRequest(transfer_prefix + ":tab", room.tab_account, destination, tab, ledger))
    return legs
