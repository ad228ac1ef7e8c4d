"""The engine: group commit, the async face, back-pressure, closing, operations and reads."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from ledger_testkit import (
    PENDING,
    USD,
    Clock,
    Engines,
    balances,
    codes,
    held,
    ok,
    open_engine,
    setup_accounts,
    totals,
    transfer,
)

from micropay.engine import BatchContext, Engine
from micropay.errors import EngineClosedError, InvariantViolation, QueueFullError
from micropay.ledger import AccountRequest, Result, TransferOutcome


# ----------------------------------------------------------------------------- group commit
def test_group_commit_makes_many_concurrent_transfers_durable_with_few_syncs(db_path: Path) -> None:
    engine = open_engine(db_path, batch_window_s=0.002)
    try:
        engine.create_ledger(USD, 2)
        setup_accounts(engine, "bank", *(f"a{i}" for i in range(16)))
        syncs_before = engine.stats.syncs
        threads_count, per_thread = 16, 25
        barrier = threading.Barrier(threads_count)
        failures: list[BaseException] = []

        def client(number: int) -> None:
            try:
                barrier.wait(30)
                for i in range(per_thread):
                    ok(engine, transfer(f"c{number}-{i}", "bank", f"a{number}", 1))
            except BaseException as error:  # reported below
                failures.append(error)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures
        transfers = threads_count * per_thread
        syncs = engine.stats.syncs - syncs_before
        assert engine.account("bank").debits_posted == transfers
        assert syncs * 4 <= transfers, f"{syncs} syncs for {transfers} one-transfer submissions"
        assert engine.stats.events >= transfers and engine.stats.batches < engine.stats.events
    finally:
        engine.close()


def test_operations_queued_together_commit_in_one_batch_with_one_sync(engine: Engine) -> None:
    setup_accounts(engine, "a")
    syncs = engine.stats.syncs
    with held(engine):
        futures = [engine.submit_transfers([transfer(f"t{i}", "bank", "a", 1)]) for i in range(50)]
    assert all(codes(f.result(30)) == [Result.OK] for f in futures)
    assert engine.stats.syncs == syncs + 1


def test_a_submission_larger_than_the_batch_size_still_runs(db_path: Path) -> None:
    engine = open_engine(db_path, batch_size_max=4)
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "a", "b")
    future = engine.submit_transfers([transfer(f"t{i}", "a", "b", 1) for i in range(10)])
    # Not closed on failure: an engine that never takes the submission could not finish closing.
    assert codes(future.result(10)) == [Result.OK] * 10
    ok(engine, transfer("after", "a", "b", 1))
    engine.close()


# ----------------------------------------------------------------------------- asyncio
def test_the_async_api_works_from_asyncio(engine: Engine) -> None:
    setup_accounts(engine, "a")

    async def main() -> tuple[list[Any], Any]:
        outcomes = await asyncio.gather(
            *(engine.create_transfers_async([transfer(f"t{i}", "bank", "a", 2)]) for i in range(40))
        )
        balance = await engine.call_async(lambda ctx: ctx.account("a"))
        return list(outcomes), balance

    outcomes, account = asyncio.run(main())
    assert all(codes(o) == [Result.OK] for o in outcomes)
    assert account.credits_posted == 80
    assert engine.account("a").credits_posted == 80


# ----------------------------------------------------------------------------- back-pressure and closing
def test_queue_full_error_past_the_queue_bound(engines: Engines) -> None:
    engine = engines.open(queue_depth_max=5)
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "a", "b")
    with held(engine):
        queued = [engine.submit_transfers([transfer(f"t{i}", "a", "b", 1)]) for i in range(3)]
        queued.append(engine.submit_transfers([transfer("t3", "a", "b", 1), transfer("t4", "a", "b", 1)]))
        with pytest.raises(QueueFullError):
            engine.submit_transfers([transfer("t5", "a", "b", 1)])
        with pytest.raises(QueueFullError):
            engine.call(lambda _ctx: None)
    assert all(codes(f.result(30))[0] is Result.OK for f in queued)
    ok(engine, transfer("t5", "a", "b", 1))  # room again once the queue drains


def test_a_closed_engine_raises_engine_closed_error(engine: Engine) -> None:
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(EngineClosedError):
        engine.create_transfers([transfer("t", "bank", "x", 1)])
    with pytest.raises(EngineClosedError):
        engine.submit_transfers([transfer("t", "bank", "x", 1)])
    with pytest.raises(EngineClosedError):
        engine.create_accounts([AccountRequest("x", USD)])
    with pytest.raises(EngineClosedError):
        engine.create_ledger("EUR", 2)
    with pytest.raises(EngineClosedError):
        engine.set_credit_limit("bank", 1)
    with pytest.raises(EngineClosedError):
        engine.call(lambda _ctx: None)
    with pytest.raises(EngineClosedError):
        asyncio.run(engine.create_transfers_async([transfer("t", "bank", "x", 1)]))


def test_close_finishes_what_is_queued(engines: Engines) -> None:
    engine = engines.open()
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "a", "b")
    futures: list[Future[Any]] = []
    with held(engine):
        futures = [engine.submit_transfers([transfer(f"t{i}", "a", "b", 1)]) for i in range(20)]
        closer = threading.Thread(target=engine.close)
        closer.start()
    closer.join(30)
    assert all(codes(f.result(30)) == [Result.OK] for f in futures)
    assert engines.open().account("b").credits_posted == 20


# ----------------------------------------------------------------------------- operations
def test_a_raising_operation_undoes_only_its_own_effects(engine: Engine) -> None:
    setup_accounts(engine, "a")

    def half_done(ctx: BatchContext) -> None:
        ctx.create_transfers([transfer("doomed", "bank", "a", 7)])
        ctx.put_document("order", "o1", b"doomed")
        ctx.create_accounts([AccountRequest("ghost", USD)])
        raise ValueError("business rule says no")

    def fine(ctx: BatchContext) -> list[TransferOutcome]:
        ctx.put_document("order", "o2", b"kept")
        return list(ctx.create_transfers([transfer("kept", "bank", "a", 3)]))

    with held(engine):
        doomed = engine.submit(half_done)
        kept = engine.submit(fine)
    with pytest.raises(ValueError, match="business rule says no"):
        doomed.result(30)
    assert codes(kept.result(30)) == [Result.OK]
    assert engine.transfer("doomed") is None and engine.account("ghost") is None
    assert engine.document("order", "o1") is None
    assert engine.document("order", "o2") == b"kept"
    assert totals(engine.account("a")) == (0, 3, 0, 0)


def test_an_operation_sees_its_own_uncommitted_writes(engine: Engine) -> None:
    setup_accounts(engine, "a")

    def op(ctx: BatchContext) -> tuple[int, bytes | None]:
        ctx.create_transfers([transfer("t", "bank", "a", 4)])
        ctx.put_document("k", "1", b"v")
        account = ctx.account("a")
        assert account is not None
        return account.credits_posted, ctx.get_document("k", "1")

    assert engine.call(op) == (4, b"v")


def test_documents_written_with_a_batch_survive_restart(engine: Engine, engines: Engines) -> None:
    engine.call(lambda ctx: ctx.put_document("payer", "p1", b'{"mode": "prepay"}'))
    engine.call(lambda ctx: ctx.put_document("payer", "p1", b'{"mode": "postpay"}'))
    engine = engines.reopen(engine)
    assert engine.document("payer", "p1") == b'{"mode": "postpay"}'
    assert engine.store.list_documents("payer", None, 10) == [("p1", b'{"mode": "postpay"}')]


def test_an_invariant_violation_stops_the_engine_and_undoes_its_batch(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, "a")
    before = balances(engine)

    def corrupt(ctx: BatchContext) -> None:
        ctx.create_transfers([transfer("t", "bank", "a", 1)])
        raise InvariantViolation("simulated broken invariant")

    with pytest.raises(EngineClosedError):
        engine.call(corrupt)
    assert isinstance(engine.failure, InvariantViolation)
    with pytest.raises(EngineClosedError):
        engine.call(lambda _ctx: None)
    assert balances(engine) == before
    engine = engines.reopen(engine)
    assert balances(engine) == before


# ----------------------------------------------------------------------------- time and reads
def test_timestamps_increase_even_when_the_clock_goes_back(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, "a")
    (first,) = ok(engine, transfer("t1", "bank", "a", 1))
    clock.advance(-60)
    (second,) = ok(engine, transfer("t2", "bank", "a", 1))
    clock.advance(120)
    (third,) = ok(engine, transfer("t3", "bank", "a", 1))
    assert first.timestamp < second.timestamp < third.timestamp == clock.now_ns


def test_timestamps_keep_increasing_after_restart(engine: Engine, engines: Engines, clock: Clock) -> None:
    setup_accounts(engine, "a")
    (first,) = ok(engine, transfer("t1", "bank", "a", 1, flags=PENDING))
    engine = engines.reopen(engine)
    (second,) = ok(engine, transfer("t2", "bank", "a", 1))
    assert second.timestamp > first.timestamp


def test_reads_list_ledgers_and_accounts_in_pages(engine: Engine) -> None:
    setup_accounts(engine, *(f"acct-{i:02d}" for i in range(25)))
    assert [ledger.code for ledger in engine.ledgers()] == ["EUR", "USD"]
    first = engine.accounts(None, 10)
    second = engine.accounts(first[-1].id, 100)
    ids = [a.id for a in first + second]
    assert ids == sorted(ids) and len(ids) == 26 and "bank" in ids


def test_a_transfer_reads_back_as_it_was_applied(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, "a")
    (applied,) = ok(engine, transfer("t1", "bank", "a", 9, code=12, metadata=(("k", "v"),)))
    assert engine.transfer("t1") == applied
    assert engine.transfer("missing") is None
    engine = engines.reopen(engine)
    assert engine.transfer("t1") == applied
    assert engine.transfer_count() == 1
