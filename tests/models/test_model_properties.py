"""Properties over random sequences of top-ups, vouchers, charges, refunds, statements, promo
expiry, clock moves and restarts, for payers of every mode.

After every step: the books balance and ``verify()`` passes; wallets and promo never go below zero,
tabs never below minus their credit limit; caps are never crossed; refunds never pass their
charge; the promo balance is exactly what the grants hold (expired-but-unswept included); every
balance equals what the records say moved into and out of it; a decline moves nothing. A restart
keeps every record and balance.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from models_testkit import MINUTE_NS, NS, USD, Clock, World

from micropay.errors import ApiError
from micropay.models import chart, payments, promo, statements
from micropay.models.payments import ChargeRequest, RefundRequest, TopupRequest
from micropay.models.records import Charge, Refund, SpendCap
from micropay.models.rules import Sources, period_key, platform_fee

pytestmark = pytest.mark.slow

PAYERS: dict[str, tuple[str, int, tuple[SpendCap, ...]]] = {
    "pre0": ("prepay", 0, ()),
    "pre1": ("prepay", 0, (SpendCap("day", 2_500),)),
    "post0": ("postpay", 2_000, (SpendCap("month", 6_000),)),
    "hyb0": ("hybrid", 1_000, (SpendCap("day", 1_500), SpendCap("month", 8_000))),
}
MERCHANTS = {"m0": (500, 1), "m1": (0, 30)}

payer_ids = st.sampled_from(sorted(PAYERS))
merchant_ids = st.sampled_from(sorted(MERCHANTS))


def _add(left: Sources, right: Sources) -> Sources:
    return Sources(left.promo + right.promo, left.wallet + right.wallet, left.tab + right.tab)


class PaymentsMachine(RuleBasedStateMachine):
    """The system under test (an engine on a temporary SQLite file) beside a ledger of what the
    records say moved, which every balance must match."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="micropay-props-"))
        self.clock = Clock()
        self.world = World(self.directory / "micropay.db", self.clock)
        self.serial = 0
        self.charges: dict[str, Charge] = {}
        self.refunds: dict[str, Refund] = {}
        self.refunded: dict[str, Sources] = defaultdict(lambda: Sources(0, 0, 0))
        self.topped_up: dict[str, int] = defaultdict(int)
        self.pending_topups: dict[str, str] = {}  # top-up id -> payer id
        self.topup_ids: list[str] = []
        self.promo_in: dict[str, int] = defaultdict(int)
        self.promo_expired: dict[str, int] = defaultdict(int)
        self.vouchers: dict[str, promo.Voucher] = {}
        self.statements: dict[str, statements.Statement] = {}
        self.statement_paid: dict[str, int] = defaultdict(int)
        self.cap_tally: dict[tuple[str, str], int] = defaultdict(int)

    def teardown(self) -> None:
        self.world.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _next(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial}"

    def _call(self, operation: Any) -> Any:
        """Run an operation; a refusal answers its code and must have moved nothing."""
        before = self.world.snapshot()
        try:
            return self.world.call(operation)
        except ApiError as error:
            assert self.world.snapshot() == before, error.code
            return error.code

    @initialize()
    def open_books(self) -> None:
        self.world.ledger(USD, 2)
        for payer_id, (mode, credit_limit, caps) in PAYERS.items():
            self.world.payer(payer_id, mode, credit_limit=credit_limit, caps=caps)
        for merchant_id, (bps, fixed) in MERCHANTS.items():
            self.world.merchant(merchant_id, bps=bps, fixed=fixed)
        for payer_id in ("pre0", "pre1", "hyb0"):  # some money to spend from the start
            self.world.topup(f"{payer_id}-opening", payer_id, 2_000)
            self.topped_up[payer_id] += 2_000
            self.topup_ids.append(f"{payer_id}-opening")

    # ------------------------------------------------------------- rules
    @rule(payer_id=payer_ids, amount=st.integers(1, 3_000), rail=st.sampled_from(["card", "bank"]), fail=st.booleans())
    def top_up(self, payer_id: str, amount: int, rail: str, fail: bool) -> None:
        topup_id = self._next("t")
        suspended = self.world.read_payer(payer_id).status != "active"
        result = self._call(payments.topup(TopupRequest(topup_id, payer_id, amount, rail, fail), self.world.rails))
        if suspended:
            assert result == "payer_suspended"
            return
        record, replayed = result
        assert not replayed
        self.topup_ids.append(topup_id)
        if rail == "bank":
            assert record.status == "pending"
            self.pending_topups[topup_id] = payer_id
        elif fail:
            assert record.status == "failed"
        else:
            assert record.status == "succeeded"
            self.topped_up[payer_id] += amount

    @precondition(lambda self: self.pending_topups)
    @rule()
    def settle_bank_topups(self) -> None:
        settled = self.world.call(payments.settle_topups(sorted(self.pending_topups), self.world.rails))
        for record in settled:
            assert record.settles_at_ns <= self.clock.now_ns
            payer_id = self.pending_topups.pop(record.id)
            if record.status == "succeeded":
                self.topped_up[payer_id] += record.amount
        for topup_id in self.pending_topups:
            assert self.world.read_topup(topup_id).settles_at_ns > self.clock.now_ns

    @rule(
        payer_id=payer_ids,
        amount=st.integers(1, 800),
        expires_in_s=st.sampled_from([30, 600, 3_600, 3 * 86_400]),
        redeem_now=st.booleans(),
    )
    def issue_voucher(self, payer_id: str, amount: int, expires_in_s: int, redeem_now: bool) -> None:
        code = self._next("CODE-")
        self.vouchers[code] = self.world.voucher(code, amount, expires_in_s)
        if redeem_now:
            self.redeem(payer_id, code)

    @precondition(lambda self: self.vouchers)
    @rule(data=st.data(), payer_id=payer_ids)
    def redeem_a_voucher(self, data: st.DataObject, payer_id: str) -> None:
        self.redeem(payer_id, data.draw(st.sampled_from(sorted(self.vouchers))))

    def redeem(self, payer_id: str, code: str) -> None:
        voucher = self.vouchers[code]
        result = self._call(promo.redeem_voucher(payer_id, code))
        if voucher.redeemed_by == payer_id:
            assert result == (voucher, True)
        elif voucher.redeemed_by:
            assert result == "voucher_already_redeemed"
        elif voucher.expires_at_ns <= self.clock.now_ns:
            assert result == "voucher_expired"
        else:
            redeemed, replayed = result
            assert not replayed and redeemed.redeemed_by == payer_id
            self.vouchers[code] = redeemed
            self.promo_in[payer_id] += voucher.amount

    @rule(payer_id=payer_ids, merchant_id=merchant_ids, amount=st.integers(1, 1_500))
    def charge(self, payer_id: str, merchant_id: str, amount: int) -> None:
        caps = PAYERS[payer_id][2]
        now = self.clock.now_ns
        expected = self._expected_charge(payer_id, amount)
        charge_id = self._next("c")
        result = self._call(payments.charge(ChargeRequest(charge_id, payer_id, merchant_id, amount)))
        event(f"charge: {expected if isinstance(expected, str) else 'ok'}")
        if isinstance(expected, str):
            assert result == expected
            return
        record, replayed = result
        assert not replayed
        bps, fixed = MERCHANTS[merchant_id]
        assert record.sources == expected
        assert record.platform_fee == platform_fee(amount, bps, fixed)
        self.charges[charge_id] = record
        for cap in caps:
            self.cap_tally[(payer_id, period_key(cap.period, now))] += amount

    def _expected_charge(self, payer_id: str, amount: int) -> Sources | str:
        """What the charge should do, worked out from balances and records alone."""
        mode, credit_limit, caps = PAYERS[payer_id]
        now = self.clock.now_ns
        if self.world.read_payer(payer_id).status != "active":
            return "payer_suspended"
        for cap in caps:
            if self.cap_tally[(payer_id, period_key(cap.period, now))] + amount > cap.amount:
                return "spend_cap_exceeded"
        live_promo = sum(g.remaining for g in self.world.read_promo(payer_id).grants if g.expires_at_ns > now)
        wallet = self.world.wallet(payer_id)
        tab_room = self.world.tab(payer_id) + credit_limit
        if mode == "postpay":
            return Sources(0, 0, amount) if amount <= tab_room else "credit_limit_exceeded"
        from_promo = min(amount, live_promo)
        from_wallet = min(amount - from_promo, wallet)
        rest = amount - from_promo - from_wallet
        if mode == "prepay":
            return Sources(from_promo, from_wallet, 0) if not rest else "insufficient_funds"
        return Sources(from_promo, from_wallet, rest) if rest <= tab_room else "credit_limit_exceeded"

    @precondition(lambda self: self.charges)
    @rule(data=st.data(), amount=st.one_of(st.none(), st.integers(1, 1_200)))
    def refund(self, data: st.DataObject, amount: int | None) -> None:
        charge_id = data.draw(st.sampled_from(sorted(self.charges)))
        charge = self.charges[charge_id]
        left = charge.amount - self.refunded[charge_id].total
        refund_id = self._next("r")
        result = self._call(payments.refund(RefundRequest(refund_id, charge_id, amount)))
        wanted = left if amount is None else amount
        event(f"refund: {'ok' if 0 < wanted <= left else 'refused'}")
        if not 0 < wanted <= left:
            assert result == "refund_exceeds_charge"
            return
        record, _ = result
        event(f"refund: promo part {bool(record.returned.promo)}, tab part {bool(record.returned.tab)}")
        assert record.amount == wanted == record.returned.total
        paid_left = charge.sources.wallet + charge.sources.tab - self.refunded[charge_id].wallet
        paid_left -= self.refunded[charge_id].tab
        assert record.returned.promo == max(0, wanted - paid_left)  # the paid part goes back first
        self.refunds[refund_id] = record
        self.refunded[charge_id] = _add(self.refunded[charge_id], record.returned)

    @rule(payer_id=payer_ids)
    def sweep_expired_promo(self, payer_id: str) -> None:
        due = sum(g.remaining for g in self.world.read_promo(payer_id).grants if g.expires_at_ns <= self.clock.now_ns)
        moved = self.world.expire_promo(payer_id)
        event(f"promo expiry: {'moved' if moved else 'nothing'}")
        assert moved == due
        self.promo_expired[payer_id] += moved

    @rule(minutes=st.sampled_from([0, 1, 60]))
    def close_statements(self, minutes: int) -> None:
        self.clock.advance(ns=minutes * MINUTE_NS)  # a period ends now, after a while
        owed = {payer_id: -self.world.tab(payer_id) for payer_id in PAYERS}
        for statement in self.world.close_statements(sorted(PAYERS), self.clock.now_ns):
            if statement.id in self.statements:  # this period end was closed before: the same statement
                assert statement.period_end_ns // MINUTE_NS == self.clock.now_ns // MINUTE_NS
                continue
            assert statement.status == "open"
            assert 0 < statement.amount_due <= owed[statement.payer_id]
            self.statements[statement.id] = statement

    @precondition(lambda self: any(s.status != "paid" for s in self.statements.values()))
    @rule(data=st.data(), fail=st.booleans())
    def settle_statement(self, data: st.DataObject, fail: bool) -> None:
        unpaid = sorted(s.id for s in self.statements.values() if s.status != "paid")
        statement_id = data.draw(st.sampled_from(unpaid))
        settled = self.world.settle_statement(statement_id, fail=fail)
        event(f"statement: {settled.status}")
        self.statements[statement_id] = settled
        payer = self.world.read_payer(settled.payer_id)
        if fail:
            assert settled.status == "past_due" and payer.status == "suspended"
        else:
            assert settled.status == "paid"
            self.statement_paid[settled.payer_id] += settled.amount_due
            past_due = any(s.status == "past_due" and s.payer_id == payer.id for s in self.statements.values())
            assert payer.status == ("suspended" if past_due else "active")

    @rule(seconds=st.sampled_from([1, 30, 61, 3_600, 86_400, 9 * 86_400, 31 * 86_400]))
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(ns=seconds * NS)

    @rule()
    def restart(self) -> None:
        before = self._everything()
        self.world.reopen()
        assert self._everything() == before

    def _everything(self) -> tuple[Any, ...]:
        engine = self.world.engine
        documents = [
            *((payments.PAYER, p) for p in PAYERS),
            *((payments.PAYER_PROMO, f"{p}:{USD}") for p in PAYERS),
            *((payments.CAP_USAGE, p) for p in PAYERS),
            *((payments.CHARGE, c) for c in self.charges),
            *((payments.REFUND, r) for r in self.refunds),
            *((payments.TOPUP, t) for t in self.topup_ids),
            *((statements.STATEMENT, s) for s in self.statements),
            *((promo.VOUCHER, v.code_hash) for v in self.vouchers.values()),
        ]
        bodies = {key: engine.document(*key) for key in documents}
        return self.world.snapshot(), engine.transfer_count(), bodies

    # ------------------------------------------------------------- invariants
    @invariant()
    def books_balance_and_verify(self) -> None:
        self.world.check_books()

    @invariant()
    def no_balance_crosses_its_limit(self) -> None:
        for payer_id, (_, credit_limit, _) in PAYERS.items():
            assert self.world.wallet(payer_id) >= 0
            assert self.world.promo(payer_id) >= 0
            assert self.world.tab(payer_id) >= -credit_limit

    @invariant()
    def promo_balance_is_what_the_grants_hold(self) -> None:
        now = self.clock.now_ns
        for payer_id in PAYERS:
            grants = self.world.read_promo(payer_id).grants
            assert all(g.remaining >= 0 for g in grants)
            assert all(g.remaining <= g.amount for g in grants if g.expires_at_ns > now)
            assert self.world.promo(payer_id) == sum(g.remaining for g in grants)

    @invariant()
    def caps_are_never_crossed(self) -> None:
        for payer_id, (_, _, caps) in PAYERS.items():
            limits = {cap.period: cap.amount for cap in caps}
            for key, used in self.world.read_cap_usage(payer_id).used:
                assert used <= limits["day" if len(key) == 10 else "month"]
        for (payer_id, key), used in self.cap_tally.items():
            limits = {cap.period: cap.amount for cap in PAYERS[payer_id][2]}
            assert used <= limits["day" if len(key) == 10 else "month"]

    @invariant()
    def refunds_never_pass_their_charge(self) -> None:
        for charge_id, charge in self.charges.items():
            stored = self.world.read_charge(charge_id)
            refunded = self.refunded[charge_id]
            assert stored.refunded == refunded
            assert refunded.total <= charge.amount
            assert refunded.promo <= charge.sources.promo
            assert refunded.wallet <= charge.sources.wallet
            assert refunded.tab <= charge.sources.tab

    @invariant()
    def balances_are_what_the_records_moved(self) -> None:
        spent: dict[str, Sources] = defaultdict(lambda: Sources(0, 0, 0))
        returned: dict[str, Sources] = defaultdict(lambda: Sources(0, 0, 0))
        earned: dict[str, int] = defaultdict(int)
        fees = 0
        for charge_id, charge in self.charges.items():
            spent[charge.payer_id] = _add(spent[charge.payer_id], charge.sources)
            returned[charge.payer_id] = _add(returned[charge.payer_id], self.refunded[charge_id])
            earned[charge.merchant_id] += charge.merchant_amount - self.refunded[charge_id].total
            fees += charge.platform_fee
        for payer_id in PAYERS:
            out, back = spent[payer_id], returned[payer_id]
            assert self.world.wallet(payer_id) == self.topped_up[payer_id] - out.wallet + back.wallet
            assert self.world.promo(payer_id) == (
                self.promo_in[payer_id] - out.promo + back.promo - self.promo_expired[payer_id]
            )
            assert self.world.tab(payer_id) == -out.tab + back.tab + self.statement_paid[payer_id]
        for merchant_id in MERCHANTS:
            assert self.world.earnings(merchant_id) == earned[merchant_id]
        assert self.world.fees() == fees
        assert self.world.balance(chart.promo_funding_account(USD)) == -sum(self.promo_in.values())
        assert self.world.balance(chart.promo_expired_account(USD)) == sum(self.promo_expired.values())
        for rail in self.world.rails.names:
            assert self.world.clearing(rail) == 0


PaymentsMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_payments_properties = PaymentsMachine.TestCase
