"""The bank test: many threads moving money at once for a few seconds, then a restart.

Afterwards: every ledger balances, no limit is crossed, every account's totals are exactly what
the acknowledged transfers add up to, and a restart changes nothing and loses nothing.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from ledger_testkit import (
    CMNED,
    DMNEC,
    LINKED,
    PENDING,
    POST,
    USD,
    VOID,
    all_accounts,
    assert_conserved,
    balances,
    open_engine,
)

from micropay.engine import Engine
from micropay.ledger import AccountRequest, Result, Transfer, TransferRequest

THREADS = 16
SECONDS = 4.0
WALLETS = [f"wallet-{i}" for i in range(12)]
MIRRORS = [f"mirror-{i}" for i in range(2)]
SHOPS = [f"shop-{i}" for i in range(4)]
ACCOUNTS = ["mint", *WALLETS, *MIRRORS, *SHOPS]


def set_up(engine: Engine, rng: random.Random) -> None:
    engine.create_ledger(USD, 2)
    requests = [AccountRequest("mint", USD)]
    requests += [AccountRequest(w, USD, DMNEC, credit_limit=rng.choice([0, 0, 25, 100])) for w in WALLETS]
    requests += [AccountRequest(m, USD, CMNED, credit_limit=150) for m in MIRRORS]
    requests += [AccountRequest(s, USD) for s in SHOPS]
    assert all(code is Result.OK for code, _ in engine.create_accounts(requests))
    funding = [TransferRequest(f"seed-{w}", "mint", w, 200, USD) for w in WALLETS]
    assert all(code is Result.OK for code, _ in engine.create_transfers(funding))


class Client(threading.Thread):
    """Submits random transfers until the deadline, remembering what was acknowledged."""

    def __init__(self, engine: Engine, number: int, deadline: float) -> None:
        super().__init__(name=f"client-{number}")
        self.engine = engine
        self.number = number
        self.deadline = deadline
        self.rng = random.Random(number)
        self.acked: list[Transfer] = []
        self.refused: list[str] = []
        self.open_pendings: list[str] = []
        self.error: BaseException | None = None
        self.serial = 0

    def new_id(self) -> str:
        self.serial += 1
        return f"c{self.number}-{self.serial}"

    def random_transfer(self, flags: int = 0) -> TransferRequest:
        rng = self.rng
        debit = rng.choice(ACCOUNTS)
        credit = rng.choice([a for a in ACCOUNTS if a != debit])
        return TransferRequest(self.new_id(), debit, credit, rng.randrange(1, 120), USD, flags=flags)

    def submit(self, requests: list[TransferRequest]) -> None:
        for request, (code, applied) in zip(requests, self.engine.create_transfers(requests), strict=True):
            if code is Result.OK:
                assert applied is not None
                self.acked.append(applied)
                if applied.flags & PENDING:
                    self.open_pendings.append(applied.id)
            else:
                assert code is not Result.EXISTS
                self.refused.append(request.id)

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                choice = self.rng.random()
                if choice < 0.45:
                    self.submit([self.random_transfer()])
                elif choice < 0.7:
                    self.submit([self.random_transfer() for _ in range(self.rng.randrange(2, 6))])
                elif choice < 0.8:
                    length = self.rng.randrange(2, 4)
                    self.submit([self.random_transfer(LINKED if i < length - 1 else 0) for i in range(length)])
                elif choice < 0.9 or not self.open_pendings:
                    self.submit([self.random_transfer(PENDING)])
                else:
                    pending_id = self.open_pendings.pop(self.rng.randrange(len(self.open_pendings)))
                    flags = self.rng.choice([POST, VOID])
                    amount = None if flags == VOID else self.rng.choice([None, 1])
                    self.submit([TransferRequest(self.new_id(), amount=amount, flags=flags, pending_id=pending_id)])
        except BaseException as error:
            self.error = error


def expected_totals(transfers: list[Transfer]) -> dict[str, list[int]]:
    """Each account's four totals, recomputed from the acknowledged transfers alone."""
    totals = {account_id: [0, 0, 0, 0] for account_id in ACCOUNTS}
    by_id = {t.id: t for t in transfers}
    for t in sorted(transfers, key=lambda t: t.timestamp):
        if t.flags & (POST | VOID):
            pending = by_id[t.pending_id]
            totals[pending.debit_account_id][2] -= pending.amount
            totals[pending.credit_account_id][3] -= pending.amount
            if t.flags & POST:
                totals[t.debit_account_id][0] += t.amount
                totals[t.credit_account_id][1] += t.amount
        elif t.flags & PENDING:
            totals[t.debit_account_id][2] += t.amount
            totals[t.credit_account_id][3] += t.amount
        else:
            totals[t.debit_account_id][0] += t.amount
            totals[t.credit_account_id][1] += t.amount
    return totals


@pytest.mark.slow
def test_sixteen_threads_of_random_transfers_keep_every_invariant(database: Path | str) -> None:
    """On SQLite one engine serves all threads; on PostgreSQL four engines write at once."""
    writers = 1 if isinstance(database, Path) else 4
    engines = [open_engine(database, batch_window_s=0.001) for _ in range(writers)]
    engine = engines[0]
    try:
        set_up(engine, random.Random(7))
        seeded = [engine.transfer(f"seed-{w}") for w in WALLETS]
        limit_changes = threading.Event()

        def change_limits() -> None:  # credit limits move while money does
            rng = random.Random(99)
            while not limit_changes.wait(0.01):
                result, _ = engine.set_credit_limit(rng.choice(WALLETS + MIRRORS), rng.choice([0, 10, 50, 150]))
                assert result in (Result.OK, Result.CREDIT_LIMIT_BELOW_USAGE)

        limiter = threading.Thread(target=change_limits)
        clients = [Client(engines[n % writers], n, time.monotonic() + SECONDS) for n in range(THREADS)]
        limiter.start()
        for client in clients:
            client.start()
        for client in clients:
            client.join(SECONDS + 60)
        limit_changes.set()
        limiter.join(30)
        assert [c.error for c in clients] == [None] * THREADS

        acked = [t for t in seeded if t is not None] + [t for c in clients for t in c.acked]
        refused = [i for c in clients for i in c.refused]
        assert len(acked) > 500 and len(refused) >= 10, (len(acked), len(refused))  # some were refused

        assert_conserved(engine)
        accounts = all_accounts(engine)
        for account in accounts.values():
            if account.flags & DMNEC:
                assert account.debits_posted + account.debits_pending <= account.credits_posted + account.credit_limit
            if account.flags & CMNED:
                assert account.credits_posted + account.credits_pending <= account.debits_posted + account.credit_limit
        expected = expected_totals(acked)
        assert {a: list(t) for a, t in balances(engine).items()} == expected
        before = balances(engine)
    finally:
        for opened in engines:
            opened.close()

    engine = open_engine(database)
    try:
        assert balances(engine) == before
        assert_conserved(engine)
        for transfer in acked:
            assert engine.transfer(transfer.id) == transfer
        for transfer_id in refused:
            assert engine.transfer(transfer_id) is None
        assert engine.transfer_count() == len(acked)
    finally:
        engine.close()
