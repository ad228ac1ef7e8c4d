"""``micropay bench ledger``: durable transfers per second through the engine, against a
hand-written per-transfer SQLite ledger on the same workload; or, with ``--db postgresql://``,
through one or several engines writing one PostgreSQL database at once."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from micropay.bench.report import Reporter
from micropay.engine import Engine
from micropay.errors import MicropayError
from micropay.ledger import AccountRequest, Result, TransferOutcome, TransferRequest, outcome_codes
from micropay.ledger.limits import BATCH_SIZE_MAX
from micropay.runtime import serving_gc
from micropay.store import SQLiteStore, open_store

LEDGER = "USD"
IN_FLIGHT_MAX = 4
"""Batches the load generator keeps queued, so the engine never waits for the next one."""


def make_workload(accounts: int, transfers: int, seed: int, prefix: str = "") -> list[TransferRequest]:
    """Random transfers between distinct accounts, amounts 1..999, ids random 16-hex strings
    (after ``prefix``, which also prefixes account ids: a run on a used database stays apart)."""
    rng = random.Random(seed)
    workload = []
    for _ in range(transfers):
        debit = rng.randrange(accounts)
        credit = rng.randrange(accounts - 1)
        credit += credit >= debit
        workload.append(
            TransferRequest(
                id=f"{prefix}{rng.getrandbits(64):016x}",
                debit_account_id=f"{prefix}acct-{debit}",
                credit_account_id=f"{prefix}acct-{credit}",
                amount=rng.randrange(1, 1000),
                ledger=LEDGER,
            )
        )
    return workload


def _failures(outcomes: Sequence[TransferOutcome]) -> int:
    return sum(code is not Result.OK for code in outcome_codes(outcomes))


def _create_accounts(engine: Engine, accounts: int, prefix: str = "") -> None:
    engine.create_ledger(LEDGER, 2)
    for start in range(0, accounts, BATCH_SIZE_MAX):
        stop = min(accounts, start + BATCH_SIZE_MAX)
        engine.create_accounts([AccountRequest(f"{prefix}acct-{i}", LEDGER) for i in range(start, stop)])


def _load(engine: Engine, workload: Sequence[TransferRequest], batch_size: int) -> int:
    """Submit ``workload`` in batches, ``IN_FLIGHT_MAX`` in flight; return how many failed."""
    in_flight: deque[Future[Sequence[TransferOutcome]]] = deque()
    failures = 0
    for start in range(0, len(workload), batch_size):
        in_flight.append(engine.submit_transfers(workload[start : start + batch_size]))
        if len(in_flight) >= IN_FLIGHT_MAX:
            failures += _failures(in_flight.popleft().result())
    while in_flight:
        failures += _failures(in_flight.popleft().result())
    return failures


def run_engine(path: Path, accounts: int, workload: Sequence[TransferRequest], batch_size: int) -> tuple[float, Engine]:
    """Load ``workload`` through a fresh engine; return seconds taken and the (open) engine."""
    engine = Engine(SQLiteStore(path), batch_window_s=0)
    _create_accounts(engine, accounts)
    with serving_gc():
        started = time.perf_counter()
        failures = _load(engine, workload, batch_size)
        elapsed = time.perf_counter() - started
    if failures:
        raise MicropayError(f"{failures} benchmark transfers failed")
    return elapsed, engine


def run_shared(
    url: str, writers: int, accounts: int, workload: Sequence[TransferRequest], batch_size: int, prefix: str
) -> tuple[float, list[Engine]]:
    """Load ``workload`` through ``writers`` engines on one shared database, each taking every
    ``writers``-th batch at the same time; return seconds taken and the (open) engines."""
    engines = [Engine(open_store(url), batch_window_s=0) for _ in range(writers)]
    _create_accounts(engines[0], accounts, prefix)
    slices = [
        [request for start in range(n * batch_size, len(workload), writers * batch_size)
         for request in workload[start : start + batch_size]]
        for n in range(writers)
    ]  # fmt: skip
    failures = [0] * writers

    def load(n: int) -> None:
        failures[n] = _load(engines[n], slices[n], batch_size)

    threads = [threading.Thread(target=load, args=(n,)) for n in range(writers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if sum(failures):
        raise MicropayError(f"{sum(failures)} benchmark transfers failed")
    return elapsed, engines


def run_baseline(path: Path, accounts: int, workload: Sequence[TransferRequest], seconds_max: float) -> float:
    """Transfers/s of the classic design: one durable SQLite transaction per transfer."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE accounts (id TEXT PRIMARY KEY, debits INTEGER NOT NULL, credits INTEGER NOT NULL)")
    db.execute(
        "CREATE TABLE transfers (id TEXT PRIMARY KEY, debit TEXT NOT NULL, credit TEXT NOT NULL,"
        " amount INTEGER NOT NULL)"
    )
    db.executemany("INSERT INTO accounts VALUES (?, 0, 0)", [(f"acct-{i}",) for i in range(accounts)])
    done = 0
    started = time.perf_counter()
    for request in workload:
        db.execute("BEGIN IMMEDIATE")
        found = db.execute(
            "SELECT COUNT(*) FROM accounts WHERE id IN (?, ?)", (request.debit_account_id, request.credit_account_id)
        ).fetchone()[0]
        exists = db.execute("SELECT 1 FROM transfers WHERE id = ?", (request.id,)).fetchone()
        if found == 2 and exists is None:
            db.execute(
                "INSERT INTO transfers VALUES (?, ?, ?, ?)",
                (request.id, request.debit_account_id, request.credit_account_id, request.amount),
            )
            db.execute(
                "UPDATE accounts SET debits = debits + ? WHERE id = ?", (request.amount, request.debit_account_id)
            )
            db.execute(
                "UPDATE accounts SET credits = credits + ? WHERE id = ?", (request.amount, request.credit_account_id)
            )
        db.execute("COMMIT")
        done += 1
        if time.perf_counter() - started >= seconds_max:
            break
    elapsed = time.perf_counter() - started
    db.close()
    return done / elapsed


def bench_ledger(
    report: Reporter,
    *,
    accounts: int = 10_000,
    transfers: int = 1_000_000,
    batch_size: int = BATCH_SIZE_MAX,
    baseline_seconds: float = 5.0,
    seed: int = 42,
    directory: str | None = None,
    db: str | None = None,
    writers: int = 1,
) -> None:
    report.note(f"workload: {transfers:,} random transfers among {accounts:,} accounts, batches of {batch_size}")
    if db is not None and db.startswith(("postgresql://", "postgres://")):
        bench_shared(report, db, writers=writers, accounts=accounts, transfers=transfers, batch_size=batch_size)
        return
    workload = make_workload(accounts, transfers, seed)
    with tempfile.TemporaryDirectory(dir=directory, prefix="micropay-bench-") as tmp:
        elapsed, engine = run_engine(Path(tmp) / "engine.db", accounts, workload, batch_size)
        try:
            engine.verify()
            stats = engine.stats
        finally:
            engine.close()
        reopened_started = time.perf_counter()
        with Engine(SQLiteStore(Path(tmp) / "engine.db")) as reopened:
            recovered = reopened.transfer_count()
        recovery_s = time.perf_counter() - reopened_started
        if recovered != transfers:
            raise MicropayError(f"recovered {recovered} transfers, expected {transfers}")
        engine_rate = transfers / elapsed
        report.figure("transfers_per_s", engine_rate, "1/s")
        report.figure("elapsed_s", elapsed, "s")
        report.figure("batches", stats.batches, "1")
        report.figure("apply_s", stats.apply_s, "s")
        report.figure("write_s", stats.write_s, "s")
        report.figure("recovery_s", recovery_s, "s")
        baseline_rate = run_baseline(Path(tmp) / "baseline.db", accounts, workload, baseline_seconds)
        report.figure("baseline_transfers_per_s", baseline_rate, "1/s")
        report.figure("ratio", engine_rate / baseline_rate, "x")
    report.note(f"pid {os.getpid()}: done")


def bench_shared(report: Reporter, url: str, *, writers: int, accounts: int, transfers: int, batch_size: int) -> None:
    """The same workload through ``writers`` engines on a PostgreSQL database (new ids each run)."""
    prefix = f"b{os.urandom(4).hex()}-"
    workload = make_workload(accounts, transfers, int.from_bytes(os.urandom(4)), prefix)
    report.note(f"{writers} engine(s) on {url.split('@')[-1]}, ids prefixed {prefix}")
    elapsed, engines = run_shared(url, writers, accounts, workload, batch_size, prefix)
    try:
        engines[0].verify()
        retries = sum(engine.stats.retries for engine in engines)
        apply_s = sum(engine.stats.apply_s for engine in engines)
        write_s = sum(engine.stats.write_s for engine in engines)
    finally:
        for engine in engines:
            engine.close()
    report.figure("transfers_per_s", transfers / elapsed, "1/s")
    report.figure("elapsed_s", elapsed, "s")
    report.figure("writers", writers, "1")
    report.figure("retries", retries, "1")
    report.figure("apply_s", apply_s, "s")
    report.figure("write_s", write_s, "s")
