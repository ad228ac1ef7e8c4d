"""The single-writer core: the whole ledger in memory, replayed from the store's log at start.

The store (SQLite) admits one writer, so memory is the truth between batches and reads need
no database round trip. A batch is applied in memory and handed to a writer thread, which
writes it as one transaction with one sync and then answers its callers; meanwhile the engine
thread applies the next batch on top of it (its reads see the batch being written through
``PendingDocuments``). The writer's SQLite work runs without the interpreter lock, so the two
overlap. At most one batch is being written: the next is handed over only once the one before
is durable.

What the callers and readers see is durable. A batch is answered once it is on disk, and a
read of memory waits, before it answers, for the batch it may have seen to be written. Should
a write fail, that batch's callers get the StoreError, so do the callers of the batch applied
on top of it, and memory is replayed from the store: it holds then exactly what is on disk.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from micropay.engine.context import Answer, BatchContext, DocumentKey, Outcome, QueuedOp, apply_ops
from micropay.engine.stats import EngineStats
from micropay.errors import StoreError, require
from micropay.ledger import Account, Journal, Ledger, LedgerState, Transfer
from micropay.store.base import Document, DocumentBlock, LogStore

T = TypeVar("T")

READ_ATTEMPTS_MAX = 3
"""Reads of memory tried again when the batch they saw failed to write (memory is replayed
between attempts); past it they raise the StoreError."""

DOCUMENT_CACHE_MAX = 1_000_000
"""Committed documents kept in memory; past it the cache starts over (reads fall back to the store)."""


class DocumentCache:
    """Committed documents, read through to the store; updated only after a batch is durable.

    Kinds the store indexes in memory itself (``LogStore.indexed_kinds``: the busiest, a usage
    event or a charge record per payment) are left to it: kept here they would fill the cache
    within minutes of traffic, and each time it filled it would start over, dropping the payers,
    merchants and usage records that every batch reads again. Those of them that later batches
    read again (``LogStore.cached_kinds``: usage records) are kept all the same."""

    def __init__(self, store: LogStore, entries_max: int = DOCUMENT_CACHE_MAX) -> None:
        self._store = store
        self._entries: dict[DocumentKey, bytes | None] = {}
        self._entries_max = entries_max
        self._passed_kinds = store.indexed_kinds - store.cached_kinds

    def get(self, key: DocumentKey) -> bytes | None:
        entries = self._entries
        if key in entries:
            return entries[key]
        body = self._store.read_document(key[0], key[1])
        if key[0] not in self._passed_kinds:
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
            if kind not in self._passed_kinds:
                for document_id, body in stored.items():
                    self._remember((kind, document_id), body)
            found.update(stored)
        return found

    def any_exists(self, kind: str, document_ids: list[str]) -> bool:
        """Whether any of these documents exists: for the kinds the store indexes, its index
        answers at once; others as ``get_many``."""
        if kind in self._passed_kinds:
            return self._store.any_document_exists(kind, document_ids)
        return bool(self.get_many(kind, document_ids))

    def _remember(self, key: DocumentKey, body: bytes | None) -> None:
        if len(self._entries) >= self._entries_max:
            self._entries.clear()
        self._entries[key] = body

    def committed(self, documents: Sequence[Document], blocks: Sequence[DocumentBlock] = ()) -> None:
        """A batch's documents are durable (of one id, the later is the newer: blocks in order,
        then ``documents``)."""
        passed = self._passed_kinds
        for kind, ids, bodies in blocks:
            if kind not in passed:
                for document_id, body in zip(ids, bodies, strict=True):
                    self._remember((kind, document_id), body)
        for kind, document_id, body in documents:
            if kind not in passed:
                self._remember((kind, document_id), body)

    def __contains__(self, key: DocumentKey) -> bool:
        return key in self._entries


@dataclass(slots=True, eq=False)
class _Flight:
    """A batch applied in memory and handed to the writer: what it writes, whom it answers."""

    ops: Sequence[QueuedOp]
    outcomes: list[Outcome]
    answer: Answer
    context: BatchContext
    journal: Journal
    documents: list[Document]
    blocks: list[DocumentBlock]
    done: threading.Event = field(default_factory=threading.Event)
    error: StoreError | None = None

    def durable(self) -> bool:
        """Wait for the write; whether it succeeded."""
        self.done.wait()
        return self.error is None

    def transfer(self, transfer_id: str, locator: int) -> Transfer | None:
        """The batch's transfer ``transfer_id`` at timestamp ``locator``, if it wrote one."""
        transfers = self.journal.transfers
        if not transfers or not transfers.timestamps[0] <= locator <= transfers.timestamps[-1]:
            return None
        ids = transfers.columns[0]
        return transfers[ids.index(transfer_id)] if transfer_id in ids else None


class PendingDocuments:
    """The documents of the batch being written, in front of the committed ones: what the
    next batch reads while the writer has not yet put them in the store (or the cache)."""

    def __init__(self, pending: BatchContext, committed: DocumentCache) -> None:
        self._pending = pending
        self._committed = committed

    def get(self, key: DocumentKey) -> bytes | None:
        body = self._pending.written_document(key[0], key[1])
        return body if body is not None else self._committed.get(key)

    def get_many(self, kind: str, document_ids: list[str]) -> dict[str, bytes]:
        found, unwritten = self._pending.written_documents(kind, document_ids)
        if unwritten:
            found.update(self._committed.get_many(kind, unwritten))
        return found

    def any_exists(self, kind: str, document_ids: list[str]) -> bool:
        return self._pending.wrote_any(kind, document_ids) or self._committed.any_exists(kind, document_ids)


class MemoryCore:
    """Owns the in-memory ledger state of a single-writer store, and its writer thread."""

    shared = False
    settle_lag_ns = 0

    def __init__(self, store: LogStore, stats: EngineStats, verify_every_batches: int) -> None:
        self._store = store
        self._stats = stats
        self._verify_every_batches = verify_every_batches
        self._documents = DocumentCache(store)
        # Held while a batch is applied and handed over, and by reads of memory; never by the writer.
        self._lock = threading.Lock()
        self._flight: _Flight | None = None  # the last batch handed to the writer, until the next is
        self._state = self._replayed()
        self._writes: queue.SimpleQueue[_Flight | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_batches, name="micropay-writer", daemon=True)
        self._writer.start()

    def _replayed(self) -> LedgerState:
        state = LedgerState(self._read_transfer)
        for journal in self._store.load():
            state.replay(journal)
        state.verify()
        return state

    # ----------------------------------------------------------------- batches (engine thread)
    def process(self, ops: Sequence[QueuedOp], now_ns: int, answer: Answer) -> None:
        """Apply one batch and hand it to the writer, which answers its callers once it is
        durable (a batch with nothing to write is answered here, once the one before is)."""
        stats = self._stats
        with self._lock:
            self._recover()
            state = self._state
            previous = self._flight
            reader = self._documents if previous is None else PendingDocuments(previous.context, self._documents)
            state.begin(now_ns)
            context = BatchContext(state, reader, now_ns, self._settle)
            try:
                started = time.perf_counter()
                outcomes = apply_ops(ops, state, context)
                stats.apply_s += time.perf_counter() - started
                self._settle()
            except StoreError as error:  # a store read failed, or the batch before failed to write
                state.rollback()
                if previous is not None and previous.error is error:
                    error = StoreError(f"not written: the batch before it failed to write ({error})")
                self._recover()
                answer(ops, error)
                return
            except BaseException:
                state.rollback()
                raise
            if previous is not None:  # durable: its documents join the cache
                self._documents.committed(previous.documents, previous.blocks)
                self._flight = None
            journal = state.commit()
            blocks, documents = context.document_blocks()
            stats.batches += 1
            if self._verify_every_batches and stats.batches % self._verify_every_batches == 0:
                state.verify()
            if journal.is_empty() and not documents and not blocks:
                answer(ops, outcomes)
                return
            flight = _Flight(ops, outcomes, answer, context, journal, documents, blocks)
            self._flight = flight
            self._writes.put(flight)

    def _settle(self) -> None:
        """Wait until the batch being written is durable (StoreError if it failed)."""
        flight = self._flight
        if flight is not None and not flight.durable():
            assert flight.error is not None
            raise flight.error

    def _recover(self) -> None:
        """If the last batch handed over failed to write, replay memory from the store (under
        the lock): it then holds exactly what is on disk. The cache never held that batch."""
        flight = self._flight
        if flight is None or not flight.done.is_set() or flight.error is None:
            return
        self._flight = None
        self._state = self._replayed()

    def close(self) -> None:
        """Finish the write in progress and stop the writer thread (the engine has stopped)."""
        self._writes.put(None)
        self._writer.join()

    # ----------------------------------------------------------------- the writer thread
    def _write_batches(self) -> None:
        while True:
            flight = self._writes.get()
            if flight is None:
                return
            started = time.perf_counter()
            try:
                self._store.write(flight.journal, flight.documents, flight.blocks)
            except BaseException as error:  # not on disk: its callers (and the next batch's) learn why
                flight.error = error if isinstance(error, StoreError) else StoreError(f"batch write failed: {error}")
                flight.done.set()
                flight.answer(flight.ops, flight.error)
                continue
            self._stats.write_s += time.perf_counter() - started
            self._stats.syncs += 1
            flight.done.set()
            flight.answer(flight.ops, flight.outcomes)

    # ----------------------------------------------------------------- committed reads
    def _read_transfer(self, transfer_id: str, locator: int) -> Transfer | None:
        """A transfer by its locator: from the batch being written, else the store."""
        flight = self._flight
        if flight is not None:
            transfer = flight.transfer(transfer_id, locator)
            if transfer is not None:
                return transfer
        return self._store.read_transfer(transfer_id, locator)

    def _durable_read(self, read: Callable[[], T]) -> T:
        """``read()`` of memory, answered once what it saw is durable: it may have seen the batch
        being written; if that fails to write, memory is replayed and the read runs again.
        Not from the writer thread (a callback of an answered future): it would wait for itself."""
        require(threading.current_thread() is not self._writer, "a read of memory from the engine's writer thread")
        for _ in range(READ_ATTEMPTS_MAX - 1):
            with self._lock:
                self._recover()
                value = read()
                flight = self._flight
            if flight is None or flight.durable():
                return value
        with self._lock:
            self._recover()
            value = read()
            flight = self._flight
        if flight is not None and not flight.durable():
            assert flight.error is not None
            raise flight.error
        return value

    def account(self, account_id: str) -> Account | None:
        return self._durable_read(lambda: self._state.account(account_id))

    def ledger(self, code: str) -> Ledger | None:
        return self._durable_read(lambda: self._state.ledger(code))

    def ledgers(self) -> list[Ledger]:
        return self._durable_read(lambda: self._state.ledgers())

    def accounts(self, starting_after: str | None, limit: int) -> list[Account]:
        def read() -> list[Account]:
            state = self._state
            ids = sorted(i for i in state.account_ids() if starting_after is None or i > starting_after)
            found = (state.account(i) for i in ids[:limit])
            return [account for account in found if account is not None]

        return self._durable_read(read)

    def transfer(self, transfer_id: str) -> Transfer | None:
        locator = self._durable_read(lambda: self._state.transfer_locator(transfer_id))
        return None if locator is None else self._store.read_transfer(transfer_id, locator)

    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]:
        return self._store.account_transfers(account_id, limit, before_timestamp)

    def transfer_count(self) -> int:
        return self._durable_read(lambda: self._state.transfer_count())

    def verify(self) -> None:
        with self._lock:
            self._recover()
            self._state.verify()

    def document(self, kind: str, document_id: str) -> bytes | None:
        def read() -> bytes | None:
            flight = self._flight
            body = None if flight is None else flight.context.written_document(kind, document_id)
            return body if body is not None else self._documents.get((kind, document_id))

        return self._durable_read(read)
