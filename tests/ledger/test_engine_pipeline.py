"""A single-writer engine writes one batch while it applies the next: the next sees everything
the one being written did, nobody is answered (and no read answers) before what they saw is on
disk, and a write that fails takes the batch applied on top of it along, leaving memory equal
to disk."""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_testkit import USD, Clock, balances, fund, setup_accounts, transfer, wallet

from micropay.engine import BatchContext, Engine
from micropay.errors import StoreError
from micropay.ledger import Journal, Result
from micropay.store import SQLiteStore
from micropay.store.base import Document, DocumentBlock

WAIT_S = 30


class GatedStore(SQLiteStore):
    """A real SQLite store whose next write can be held at a gate (and then fail, as a full disk
    would), so a test can act while a batch is being written."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.gate: threading.Event | None = None
        self.fail = False

    def hold_next_write(self, fail: bool = False) -> threading.Event:
        gate = threading.Event()
        self.gate, self.fail = gate, fail
        return gate

    def write(self, journal: Journal, documents: Sequence[Document], blocks: Sequence[DocumentBlock] = ()) -> None:
        gate, self.gate = self.gate, None
        if gate is not None:
            self.entered.set()
            assert gate.wait(WAIT_S)
            if self.fail:
                raise StoreError("injected write failure")
        super().write(journal, documents, blocks)


@pytest.fixture
def store(db_path: Path) -> GatedStore:
    return GatedStore(db_path)


@pytest.fixture
def engine(store: GatedStore, clock: Clock) -> Engine:
    engine = Engine(store, clock_ns=clock, batch_window_s=0)
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "bank", wallet("w"), "shop")
    fund(engine, "w", 100)
    return engine


def _pay_and_note(ctx: BatchContext) -> Result:
    ctx.put_document("note", "n1", b'{"n": 1}')
    [(code, _)] = ctx.create_transfers([transfer("t1", "w", "shop", 30)])
    return code


def _start_held_batch(engine: Engine, store: GatedStore, fail: bool = False) -> tuple[threading.Event, Future[Result]]:
    """Submit a batch paying 30 from w and writing a note, and hold its write at the gate."""
    gate = store.hold_next_write(fail)
    first = engine.submit(_pay_and_note)
    assert store.entered.wait(WAIT_S)
    return gate, first


def test_a_batch_applied_while_the_one_before_is_written_sees_its_documents_balances_and_transfers(
    engine: Engine, store: GatedStore
) -> None:
    try:
        gate, first = _start_held_batch(engine, store)
        applied = threading.Event()

        def look(ctx: BatchContext) -> tuple[bytes | None, int | None, Result]:
            [(code, _)] = ctx.create_transfers([transfer("t1", "w", "shop", 30)])  # the same request again
            applied.set()
            return ctx.get_document("note", "n1"), ctx.available("w"), code

        second = engine.submit(look)
        assert applied.wait(WAIT_S)
        assert not first.done() and not second.done()  # nothing is answered before it is on disk
        gate.set()
        assert first.result(WAIT_S) is Result.OK
        assert second.result(WAIT_S) == (b'{"n": 1}', 70, Result.EXISTS)
    finally:
        engine.close()


def test_a_failed_write_fails_the_batch_applied_on_top_of_it_and_memory_equals_disk(
    engine: Engine, store: GatedStore, db_path: Path, clock: Clock
) -> None:
    try:
        before = balances(engine)
        gate, first = _start_held_batch(engine, store, fail=True)
        applied = threading.Event()

        def spend_the_rest(ctx: BatchContext) -> Result:
            [(code, _)] = ctx.create_transfers([transfer("t2", "w", "shop", 70)])  # only 70 left after t1
            applied.set()
            return code

        second = engine.submit(spend_the_rest)
        assert applied.wait(WAIT_S)
        gate.set()
        with pytest.raises(StoreError, match="injected"):
            first.result(WAIT_S)
        with pytest.raises(StoreError, match="the batch before it failed to write"):
            second.result(WAIT_S)
        assert balances(engine) == before
        assert engine.transfer("t1") is None and engine.transfer("t2") is None
        assert engine.document("note", "n1") is None
        engine.verify()
        [(code, _)] = engine.create_transfers([transfer("t3", "w", "shop", 100)])  # all 100 are there again
        assert code is Result.OK
        after = balances(engine)
    finally:
        engine.close()
    reopened = Engine(SQLiteStore(db_path), clock_ns=clock)
    try:
        assert balances(reopened) == after
        assert reopened.transfer("t1") is None and reopened.transfer("t3") is not None
    finally:
        reopened.close()


@pytest.mark.parametrize("fail", [False, True], ids=["written", "failed"])
def test_a_read_waits_until_what_it_saw_is_on_disk(engine: Engine, store: GatedStore, fail: bool) -> None:
    try:
        gate, first = _start_held_batch(engine, store, fail=fail)
        seen: list[int] = []

        def read() -> None:
            account = engine.account("w")
            assert account is not None
            seen.append(account.debits_posted)

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(0.2)
        assert reader.is_alive()  # it saw t1 in memory, and t1 is not on disk yet
        gate.set()
        reader.join(WAIT_S)
        assert seen == ([0] if fail else [30])
        assert engine.document("note", "n1") == (None if fail else b'{"n": 1}')
        with pytest.raises(StoreError) if fail else contextlib.nullcontext():
            first.result(WAIT_S)
    finally:
        engine.close()


@pytest.mark.parametrize("fail", [False, True], ids=["written", "failed"])
def test_an_operation_that_reads_the_store_itself_waits_for_the_batches_before_it(
    engine: Engine, store: GatedStore, fail: bool
) -> None:
    try:
        gate, _ = _start_held_batch(engine, store, fail=fail)

        reading = threading.Event()

        def read_the_store(ctx: BatchContext) -> bytes | None:
            reading.set()
            ctx.settled()
            return store.read_document("note", "n1")

        second = engine.submit(read_the_store)
        assert reading.wait(WAIT_S)
        gate.set()
        if fail:
            with pytest.raises(StoreError):
                second.result(WAIT_S)
        else:
            assert second.result(WAIT_S) == b'{"n": 1}'
    finally:
        engine.close()


# ----------------------------------------------------------------------------- the property
class FlakyStore(SQLiteStore):
    """A real SQLite store failing the writes whose numbers (counted from when ``failing`` is
    set) are in ``failing``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing: frozenset[int] = frozenset()
        self.count = 0

    def write(self, journal: Journal, documents: Sequence[Document], blocks: Sequence[DocumentBlock] = ()) -> None:
        number, self.count = self.count, self.count + 1
        if number in self.failing:
            raise StoreError("injected write failure")
        super().write(journal, documents, blocks)


@settings(max_examples=25, deadline=None)
@given(
    amounts=st.lists(st.integers(1, 60), min_size=1, max_size=16),
    failing=st.frozensets(st.integers(0, 12), max_size=4),
)
def test_whatever_writes_fail_every_answered_transfer_is_on_disk_and_memory_equals_disk(
    amounts: list[int], failing: frozenset[int]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "ledger.db"
        store = FlakyStore(path)
        engine = Engine(store, batch_window_s=0)
        try:
            engine.create_ledger(USD, 2)
            setup_accounts(engine, "bank", wallet("w"), "shop")
            fund(engine, "w", 200)
            store.count, store.failing = 0, failing
            futures = [
                engine.submit_transfers([transfer(f"t{i}", "w", "shop", amount)]) for i, amount in enumerate(amounts)
            ]
            paid: dict[str, int] = {}
            lost: list[str] = []
            for i, future in enumerate(futures):
                try:
                    [(code, _)] = future.result(WAIT_S)
                except StoreError:
                    lost.append(f"t{i}")
                    continue
                if code is Result.OK:
                    paid[f"t{i}"] = amounts[i]
            assert all(engine.transfer(transfer_id) is not None for transfer_id in paid)
            assert all(engine.transfer(transfer_id) is None for transfer_id in lost)
            wallet_account = engine.account("w")
            assert wallet_account is not None and wallet_account.debits_posted == sum(paid.values())
            engine.verify()
            in_memory = balances(engine)
        finally:
            engine.close()
        reopened = Engine(SQLiteStore(path))
        try:
            assert balances(reopened) == in_memory
            assert all(reopened.transfer(transfer_id) is not None for transfer_id in paid)
            assert all(reopened.transfer(transfer_id) is None for transfer_id in lost)
        finally:
            reopened.close()
