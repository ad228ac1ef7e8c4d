"""The engine: the one write path for money.

Callers (threads or asyncio tasks) submit operations; one engine thread gathers what is
queued into a batch (up to ``batch_size_max`` events, waiting at most ``batch_window_s`` for
more), applies it in arrival order, writes it to the store in one transaction with one sync,
and only then answers every caller in the batch (group commit). A store failure fails the
whole batch and leaves nothing of it behind.

How a batch is applied depends on the store: a single-writer store (SQLite) keeps the whole
ledger in memory (``memory.MemoryCore``); a shared database (PostgreSQL) is read and locked
afresh for every batch, so several engines can write it at once (``shared.SharedCore``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol, TypeVar

from micropay.engine.context import Operation, Outcome, QueuedOp
from micropay.engine.memory import MemoryCore
from micropay.engine.stats import EngineStats
from micropay.errors import (
    EngineClosedError,
    MalformedRequest,
    QueueFullError,
    StoreError,
    require,
)
from micropay.ledger import (
    Account,
    AccountRequest,
    Ledger,
    Result,
    Transfer,
    TransferOutcome,
    TransferRequest,
)
from micropay.ledger.limits import BATCH_SIZE_MAX, NS_PER_S
from micropay.ledger.validate import (
    check_account_requests,
    check_batch_size,
    check_credit_limit,
    check_ledger,
    check_ledger_id,
    transfer_columns,
)
from micropay.store.base import LogStore, Store

T = TypeVar("T")

QUEUE_DEPTH_MAX = 64 * BATCH_SIZE_MAX
"""Most events waiting for the engine; past it submissions fail with QueueFullError."""

SHARED_BATCH_SUBMISSIONS_MAX = 4
"""On a shared database one transaction may carry this many full submissions: its fixed costs
(locking and updating each touched account once) then spread over more transfers."""

HISTORY_PAGE_MAX = 1000
"""Most transfers one account-history read returns."""


class _Core(Protocol):
    """How batches are applied and committed reads answered (see ``memory`` and ``shared``)."""

    shared: bool
    settle_lag_ns: int

    def process(self, ops: Sequence[QueuedOp], now_ns: int) -> list[Outcome]: ...
    def account(self, account_id: str) -> Account | None: ...
    def ledger(self, code: str) -> Ledger | None: ...
    def ledgers(self) -> list[Ledger]: ...
    def accounts(self, starting_after: str | None, limit: int) -> list[Account]: ...
    def transfer(self, transfer_id: str) -> Transfer | None: ...
    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]: ...
    def transfer_count(self) -> int: ...
    def verify(self) -> None: ...
    def document(self, kind: str, document_id: str) -> bytes | None: ...


def _core_for(store: Store, stats: EngineStats, verify_every_batches: int, clock_ns: Callable[[], int]) -> _Core:
    if getattr(store, "multi_writer", False):
        from micropay.engine.shared import SharedCore  # needs psycopg; SQLite deployments never import it
        from micropay.store.postgres import PostgresStore

        require(isinstance(store, PostgresStore), "a multi-writer store must be the PostgreSQL store")
        return SharedCore(store, stats, verify_every_batches, clock_ns)  # type: ignore[arg-type]
    return MemoryCore(store, stats, verify_every_batches)  # type: ignore[arg-type]


class Engine:
    """Owns the store and the batch loop. Start with ``Engine(store)``; stop with ``close()``."""

    def __init__(
        self,
        store: Store | LogStore,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        batch_size_max: int | None = None,
        batch_window_s: float = 0.001,
        queue_depth_max: int = QUEUE_DEPTH_MAX,
        verify_every_batches: int = 256,
        settle_lag_s: float | None = None,
    ) -> None:
        """``settle_lag_s`` overrides ``settle_lag_ns`` (default: what the store needs; 0 is safe
        when this is the only engine on the database)."""
        require(0 <= batch_window_s <= 0.1, "batch_window_s out of range")
        require(settle_lag_s is None or 0 <= settle_lag_s <= 3600, "settle_lag_s out of range")
        self._store = store
        self._clock_ns = clock_ns
        self.stats = EngineStats()
        self._core = _core_for(store, self.stats, verify_every_batches, clock_ns)
        batch_events_max = BATCH_SIZE_MAX * (SHARED_BATCH_SUBMISSIONS_MAX if self._core.shared else 1)
        if batch_size_max is None:
            batch_size_max = batch_events_max
        require(0 < batch_size_max <= batch_events_max, "batch_size_max out of range")
        self._batch_size_max = batch_size_max
        self._batch_window_s = batch_window_s
        self._queue_depth_max = queue_depth_max
        self._settle_lag_ns = self._core.settle_lag_ns if settle_lag_s is None else round(settle_lag_s * NS_PER_S)
        self._cond = threading.Condition()
        self._queue: deque[QueuedOp] = deque()
        self._queued_events = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="micropay-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- submitting
    def submit(
        self,
        operation: Operation[T],
        size: int = 1,
        *,
        accounts: Sequence[str] = (),
        transfer_ids: Sequence[str] = (),
    ) -> Future[T]:
        """Queue ``operation`` for the next batch; the future resolves once it is durable.

        ``accounts`` and ``transfer_ids`` name what the operation will touch, if known: on a
        shared database they are locked and read up front, in the order every writer uses."""
        check_batch_size(size)
        future: Future[T] = Future()
        op = QueuedOp(operation, size, future, accounts, transfer_ids)
        with self._cond:
            if self._closing or self._failure is not None:
                raise EngineClosedError("the engine is closed") from self._failure
            if self._queued_events + size > self._queue_depth_max:
                raise QueueFullError(f"engine queue holds {self._queued_events} events; retry later")
            woken = not self._queue or self._queued_events + size >= self._batch_size_max
            self._queue.append(op)
            self._queued_events += size
            if woken:  # the engine waits for a first operation, or a window it may now cut short
                self._cond.notify()
        return future

    def call(self, operation: Operation[T], size: int = 1) -> T:
        """Run ``operation`` in the next batch and wait until it is durable."""
        return self.submit(operation, size).result()

    async def call_async(self, operation: Operation[T], size: int = 1) -> T:
        return await asyncio.wrap_future(self.submit(operation, size))

    def submit_transfers(self, requests: Sequence[TransferRequest]) -> Future[Sequence[TransferOutcome]]:
        """Validate in the caller's thread, then queue; the future resolves once durable."""
        requests = list(requests)
        columns = transfer_columns(requests)
        accounts: Sequence[str] = ()
        transfer_ids: Sequence[str] = ()
        if self._core.shared and columns:
            accounts = [*columns[1], *columns[2]]
            transfer_ids = [*columns[0], *filter(None, columns[7])]
        return self.submit(
            lambda ctx: ctx.create_transfers_columns(requests, columns),
            len(requests),
            accounts=accounts,
            transfer_ids=transfer_ids,
        )

    def create_transfers(self, requests: Sequence[TransferRequest]) -> Sequence[TransferOutcome]:
        return self.submit_transfers(requests).result()

    async def create_transfers_async(self, requests: Sequence[TransferRequest]) -> Sequence[TransferOutcome]:
        return await asyncio.wrap_future(self.submit_transfers(requests))

    def create_accounts(self, requests: Sequence[AccountRequest]) -> list[tuple[Result, Account | None]]:
        requests = list(requests)
        check_account_requests(requests)
        return self.submit(
            lambda ctx: ctx.create_accounts(requests), len(requests), accounts=[r.id for r in requests]
        ).result()

    def create_ledger(self, code: str, scale: int) -> tuple[Result, Ledger]:
        check_ledger(code, scale)
        return self.call(lambda ctx: ctx.create_ledger(code, scale))

    def set_credit_limit(self, account_id: str, credit_limit: int) -> tuple[Result, Account | None]:
        check_ledger_id(account_id, "account_id")
        check_credit_limit(credit_limit)
        return self.submit(lambda ctx: ctx.set_credit_limit(account_id, credit_limit), accounts=[account_id]).result()

    # ----------------------------------------------------------------- reads (committed state only)
    def account(self, account_id: str) -> Account | None:
        return self._core.account(account_id)

    def ledger(self, code: str) -> Ledger | None:
        return self._core.ledger(code)

    def ledgers(self) -> list[Ledger]:
        return self._core.ledgers()

    def accounts(self, starting_after: str | None, limit: int) -> list[Account]:
        """Accounts ordered by id, after ``starting_after``, at most ``limit``."""
        return self._core.accounts(starting_after, limit)

    def transfer(self, transfer_id: str) -> Transfer | None:
        return self._core.transfer(transfer_id)

    def account_transfers(
        self, account_id: str, *, limit: int = 20, before_timestamp: int | None = None
    ) -> list[Transfer]:
        """An account's committed transfers, newest first, older than ``before_timestamp``."""
        if not 0 < limit <= HISTORY_PAGE_MAX:
            raise MalformedRequest(f"limit must be 1 to {HISTORY_PAGE_MAX}", "limit")
        return self._core.account_transfers(account_id, limit, before_timestamp)

    def transfer_count(self) -> int:
        return self._core.transfer_count()

    def verify(self) -> None:
        """Check every ledger invariant over the committed state."""
        self._core.verify()

    def document(self, kind: str, document_id: str) -> bytes | None:
        """A committed document (a model record), from memory or the store."""
        return self._core.document(kind, document_id)

    @property
    def store(self) -> Store:
        return self._store

    @property
    def shared(self) -> bool:
        """Whether other engines may write this database at the same time (PostgreSQL)."""
        return self._core.shared

    @property
    def settle_lag_ns(self) -> int:
        """How far behind the clock a reader must stay to be sure no batch still in flight
        writes anything dated before what it reads (0 with one writer: batches run in order)."""
        return self._settle_lag_ns

    def now_ns(self) -> int:
        """The engine clock's reading now (what time-dependent reads compare against)."""
        return self._clock_ns()

    # ----------------------------------------------------------------- the batch loop
    def _take_batch(self) -> list[QueuedOp] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            ops: list[QueuedOp] = []
            size = 0
            deadline = 0.0
            while True:
                queue = self._queue
                # An operation larger than batch_size_max runs alone rather than never.
                while queue and (not ops or size + queue[0].size <= self._batch_size_max):
                    op = queue.popleft()
                    ops.append(op)
                    size += op.size
                if queue or size >= self._batch_size_max or self._closing or not self._batch_window_s:
                    break
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._batch_window_s
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            self._queued_events -= size
            return ops

    def _run(self) -> None:
        while True:
            ops = self._take_batch()
            if ops is None:
                return
            try:
                self._process(ops)
            except BaseException as error:  # fatal: memory may disagree with disk; stop taking work
                with self._cond:
                    self._failure = error
                    pending = list(self._queue)
                    self._queue.clear()
                for op in [*ops, *pending]:
                    if not op.future.done():
                        op.future.set_exception(EngineClosedError(f"engine stopped: {error}"))
                return

    def _process(self, ops: list[QueuedOp]) -> None:
        try:
            outcomes = self._core.process(ops, self._clock_ns())
        except StoreError as error:
            for op in ops:
                op.future.set_exception(error)
            return
        self.stats.events += sum(op.size for op in ops)
        for op, (ok, value) in zip(ops, outcomes, strict=True):
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    # ----------------------------------------------------------------- closing
    def close(self) -> None:
        """Finish what is queued, stop the engine thread, close the store. Idempotent."""
        with self._cond:
            already = self._closing
            self._closing = True
            self._cond.notify_all()
        if already:
            return
        self._thread.join()
        self._store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def failure(self) -> BaseException | None:
        return self._failure
