"""The engine: the one write path for money.

Callers (threads or asyncio tasks) submit operations; one engine thread gathers what is
queued into a batch (up to ``batch_size_max`` events, waiting at most ``batch_window_s`` for
more), applies it to the in-memory ledger state in arrival order, writes it to the store in
one transaction with one sync, and only then answers every caller in the batch (group commit).
A store failure fails the whole batch and rolls memory back to what is on disk.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from micropay.errors import (
    EngineClosedError,
    InvariantViolation,
    MalformedRequest,
    QueueFullError,
    StoreError,
    require,
)
from micropay.ledger import (
    Account,
    AccountRequest,
    Ledger,
    LedgerState,
    Result,
    Transfer,
    TransferOutcome,
    TransferRequest,
)
from micropay.ledger.limits import BATCH_SIZE_MAX
from micropay.ledger.validate import (
    check_account_requests,
    check_batch_size,
    check_credit_limit,
    check_ledger,
    check_ledger_id,
    transfer_columns,
)
from micropay.store.base import Document, Store

T = TypeVar("T")

QUEUE_DEPTH_MAX = 64 * BATCH_SIZE_MAX
"""Most events waiting for the engine; past it submissions fail with QueueFullError."""

HISTORY_PAGE_MAX = 1000
"""Most transfers one account-history read returns."""


class BatchContext:
    """What one operation may do inside an engine batch: the view a model works against.

    Everything it does commits with the batch, or is undone if the operation raises.
    """

    def __init__(self, state: LedgerState, documents: DocumentCache, now_ns: int) -> None:
        self._state = state
        self._cache = documents
        self._written: dict[DocumentKey, bytes] = {}
        self._undo: list[tuple[DocumentKey, bytes | None]] = []
        self.now_ns = now_ns

    def create_transfers(self, requests: Sequence[TransferRequest]) -> Sequence[TransferOutcome]:
        return self._state.create_transfers(requests, transfer_columns(requests))

    def create_accounts(self, requests: Sequence[AccountRequest]) -> list[tuple[Result, Account | None]]:
        check_account_requests(requests)
        return [self._state.create_account(request) for request in requests]

    def create_ledger(self, code: str, scale: int) -> tuple[Result, Ledger]:
        check_ledger(code, scale)
        return self._state.create_ledger(code, scale)

    def set_credit_limit(self, account_id: str, credit_limit: int) -> tuple[Result, Account | None]:
        check_credit_limit(credit_limit)
        return self._state.set_credit_limit(account_id, credit_limit)

    def account(self, account_id: str) -> Account | None:
        return self._state.account(account_id)

    def ledger(self, code: str) -> Ledger | None:
        return self._state.ledger(code)

    def transfer_exists(self, transfer_id: str) -> bool:
        """Whether a transfer with this id exists (committed, or applied earlier in this batch)."""
        return self._state.transfer_locator(transfer_id) is not None

    def put_document(self, kind: str, document_id: str, body: bytes) -> None:
        """Write a record with this batch (replacing any older version)."""
        key = (kind, document_id)
        self._undo.append((key, self._written.get(key)))
        self._written[key] = body

    def get_documents(self, kind: str, document_ids: Iterable[str]) -> dict[str, bytes]:
        """The newest versions of those of these documents that exist, as ``get_document`` would
        answer one by one, with one store read for all that are not in memory (for an operation
        about to look up many ids, most of them new)."""
        written = self._written
        found: dict[str, bytes] = {}
        unwritten: list[str] = []
        for document_id in document_ids:
            body = written.get((kind, document_id))
            if body is None:
                unwritten.append(document_id)
            else:
                found[document_id] = body
        if unwritten:
            found.update(self._cache.get_many(kind, unwritten))
        return found

    def get_document(self, kind: str, document_id: str) -> bytes | None:
        """The newest version: written earlier in this batch, else the committed one."""
        key = (kind, document_id)
        body = self._written.get(key)
        return body if body is not None else self._cache.get(key)

    def _mark(self) -> int:
        return len(self._undo)

    def _rollback_documents(self, mark: int) -> None:
        while len(self._undo) > mark:
            key, before = self._undo.pop()
            if before is None:
                del self._written[key]
            else:
                self._written[key] = before

    def _documents(self) -> list[Document]:
        return [Document(kind, document_id, body) for (kind, document_id), body in self._written.items()]


DocumentKey = tuple[str, str]

DOCUMENT_CACHE_MAX = 1_000_000
"""Committed documents kept in memory; past it the cache starts over (reads fall back to the store)."""


class DocumentCache:
    """Committed documents, read through to the store; updated only after a batch is durable."""

    def __init__(self, store: Store, entries_max: int = DOCUMENT_CACHE_MAX) -> None:
        self._store = store
        self._entries: dict[DocumentKey, bytes | None] = {}
        self._entries_max = entries_max

    def get(self, key: DocumentKey) -> bytes | None:
        entries = self._entries
        if key in entries:
            return entries[key]
        body = self._store.read_document(key[0], key[1])
        self._remember(key, body)
        return body

    def get_many(self, kind: str, document_ids: list[str]) -> dict[str, bytes]:
        """Those of these documents that exist; the ones not in memory come from one store read.
        Only found documents are remembered (most ids asked for this way are new)."""
        entries = self._entries
        found: dict[str, bytes] = {}
        missing: list[str] = []
        for document_id in document_ids:
            key = (kind, document_id)
            if key in entries:
                body = entries[key]
                if body is not None:
                    found[document_id] = body
            else:
                missing.append(document_id)
        if missing:
            stored = self._store.read_documents(kind, missing)
            for document_id, body in stored.items():
                self._remember((kind, document_id), body)
            found.update(stored)
        return found

    def _remember(self, key: DocumentKey, body: bytes | None) -> None:
        if len(self._entries) >= self._entries_max:
            self._entries.clear()
        self._entries[key] = body

    def committed(self, written: dict[DocumentKey, bytes]) -> None:
        for key, body in written.items():
            self._remember(key, body)


Operation = Callable[[BatchContext], T]


@dataclass(slots=True)
class _Op:
    run: Callable[[BatchContext], Any]
    size: int
    future: Future[Any]


@dataclass(slots=True)
class EngineStats:
    """Counters since start: batches committed, events in them, store writes, and seconds
    spent applying batches in memory and writing them."""

    batches: int = 0
    events: int = 0
    syncs: int = 0
    apply_s: float = 0.0
    write_s: float = 0.0


class Engine:
    """Owns the ledger state and the store. Start with ``Engine(store)``; stop with ``close()``."""

    def __init__(
        self,
        store: Store,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
        batch_size_max: int = BATCH_SIZE_MAX,
        batch_window_s: float = 0.001,
        queue_depth_max: int = QUEUE_DEPTH_MAX,
        verify_every_batches: int = 256,
    ) -> None:
        require(0 < batch_size_max <= BATCH_SIZE_MAX, "batch_size_max out of range")
        require(0 <= batch_window_s <= 0.1, "batch_window_s out of range")
        self._store = store
        self._clock_ns = clock_ns
        self._batch_size_max = batch_size_max
        self._batch_window_s = batch_window_s
        self._queue_depth_max = queue_depth_max
        self._verify_every_batches = verify_every_batches
        self._state = LedgerState(self._fetch_transfer)
        self._documents = DocumentCache(store)
        self._lock = threading.Lock()  # held while a batch is applied and written, and by reads
        self._cond = threading.Condition()
        self._queue: deque[_Op] = deque()
        self._queued_events = 0
        self._closing = False
        self._failure: BaseException | None = None
        self.stats = EngineStats()
        self._recover()
        self._thread = threading.Thread(target=self._run, name="micropay-engine", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- recovery
    def _recover(self) -> None:
        state = self._state
        for journal in self._store.load():
            state.replay(journal)
        state.verify()

    def _fetch_transfer(self, transfer_id: str, locator: int) -> Transfer | None:
        return self._store.read_transfer(transfer_id, locator)

    # ----------------------------------------------------------------- submitting
    def submit(self, operation: Operation[T], size: int = 1) -> Future[T]:
        """Queue ``operation`` for the next batch; the future resolves once it is durable."""
        check_batch_size(size)
        future: Future[T] = Future()
        op = _Op(operation, size, future)
        with self._cond:
            if self._closing or self._failure is not None:
                raise EngineClosedError("the engine is closed") from self._failure
            if self._queued_events + size > self._queue_depth_max:
                raise QueueFullError(f"engine queue holds {self._queued_events} events; retry later")
            self._queue.append(op)
            self._queued_events += size
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
        state = self._state
        return self.submit(lambda _ctx: state.create_transfers(requests, columns), len(requests))

    def create_transfers(self, requests: Sequence[TransferRequest]) -> Sequence[TransferOutcome]:
        return self.submit_transfers(requests).result()

    async def create_transfers_async(self, requests: Sequence[TransferRequest]) -> Sequence[TransferOutcome]:
        return await asyncio.wrap_future(self.submit_transfers(requests))

    def create_accounts(self, requests: Sequence[AccountRequest]) -> list[tuple[Result, Account | None]]:
        requests = list(requests)
        check_account_requests(requests)
        state = self._state
        return self.call(lambda _ctx: [state.create_account(r) for r in requests], len(requests))

    def create_ledger(self, code: str, scale: int) -> tuple[Result, Ledger]:
        check_ledger(code, scale)
        state = self._state
        return self.call(lambda _ctx: state.create_ledger(code, scale))

    def set_credit_limit(self, account_id: str, credit_limit: int) -> tuple[Result, Account | None]:
        check_ledger_id(account_id, "account_id")
        check_credit_limit(credit_limit)
        state = self._state
        return self.call(lambda _ctx: state.set_credit_limit(account_id, credit_limit))

    # ----------------------------------------------------------------- reads (committed state only)
    def account(self, account_id: str) -> Account | None:
        with self._lock:
            return self._state.account(account_id)

    def ledger(self, code: str) -> Ledger | None:
        with self._lock:
            return self._state.ledger(code)

    def ledgers(self) -> list[Ledger]:
        with self._lock:
            return self._state.ledgers()

    def accounts(self, starting_after: str | None, limit: int) -> list[Account]:
        """Accounts ordered by id, after ``starting_after``, at most ``limit``."""
        with self._lock:
            ids = sorted(i for i in self._state.account_ids() if starting_after is None or i > starting_after)
            found = (self._state.account(i) for i in ids[:limit])
            return [account for account in found if account is not None]

    def transfer(self, transfer_id: str) -> Transfer | None:
        with self._lock:
            locator = self._state.transfer_locator(transfer_id)
            if locator is None:
                return None
            return self._fetch_transfer(transfer_id, locator)

    def account_transfers(
        self, account_id: str, *, limit: int = 20, before_timestamp: int | None = None
    ) -> list[Transfer]:
        """An account's committed transfers, newest first, older than ``before_timestamp``."""
        if not 0 < limit <= HISTORY_PAGE_MAX:
            raise MalformedRequest(f"limit must be 1 to {HISTORY_PAGE_MAX}", "limit")
        return self._store.account_transfers(account_id, limit, before_timestamp)

    def transfer_count(self) -> int:
        with self._lock:
            return self._state.transfer_count()

    def verify(self) -> None:
        """Check every ledger invariant over the committed state."""
        with self._lock:
            self._state.verify()

    def document(self, kind: str, document_id: str) -> bytes | None:
        """A committed document (a model record), from memory or the store."""
        with self._lock:
            return self._documents.get((kind, document_id))

    @property
    def store(self) -> Store:
        return self._store

    def now_ns(self) -> int:
        """The engine clock's reading now (what time-dependent reads compare against)."""
        return self._clock_ns()

    # ----------------------------------------------------------------- the batch loop
    def _take_batch(self) -> list[_Op] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            ops: list[_Op] = []
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

    def _process(self, ops: list[_Op]) -> None:
        state = self._state
        outcomes: list[tuple[bool, Any]] = []
        with self._lock:
            now_ns = self._clock_ns()
            state.begin(now_ns)
            context = BatchContext(state, self._documents, now_ns)
            try:
                started = time.perf_counter()
                for op in ops:
                    outcomes.append(self._apply(op, context))
                applied = time.perf_counter()
                self.stats.apply_s += applied - started
                journal = state.journal()
                if not journal.is_empty() or context._written:
                    self._store.write(journal, context._documents())
                    self.stats.syncs += 1
                    self.stats.write_s += time.perf_counter() - applied
            except StoreError as error:
                state.rollback()
                for op in ops:
                    op.future.set_exception(error)
                return
            except BaseException:
                state.rollback()
                raise
            state.commit()
            self._documents.committed(context._written)
            self._after_commit(sum(op.size for op in ops))
        for op, (ok, value) in zip(ops, outcomes, strict=True):
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    def _apply(self, op: _Op, context: BatchContext) -> tuple[bool, Any]:
        """Run one operation; if it raises (other than an invariant), undo just its effects."""
        mark = self._state.mark()
        documents_mark = context._mark()
        try:
            return True, op.run(context)
        except InvariantViolation:
            raise
        except Exception as error:
            self._state.rollback_to(mark)
            context._rollback_documents(documents_mark)
            return False, error

    def _after_commit(self, events: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.events += events
        if self._verify_every_batches and stats.batches % self._verify_every_batches == 0:
            self._state.verify()

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
