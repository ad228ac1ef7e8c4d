"""Small helpers shared by the ledger-core tests: a settable clock, request builders and
whole-ledger snapshots. Imported by the tests in this directory (pytest puts it on sys.path)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from micropay.engine import Engine
from micropay.ledger import (
    Account,
    AccountFlags,
    AccountRequest,
    Result,
    Transfer,
    TransferFlags,
    TransferOutcome,
    TransferRequest,
)
from micropay.store import SQLiteStore, open_store

NS = 1_000_000_000
START_NS = 1_700_000_000 * NS

USD = "USD"
EUR = "EUR"

DMNEC = AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
CMNED = AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS

LINKED = TransferFlags.LINKED
PENDING = TransferFlags.PENDING
POST = TransferFlags.POST_PENDING
VOID = TransferFlags.VOID_PENDING
BALANCING_DEBIT = TransferFlags.BALANCING_DEBIT
BALANCING_CREDIT = TransferFlags.BALANCING_CREDIT


class Clock:
    """An injectable engine clock that only moves when a test moves it."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float = 0, ns: int = 0) -> None:
        self.now_ns += int(seconds * NS) + ns


def open_engine(where: Path | str, clock: Callable[[], int] = time.time_ns, **options: Any) -> Engine:
    """An engine on a real SQLite file (a path) or database (a URL); ``batch_window_s``
    defaults to 0 (no waiting)."""
    options.setdefault("batch_window_s", 0)
    store = SQLiteStore(where) if isinstance(where, Path) else open_store(where)
    return Engine(store, clock_ns=clock, **options)


class Engines:
    """Opens engines on one database (a SQLite file or a PostgreSQL URL) with one clock;
    closes whatever is still open."""

    def __init__(self, where: Path | str, clock: Clock) -> None:
        self.where = where
        self.clock = clock
        self._open: list[Engine] = []

    @property
    def path(self) -> Path:
        """The SQLite file (for tests that look inside it)."""
        assert isinstance(self.where, Path), "this test needs a SQLite file"
        return self.where

    def open(self, **options: Any) -> Engine:
        engine = open_engine(self.where, self.clock, **options)
        self._open.append(engine)
        return engine

    def reopen(self, engine: Engine, **options: Any) -> Engine:
        """Close ``engine`` (finishing its queue) and start a new one on the same file: recovery."""
        engine.close()
        return self.open(**options)

    def close_all(self) -> None:
        for engine in self._open:
            engine.close()


def transfer(
    transfer_id: str,
    debit: str = "",
    credit: str = "",
    amount: int | None = None,
    ledger: str = USD,
    **fields: Any,
) -> TransferRequest:
    """A TransferRequest; the ledger defaults to USD, except on a post/void naming no accounts."""
    if int(fields.get("flags", 0)) & (POST | VOID) and not debit and not credit and ledger == USD:
        ledger = ""
    return TransferRequest(transfer_id, debit, credit, amount, ledger, **fields)


def setup_accounts(engine: Engine, *accounts: AccountRequest | str) -> None:
    """Create accounts, all answering ``ok`` (a bare string is a flagless USD account)."""
    requests = [AccountRequest(a, USD) if isinstance(a, str) else a for a in accounts]
    results = engine.create_accounts(requests)
    assert [code for code, _ in results] == [Result.OK] * len(requests), results


def wallet(account_id: str, credit_limit: int = 0, ledger: str = USD) -> AccountRequest:
    """An account whose debits must not exceed its credits (plus ``credit_limit``)."""
    return AccountRequest(account_id, ledger, flags=DMNEC, credit_limit=credit_limit)


def mirror(account_id: str, credit_limit: int = 0, ledger: str = USD) -> AccountRequest:
    """An account whose credits must not exceed its debits (plus ``credit_limit``)."""
    return AccountRequest(account_id, ledger, flags=CMNED, credit_limit=credit_limit)


def codes(outcomes: Sequence[TransferOutcome]) -> list[Result]:
    return [code for code, _ in outcomes]


def one(engine: Engine, request: TransferRequest) -> TransferOutcome:
    """Submit a single transfer and return its outcome."""
    outcomes = engine.create_transfers([request])
    assert len(outcomes) == 1
    return outcomes[0]


def ok(engine: Engine, *requests: TransferRequest) -> list[Transfer]:
    """Submit ``requests`` as one batch, insisting every one answers ``ok``."""
    outcomes = engine.create_transfers(list(requests))
    assert codes(outcomes) == [Result.OK] * len(requests), outcomes
    return [t for _, t in outcomes if t is not None]


_fund_ids = itertools.count(1)


def fund(engine: Engine, account_id: str, amount: int, source: str = "bank", ledger: str = USD) -> None:
    """Move ``amount`` into ``account_id`` from an unconstrained source account."""
    ok(engine, transfer(f"fund-{next(_fund_ids)}", source, account_id, amount, ledger))


def tick(engine: Engine) -> None:
    """Run one empty batch: what is due at the clock's time (pending expiry) happens."""
    engine.call(lambda _ctx: None)


def totals(account: Account | None) -> tuple[int, int, int, int]:
    """(debits_posted, credits_posted, debits_pending, credits_pending)."""
    assert account is not None
    return account.debits_posted, account.credits_posted, account.debits_pending, account.credits_pending


def all_accounts(engine: Engine) -> dict[str, Account]:
    found: dict[str, Account] = {}
    after: str | None = None
    while True:
        page = engine.accounts(after, 1000)
        if not page:
            return found
        found.update((account.id, account) for account in page)
        after = page[-1].id


def balances(engine: Engine) -> dict[str, tuple[int, int, int, int]]:
    """Every account's four totals."""
    return {account_id: totals(account) for account_id, account in all_accounts(engine).items()}


def ledger_sums(engine: Engine) -> dict[str, tuple[int, int, int, int]]:
    """Per ledger: (debits_posted, credits_posted, debits_pending, credits_pending) summed."""
    sums: dict[str, list[int]] = {}
    for account in all_accounts(engine).values():
        row = sums.setdefault(account.ledger, [0, 0, 0, 0])
        for i, value in enumerate(totals(account)):
            row[i] += value
    return {code: (row[0], row[1], row[2], row[3]) for code, row in sums.items()}


def assert_conserved(engine: Engine) -> None:
    """Per ledger, debits equal credits (posted and pending), and every invariant holds."""
    for code, (debits, credits, debits_pending, credits_pending) in ledger_sums(engine).items():
        assert debits == credits, f"ledger {code}: posted {debits} != {credits}"
        assert debits_pending == credits_pending, f"ledger {code}: pending {debits_pending} != {credits_pending}"
    engine.verify()


@contextmanager
def held(engine: Engine) -> Iterator[None]:
    """Keep the engine busy, so that what is submitted meanwhile lands in one batch."""
    started, release = threading.Event(), threading.Event()

    def block(_ctx: object) -> None:
        started.set()
        release.wait(30)

    future = engine.submit(block)
    assert started.wait(30)
    try:
        yield
    finally:
        release.set()
        future.result(30)
