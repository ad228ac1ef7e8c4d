"""Helpers shared by the pool tests: a settable UTC clock and a pool "world" (an engine on a real
SQLite file, the simulated rails, and shorthands for the pool operations).

Imported by the tests in this directory (pytest puts it on sys.path).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from micropay.engine import BatchContext, Engine
from micropay.errors import ApiError
from micropay.models import chart, payments
from micropay.models import pools as P
from micropay.models.payments import PayerRequest
from micropay.settlement.rails import Rails
from micropay.store import SQLiteStore

T = TypeVar("T")

NS = 1_000_000_000
MINUTE_NS = 60 * NS
DAY_NS = 86_400 * NS
USD = "USD"
SPLIT = (("owner", 7000), ("host", 1500), ("referrer", 500), ("platform", 1000))
"""The split used unless a test says otherwise: 70 % owner, 15 % host, 5 % referrer, 10 % platform."""


def utc_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC).timestamp()) * NS


START_NS = utc_ns(2026, 3, 10, 12, 0, 0)
"""Tests start at noon UTC in the middle of March 2026."""
PERIOD = "2026-03"


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


class PoolWorld:
    """One engine on a SQLite file with the USD ledger (scale 2), and shorthands for pools."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = path
        self.clock = clock
        self.rails = Rails()
        self.engine = Engine(SQLiteStore(path), clock_ns=clock, batch_window_s=0)
        self._reads = 0

    def close(self) -> None:
        self.engine.close()

    def call(self, operation: Callable[[BatchContext], T]) -> T:
        return self.engine.call(operation)

    def ledger(self, code: str = USD, scale: int = 2) -> None:
        self.engine.create_ledger(code, scale)

    # ------------------------------------------------------------- set-up shorthands
    def publisher(self, publisher_id: str, *, ledger: str = USD, site: bool = True) -> P.Publisher:
        """A publisher; with ``site``, also its site ``site-{id}`` and content ``art-{id}``."""
        publisher, _ = self.call(P.create_publisher(publisher_id, ledger, self.rails))
        if site:
            self.call(P.create_site(f"site-{publisher_id}", publisher_id))
            self.call(P.create_content(f"art-{publisher_id}", publisher_id))
        return publisher

    def pool(
        self,
        pool_id: str = "pool1",
        *,
        price: int = 1000,
        split: tuple[tuple[str, int], ...] = SPLIT,
        unread: str = "carry",
        window_s: int = P.READ_WINDOW_S_DEFAULT,
        ledger: str = USD,
    ) -> P.Pool:
        pool, _ = self.call(P.create_pool(P.PoolRequest(pool_id, ledger, price, split, unread, window_s), self.rails))
        return pool

    def payer(self, payer_id: str, funds: int = 10_000, *, ledger: str = USD) -> None:
        self.call(payments.create_payer(PayerRequest(payer_id, ledger, "prepay"), self.rails))
        if funds:
            topup = payments.TopupRequest(f"fund-{payer_id}", payer_id, funds, "card")
            self.call(payments.topup(topup, self.rails))

    def join(self, pool_id: str, payer_id: str) -> P.Membership:
        membership, _ = self.call(P.join_pool(pool_id, payer_id))
        return membership

    def member(self, payer_id: str, pool_id: str = "pool1", funds: int = 10_000) -> None:
        self.payer(payer_id, funds)
        self.join(pool_id, payer_id)

    def read_request(
        self,
        payer_id: str,
        content_id: str,
        host_site_id: str,
        referrer_site_id: str = "",
        *,
        pool_id: str = "pool1",
        at_ns: int | None = None,
        read_id: str | None = None,
    ) -> P.ReadRequest:
        if read_id is None:
            self._reads += 1
            read_id = f"rd{self._reads}"
        timestamp = self.clock.now_ns if at_ns is None else at_ns
        return P.ReadRequest(read_id, pool_id, payer_id, content_id, host_site_id, referrer_site_id, timestamp)

    def read(self, payer_id: str, content_id: str, host_site_id: str, referrer_site_id: str = "", **kw: Any) -> P.Read:
        record, _ = self.call(
            P.record_read(self.read_request(payer_id, content_id, host_site_id, referrer_site_id, **kw))
        )
        return record

    def distribute(self, period: str = PERIOD, pool_id: str = "pool1") -> P.Distribution:
        distribution, replayed = P.run_distribution(self.engine, pool_id, period)
        assert not replayed
        return distribution

    # ------------------------------------------------------------- reading
    def balance(self, account_id: str) -> int:
        account = self.engine.account(account_id)
        assert account is not None, account_id
        return account.balance

    def earned(self, publisher_id: str) -> int:
        return self.balance(chart.publisher_account(publisher_id))

    def pool_balance(self, pool_id: str = "pool1") -> int:
        return self.balance(chart.pool_account(pool_id))

    def fees(self, ledger: str = USD) -> int:
        return self.balance(chart.fees_account(ledger))

    def wallet(self, payer_id: str) -> int:
        return self.balance(chart.wallet_account(payer_id, USD))

    def get_pool(self, pool_id: str = "pool1") -> P.Pool:
        body = self.engine.document(P.POOL, pool_id)
        assert body is not None
        return P.decode_pool(body)

    def get_read(self, read_id: str) -> P.Read:
        body = self.engine.document(P.READ, read_id)
        assert body is not None
        return P.decode_read(body)

    def counted(self, payer_id: str, period: str = PERIOD, pool_id: str = "pool1") -> dict[str, Any]:
        """A member's counted reads: the total and, per role, per publisher (empty roles left out)."""
        body = self.engine.document(P.MEMBER_READS, P.member_key(pool_id, period, payer_id))
        return {} if body is None else {key: value for key, value in P.decode_member_counts(body).items() if value}

    def earnings(self, publisher_id: str, period: str = PERIOD, pool_id: str = "pool1") -> P.Earnings:
        body = self.engine.document(P.EARNINGS, P.earnings_key(publisher_id, period, pool_id))
        assert body is not None
        return P.decode_earnings(body)

    def documents(self, *kinds: str) -> dict[tuple[str, str], Any]:
        """Every committed document of these kinds, decoded, by (kind, id)."""
        found: dict[tuple[str, str], Any] = {}
        for kind in kinds:
            for document_id, body in self.engine.store.list_documents(kind, None, 1_000_000):
                found[(kind, document_id)] = orjson.loads(body)
        return found

    def snapshot(self) -> Snapshot:
        return {
            account.id: (account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending)
            for account in self.engine.accounts(None, 100_000)
        }

    def check_books(self) -> None:
        totals: dict[str, int] = defaultdict(int)
        for account in self.engine.accounts(None, 100_000):
            totals[account.ledger] += account.balance
        assert all(total == 0 for total in totals.values()), dict(totals)
        self.engine.verify()
        assert self.engine.failure is None

    @contextmanager
    def moves_nothing(self) -> Iterator[None]:
        before = self.snapshot()
        transfers = self.engine.transfer_count()
        yield
        assert self.snapshot() == before
        assert self.engine.transfer_count() == transfers
        assert self.engine.failure is None


def refused(
    world: PoolWorld, operation: Callable[[BatchContext], Any], code: str, kind: type[ApiError] = ApiError
) -> ApiError:
    """Run ``operation``, expect it to fail with ``code`` (an error of ``kind``) and move nothing."""
    with world.moves_nothing(), pytest.raises(kind) as info:
        world.call(operation)
    assert info.value.code == code, (info.value.code, info.value.message)
    return info.value


def line_map(distribution: P.Distribution) -> dict[tuple[str, str], int]:
    return {(line.recipient_id, line.role): line.amount for line in distribution.lines}
