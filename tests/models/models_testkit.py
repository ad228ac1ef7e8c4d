"""Helpers shared by the model tests: a settable UTC clock and a small payment "world" (an engine
on a real SQLite file, the simulated rails, and shorthands for the model operations).

Imported by the tests in this directory (pytest puts it on sys.path).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from micropay.engine import BatchContext, Engine
from micropay.errors import ApiError
from micropay.models import chart, payments, promo, statements
from micropay.models.passes import Pass, buy_pass, get_pass
from micropay.models.payments import ChargeRequest, MerchantRequest, PayerRequest, RefundRequest, TopupRequest
from micropay.models.records import (
    CapUsage,
    Charge,
    Merchant,
    Payer,
    PayerPromo,
    Refund,
    SpendCap,
    Topup,
    decode_cap_usage,
    decode_charge,
    decode_payer,
    decode_refund,
    decode_topup,
)
from micropay.models.statements import Statement
from micropay.settlement.rails import Rails
from micropay.store import SQLiteStore

T = TypeVar("T")

NS = 1_000_000_000
MINUTE_NS = 60 * NS
DAY_NS = 86_400 * NS
USD = "USD"

CARD_FIXED_CENTS = 30  # the simulated card rail: 0.30 + 2.9 %, rounded up
CARD_BPS = 290
BANK_FEE_CENTS = 20  # the simulated bank rail: flat 0.20, settles 2 s later
BANK_DELAY_S = 2


def utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """A UTC wall-clock moment in ns since the epoch."""
    return int(dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()) * NS


START_NS = utc_ns(2026, 3, 10, 12, 0, 0)
"""Tests start at noon UTC on a Tuesday in the middle of a month."""


def card_fee(amount: int) -> int:
    """The simulated card rail's fee in cents, computed independently of the code under test."""
    percent_up = (amount * CARD_BPS + 9_999) // 10_000
    return CARD_FIXED_CENTS + percent_up


class Clock:
    """An injectable engine clock that only moves when a test moves it."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float = 0, ns: int = 0) -> None:
        self.now_ns += int(seconds * NS) + ns

    def set(self, now_ns: int) -> None:
        self.now_ns = now_ns


Snapshot = dict[str, tuple[int, int, int, int]]


class _Undo(Exception):
    """Raised inside a batch to undo what an operation did there (``World.peek``)."""


class World:
    """One engine on a SQLite file with the USD ledger (scale 2), the simulated rails, and
    shorthands for the model operations. Every shorthand goes through ``engine.call``."""

    def __init__(self, path: Path, clock: Clock, **engine_options: Any) -> None:
        self.path = path
        self.clock = clock
        self.rails = Rails()
        self.engine_options = engine_options
        self.engine = self._open()
        self._ledgers: set[str] = set()

    def _open(self) -> Engine:
        options = {"batch_window_s": 0, **self.engine_options}
        return Engine(SQLiteStore(self.path), clock_ns=self.clock, **options)

    def reopen(self) -> None:
        """Close the engine (finishing its queue) and start a new one on the same file."""
        self.engine.close()
        self.engine = self._open()

    def close(self) -> None:
        self.engine.close()

    def call(self, operation: Callable[[BatchContext], T]) -> T:
        return self.engine.call(operation)

    def peek(self, operation: Callable[[BatchContext], T]) -> T:
        """What ``operation`` answers inside a batch, everything it did there undone."""
        answers: list[T] = []

        def run(ctx: BatchContext) -> None:
            answers.append(operation(ctx))
            raise _Undo

        with pytest.raises(_Undo):
            self.call(run)
        return answers[0]

    def ledger(self, code: str = USD, scale: int = 2) -> None:
        self.engine.create_ledger(code, scale)
        self._ledgers.add(code)

    # ------------------------------------------------------------- set-up shorthands
    def payer(
        self,
        payer_id: str,
        mode: str = "prepay",
        *,
        credit_limit: int = 0,
        caps: tuple[SpendCap, ...] = (),
        ledger: str = USD,
    ) -> Payer:
        payer, _ = self.call(
            payments.create_payer(PayerRequest(payer_id, ledger, mode, credit_limit, caps), self.rails)
        )
        return payer

    def merchant(self, merchant_id: str, *, bps: int = 0, fixed: int = 0, ledger: str = USD) -> Merchant:
        request = MerchantRequest(merchant_id, ledger, fee_percent_bps=bps, fee_fixed=fixed)
        merchant, _ = self.call(payments.create_merchant(request, self.rails))
        return merchant

    def topup(self, topup_id: str, payer_id: str, amount: int, rail: str = "card", *, fail: bool = False) -> Topup:
        record, _ = self.call(payments.topup(TopupRequest(topup_id, payer_id, amount, rail, fail), self.rails))
        return record

    def fund(self, payer_id: str, amount: int) -> None:
        """Put exactly ``amount`` in the payer's wallet through the card rail."""
        self.topup(f"fund-{payer_id}-{self.engine.transfer_count()}", payer_id, amount)

    def charge(self, charge_id: str, payer_id: str, merchant_id: str, amount: int) -> Charge:
        record, _ = self.call(payments.charge(ChargeRequest(charge_id, payer_id, merchant_id, amount)))
        return record

    def refund(self, refund_id: str, charge_id: str, amount: int | None = None) -> Refund:
        record, _ = self.call(payments.refund(RefundRequest(refund_id, charge_id, amount)))
        return record

    def voucher(self, code: str, amount: int, expires_in_s: int, ledger: str = USD) -> promo.Voucher:
        expires_at = self.clock.now_ns + expires_in_s * NS
        record, _ = self.call(promo.create_voucher(code, ledger, amount, expires_at, self.rails))
        return record

    def redeem(self, payer_id: str, code: str) -> promo.Voucher:
        record, _ = self.call(promo.redeem_voucher(payer_id, code))
        return record

    def expire_promo(self, payer_id: str, ledger: str = USD) -> int:
        return self.call(promo.expire_promo(payer_id, ledger))

    def buy_pass(self, pass_id: str, payer_id: str, merchant_id: str, price: int, duration_s: int) -> Pass:
        record, _ = self.call(buy_pass(pass_id, payer_id, merchant_id, price, duration_s))
        return record

    def close_statements(self, payer_ids: list[str], period_end_ns: int) -> list[Statement]:
        return self.call(statements.close_statements(payer_ids, period_end_ns))

    def settle_statement(self, statement_id: str, *, fail: bool = False, rail: str = "card") -> Statement:
        return self.call(statements.settle_statement(statement_id, rail, self.rails, fail))

    def suspend(self, payer_id: str) -> Payer:
        return self.call(payments.update_payer(payer_id, status="suspended"))

    # ------------------------------------------------------------- reading
    def balance(self, account_id: str) -> int:
        account = self.engine.account(account_id)
        assert account is not None, account_id
        return account.balance

    def wallet(self, payer_id: str, ledger: str = USD) -> int:
        return self.balance(chart.wallet_account(payer_id, ledger))

    def promo(self, payer_id: str, ledger: str = USD) -> int:
        return self.balance(chart.promo_account(payer_id, ledger))

    def tab(self, payer_id: str, ledger: str = USD) -> int:
        return self.balance(chart.tab_account(payer_id, ledger))

    def earnings(self, merchant_id: str) -> int:
        return self.balance(chart.merchant_account(merchant_id))

    def fees(self, ledger: str = USD) -> int:
        return self.balance(chart.fees_account(ledger))

    def rail_fees(self, ledger: str = USD) -> int:
        return self.balance(chart.rail_fees_account(ledger))

    def bank(self, ledger: str = USD) -> int:
        return self.balance(chart.bank_account(ledger))

    def clearing(self, rail: str, ledger: str = USD) -> int:
        return self.balance(chart.rail_clearing_account(rail, ledger))

    def read_payer(self, payer_id: str) -> Payer:
        body = self.engine.document(payments.PAYER, payer_id)
        assert body is not None
        return decode_payer(body)

    def read_charge(self, charge_id: str) -> Charge:
        body = self.engine.document(payments.CHARGE, charge_id)
        assert body is not None
        return decode_charge(body)

    def read_refund(self, refund_id: str) -> Refund:
        body = self.engine.document(payments.REFUND, refund_id)
        assert body is not None
        return decode_refund(body)

    def read_topup(self, topup_id: str) -> Topup:
        body = self.engine.document(payments.TOPUP, topup_id)
        assert body is not None
        return decode_topup(body)

    def read_promo(self, payer_id: str, ledger: str = USD) -> PayerPromo:
        return self.call(lambda ctx: payments.payer_promo(ctx, payer_id, ledger))

    def read_cap_usage(self, payer_id: str) -> CapUsage:
        body = self.engine.document(payments.CAP_USAGE, payer_id)
        return CapUsage(payer_id) if body is None else decode_cap_usage(body)

    def read_pass(self, pass_id: str) -> Pass:
        return self.call(lambda ctx: get_pass(ctx, pass_id))

    def read_statement(self, statement_id: str) -> Statement:
        return self.call(lambda ctx: statements.get_statement(ctx, statement_id))

    def grants_remaining(self, payer_id: str, ledger: str = USD) -> dict[str, int]:
        return {grant.id: grant.remaining for grant in self.read_promo(payer_id, ledger).grants}

    def snapshot(self) -> Snapshot:
        """Every account's four totals, by id: equal snapshots mean nothing moved."""
        return {
            account.id: (account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending)
            for account in self.engine.accounts(None, 100_000)
        }

    def check_books(self) -> None:
        """The ledger invariants: per ledger the balances add up to zero, and verify() passes."""
        totals: dict[str, int] = defaultdict(int)
        for account in self.engine.accounts(None, 100_000):
            totals[account.ledger] += account.balance
        assert all(total == 0 for total in totals.values()), dict(totals)
        self.engine.verify()
        assert self.engine.failure is None

    @contextmanager
    def moves_nothing(self) -> Iterator[None]:
        """Assert that the block leaves every balance and the transfer count unchanged."""
        before = self.snapshot()
        transfers = self.engine.transfer_count()
        yield
        assert self.snapshot() == before
        assert self.engine.transfer_count() == transfers
        assert self.engine.failure is None


def refused(world: World, operation: Callable[[BatchContext], Any], code: str, kind: type[ApiError] = ApiError) -> None:
    """Run ``operation``, expect it to fail with ``code`` (an error of ``kind``) and move nothing."""
    with world.moves_nothing(), pytest.raises(kind) as info:
        world.call(operation)
    assert info.value.code == code, info.value.code
