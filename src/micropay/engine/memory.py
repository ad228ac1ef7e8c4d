"""The single-writer core: the whole ledger in memory, replayed from the store's log at start.

The store (SQLite) admits one writer, so memory is the truth between batches and reads need
no database round trip; a batch is applied in memory, written as one transaction with one
sync, and only then committed in memory (or rolled back to what is on disk).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from itertools import repeat
from operator import is_
from typing import cast

from micropay.engine.context import BatchContext, DocumentKey, Outcome, QueuedOp, apply_ops
from micropay.engine.stats import EngineStats
from micropay.errors import require
from micropay.ledger import Account, Ledger, LedgerState, Transfer
from micropay.store.base import DocumentBlock, LogStore

_UNKNOWN = object()
"""What the cache answers for a document it has not been told about (None: known absent)."""

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
        # kind -> id -> body (None: known absent). A dict per kind, so that a lookup hashes and
        # compares the id alone, with no (kind, id) tuple to make: a metering batch looks up
        # thousands of usage records, payers and promo grants.
        self._kinds: dict[str, dict[str, bytes | None]] = {}
        self._entries_max = entries_max
        self._passed_kinds = store.indexed_kinds - store.cached_kinds

    def get(self, key: DocumentKey) -> bytes | None:
        kind, document_id = key
        entries = self._kinds.get(kind)
        if entries is not None and document_id in entries:
            return entries[document_id]
        body = self._store.read_document(kind, document_id)
        if kind not in self._passed_kinds:
            self._remember(kind, document_id, body)
        return body

    def get_many(self, kind: str, document_ids: list[str], remember_absent: bool = False) -> dict[str, bytes]:
        """Those of these documents that exist; the ones not in memory come from one store read.
        Only found documents are remembered (most ids asked for this way are new), and absent
        ones too if asked (``BatchContext.get_documents``). The memory is read by C-level
        passes: a metering batch asks for thousands of usage records."""
        entries = self._kinds.get(kind, {})
        bodies = list(map(entries.get, document_ids, repeat(_UNKNOWN)))
        found = dict(zip(document_ids, bodies, strict=True))
        if set(map(type, bodies)) == {bytes}:  # all remembered, all there (``in`` would call __eq__)
            return cast(dict[str, bytes], found)
        if any(map(is_, bodies, repeat(_UNKNOWN))):
            missing = [document_id for document_id, body in found.items() if body is _UNKNOWN]
            stored = self._store.read_documents(kind, missing)
            if kind not in self._passed_kinds:
                for document_id in missing if remember_absent else stored:
                    self._remember(kind, document_id, stored.get(document_id))
            found.update(stored)
        return {document_id: body for document_id, body in found.items() if type(body) is bytes}

    def any_exists(self, kind: str, document_ids: list[str]) -> bool:
        """Whether any of these documents exists: for the kinds the store indexes, its index
        answers at once; others as ``get_many``."""
        if kind in self._passed_kinds:
            return self._store.any_document_exists(kind, document_ids)
        return bool(self.get_many(kind, document_ids))

    def _of(self, kind: str) -> dict[str, bytes | None]:
        entries = self._kinds.get(kind)
        if entries is None:
            entries = self._kinds[kind] = {}
        return entries

    def _size(self) -> int:
        """Entries of all kinds (a handful of kinds: a few ``len`` calls)."""
        return sum(map(len, self._kinds.values()))

    def _remember(self, kind: str, document_id: str, body: bytes | None) -> None:
        if self._size() >= self._entries_max:
            self._kinds.clear()
        self._of(kind)[document_id] = body

    def committed(self, blocks: Sequence[DocumentBlock]) -> None:
        """A batch's documents are durable (``BatchContext.document_blocks``: of one id, the
        later is the newer)."""
        passed = self._passed_kinds
        for kind, ids, bodies in blocks:
            if kind not in passed:
                if self._size() + len(ids) > self._entries_max:
                    self._kinds.clear()
                self._of(kind).update(zip(ids, bodies, strict=True))
        require(self._size() <= self._entries_max, "the document cache holds no more than its bound")

    def __contains__(self, key: DocumentKey) -> bool:
        entries = self._kinds.get(key[0])
        return entries is not None and key[1] in entries


class MemoryCore:
    """Owns the in-memory ledger state of a single-writer store."""

    shared = False
    settle_lag_ns = 0

    def __init__(self, store: LogStore, stats: EngineStats, verify_every_batches: int) -> None:
        self._store = store
        self._stats = stats
        self._verify_every_batches = verify_every_batches
        self._state = LedgerState(self._store.read_transfer)
        self._documents = DocumentCache(store)
        self._lock = threading.Lock()  # held while a batch is applied and written, and by reads
        for journal in self._store.load():
            self._state.replay(journal)
        self._state.verify()

    def process(self, ops: Sequence[QueuedOp], now_ns: int) -> list[Outcome]:
        """Apply and durably write one batch; a StoreError leaves memory as it was."""
        state = self._state
        stats = self._stats
        with self._lock:
            state.begin(now_ns)
            context = BatchContext(state, self._documents, now_ns)
            try:
                started = time.perf_counter()
                outcomes = apply_ops(ops, state, context)
                applied = time.perf_counter()
                stats.apply_s += applied - started
                journal = state.journal()
                blocks = context.document_blocks()
                if not journal.is_empty() or blocks:
                    self._store.write(journal, (), blocks)
                    stats.syncs += 1
                    stats.write_s += time.perf_counter() - applied
            except BaseException:
                state.rollback()
                raise
            state.commit()
            self._documents.committed(blocks)
            stats.batches += 1
            if self._verify_every_batches and stats.batches % self._verify_every_batches == 0:
                state.verify()
        return outcomes

    # ----------------------------------------------------------------- committed reads
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
        with self._lock:
            ids = sorted(i for i in self._state.account_ids() if starting_after is None or i > starting_after)
            found = (self._state.account(i) for i in ids[:limit])
            return [account for account in found if account is not None]

    def transfer(self, transfer_id: str) -> Transfer | None:
        with self._lock:
            locator = self._state.transfer_locator(transfer_id)
            if locator is None:
                return None
            return self._store.read_transfer(transfer_id, locator)

    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]:
        return self._store.account_transfers(account_id, limit, before_timestamp)

    def transfer_count(self) -> int:
        with self._lock:
            return self._state.transfer_count()

    def verify(self) -> None:
        with self._lock:
            self._state.verify()

    def document(self, kind: str, document_id: str) -> bytes | None:
        with self._lock:
            return self._documents.get((kind, document_id))
