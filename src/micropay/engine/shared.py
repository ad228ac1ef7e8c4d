"""The multi-writer core: each batch is one PostgreSQL transaction over a fresh, partial state.

Several engines (processes, machines) write one database. Nothing is trusted from memory
between batches: a batch locks the accounts its operations name in advance, in id order (the
order every writer uses, so hot accounts queue instead of deadlocking), reads those accounts,
the transfers it names and the due pending transfers under the locks, seeds a fresh
``LedgerState`` with them, applies the operations (anything else they touch is locked and read
on first use), and writes set-based in one transaction. A conflict with another writer (a
deadlock between rows locked on first use, an id another writer inserted first) rolls the
transaction back and runs the whole batch again on fresh reads, so retries never move money
twice: the database's primary keys decide which writer's transfer exists.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence

from micropay.engine.context import BatchContext, DocumentKey, Outcome, QueuedOp, apply_ops
from micropay.engine.stats import EngineStats
from micropay.errors import BatchConflict, StoreError, require
from micropay.ledger import Account, Ledger, LedgerState, PendingStatus, Transfer, TransferFlags
from micropay.ledger.limits import NS_PER_S
from micropay.ledger.types import AccountRow, BalanceRow
from micropay.store.postgres import PostgresBatch, PostgresStore

log = logging.getLogger("micropay.engine")

ATTEMPTS_MAX = 12
"""Most times one batch is run before its callers get a StoreError (and the API a 503)."""

RETRY_BACKOFF_S = 0.002
"""First pause before running a conflicted batch again; doubles per attempt, with jitter."""

BATCH_AGE_MAX_S = 10.0
"""Longest a batch may take from its clock reading to its commit; an older one runs again with a
fresh reading. What one writer reads as "now" therefore never passes a batch still in flight by
more than this (plus clock skew between machines): see ``Engine.settle_lag_ns``."""

CLOCK_SKEW_MAX_S = 5.0
"""Largest clock difference assumed between machines running engines on one database (NTP)."""

EXPIRY_SWEEP_MAX = 1024
"""Most due pending transfers one batch expires (the rest wait for the next batches)."""

_PENDING = int(TransferFlags.PENDING)


class _Loader:
    """The ``StateLoader`` of one batch: reads rows under the batch's locks, remembers them."""

    def __init__(self, batch: PostgresBatch, ledgers: dict[str, Ledger]) -> None:
        self._batch = batch
        self._ledgers = ledgers
        self.locked: dict[str, AccountRow] = {}
        self._absent: set[str] = set()  # looked for, not stored: creating one conflicts if another writer does
        self._transfers: dict[str, Transfer] = {}

    def lock_accounts(self, account_ids: Iterable[str]) -> None:
        locked = self.locked
        absent = self._absent
        wanted = {account_id for account_id in account_ids if account_id not in locked and account_id not in absent}
        wanted.discard("")
        if not wanted:
            return
        for row in self._batch.lock_accounts(wanted):
            locked[row[0]] = row
        absent.update(wanted.difference(locked))

    def ledger(self, code: str) -> Ledger | None:
        found = self._ledgers.get(code)
        if found is None:
            found = self._batch.ledger(code)
            if found is not None:
                self._ledgers[code] = found  # committed ledgers never change
        return found

    def account(self, account_id: str) -> Account | None:
        found = self.locked.get(account_id)
        if found is None and account_id not in self._absent:
            self.lock_accounts((account_id,))
            found = self.locked.get(account_id)
        return None if found is None else Account(*found)

    def preload(
        self, account_ids: Iterable[str], transfer_ids: Iterable[str]
    ) -> list[tuple[Transfer, PendingStatus | None]]:
        """Lock ``account_ids`` and the accounts of the pending transfers among ``transfer_ids``
        in one statement (id order), then return those transfers, pending statuses read under
        the locks. Locking everything known at once is what keeps writers from deadlocking."""
        wanted = [transfer_id for transfer_id in set(transfer_ids) if transfer_id]
        found = self._batch.transfers(wanted) if wanted else []
        pending = [transfer for transfer, _ in found if transfer.flags & _PENDING]
        accounts = set(account_ids)
        accounts.update(a for t in pending for a in (t.debit_account_id, t.credit_account_id))
        self.lock_accounts(accounts)
        if pending:
            fresh = dict((transfer.id, status) for transfer, status in self._batch.transfers([t.id for t in pending]))
            found = [(transfer, fresh.get(transfer.id, status)) for transfer, status in found]
        for transfer, _ in found:
            self._transfers[transfer.id] = transfer
        return found

    def transfer(self, transfer_id: str) -> tuple[Transfer, PendingStatus | None] | None:
        found = self.preload((), (transfer_id,))
        return found[0] if found else None

    def fetch(self, transfer_id: str, locator: int) -> Transfer | None:
        found = self._transfers.get(transfer_id)
        if found is None:
            loaded = self.transfer(transfer_id)
            found = None if loaded is None else loaded[0]
        return found


class _LockedDocuments:
    """Documents as a batch reads them: locked in the database on first read, then remembered.
    A document read as absent must still be absent when written (else the batch conflicts)."""

    def __init__(self, batch: PostgresBatch) -> None:
        self._batch = batch
        self._read: dict[DocumentKey, bytes | None] = {}

    def get(self, key: DocumentKey) -> bytes | None:
        read = self._read
        if key not in read:
            read[key] = self._batch.lock_documents(key[0], (key[1],)).get(key[1])
        return read[key]

    def any_exists(self, kind: str, document_ids: list[str]) -> bool:
        return bool(self.get_many(kind, document_ids))  # locks them all, as any read does

    def get_many(self, kind: str, document_ids: list[str], remember_absent: bool = False) -> dict[str, bytes]:
        """Every document read is remembered for the batch, absent ones included (they are
        locked as absent), whatever ``remember_absent`` says."""
        read = self._read
        missing = [document_id for document_id in document_ids if (kind, document_id) not in read]
        if missing:
            found = self._batch.lock_documents(kind, missing)
            for document_id in missing:
                read[(kind, document_id)] = found.get(document_id)
        result: dict[str, bytes] = {}
        for document_id in document_ids:
            body = read[(kind, document_id)]
            if body is not None:
                result[document_id] = body
        return result

    def must_be_new(self, key: DocumentKey) -> bool:
        """Whether the batch read this document as absent (so it must insert, not overwrite)."""
        return key in self._read and self._read[key] is None


def _check_conservation(
    seeded: dict[str, AccountRow], changed: Sequence[BalanceRow], created: Sequence[Account]
) -> None:
    """Postcondition of a batch: per ledger, what it added to debits equals what it added to
    credits, posted and pending, and no total is negative."""
    moves: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = [
        (row[0], seeded[row[0]][1], seeded[row[0]][4:8], row[2:6]) for row in changed
    ]
    moves += [
        (a.id, a.ledger, (0, 0, 0, 0), (a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending))
        for a in created
    ]
    change: dict[str, list[int]] = {}
    for account_id, ledger, before, after in moves:
        require(min(after) >= 0, f"account {account_id}: a total went negative")
        totals = change.setdefault(ledger, [0, 0, 0, 0])
        for index in range(4):
            totals[index] += after[index] - before[index]
    for ledger, (debits, credits, debits_pending, credits_pending) in change.items():
        require(debits == credits, f"ledger {ledger}: batch adds {debits} debits but {credits} credits")
        require(
            debits_pending == credits_pending,
            f"ledger {ledger}: batch adds {debits_pending} pending debits but {credits_pending} pending credits",
        )


class SharedCore:
    """Runs batches against a database other engines write too."""

    shared = True
    settle_lag_ns = int((BATCH_AGE_MAX_S + CLOCK_SKEW_MAX_S) * NS_PER_S)

    def __init__(
        self, store: PostgresStore, stats: EngineStats, verify_every_batches: int, clock_ns: Callable[[], int]
    ) -> None:
        self._store = store
        self._stats = stats
        self._verify_every_batches = verify_every_batches
        self._clock_ns = clock_ns
        self._ledgers: dict[str, Ledger] = {}
        self.verify()

    def process(self, ops: Sequence[QueuedOp], now_ns: int) -> list[Outcome]:
        """Run one batch to a commit, again on a conflict; StoreError when attempts run out."""
        known_ids: set[str] = set()
        for attempt in range(ATTEMPTS_MAX):
            batch = self._store.batch()
            try:
                outcomes = self._attempt(batch, ops, now_ns, known_ids)
            except BatchConflict as conflict:
                batch.rollback()
                self._stats.retries += 1
                log.log(
                    logging.INFO if attempt == 0 else logging.WARNING,
                    "batch of %d operations ran into another writer (attempt %d): %s",
                    len(ops),
                    attempt + 1,
                    conflict,
                )
                known_ids.update(conflict.transfer_ids)
                time.sleep(RETRY_BACKOFF_S * (2**attempt) * random.uniform(0.5, 1.5))
                now_ns = max(now_ns, self._clock_ns())
                continue
            except BaseException:
                batch.rollback()
                raise
            return outcomes
        raise StoreError(f"the batch conflicted with other writers {ATTEMPTS_MAX} times; retry later")

    def _attempt(
        self, batch: PostgresBatch, ops: Sequence[QueuedOp], now_ns: int, known_ids: set[str]
    ) -> list[Outcome]:
        stats = self._stats
        started = time.perf_counter()
        loader = _Loader(batch, self._ledgers)
        state = LedgerState(loader.fetch, loader=loader, timestamp_source=self._store.reserve_timestamps)
        accounts: set[str] = set()
        transfer_ids: set[str] = set(known_ids)
        for op in ops:
            accounts.update(op.accounts)
            transfer_ids.update(op.transfer_ids)
        transfer_ids.update(batch.due_pending_ids(now_ns, EXPIRY_SWEEP_MAX))
        found = loader.preload(accounts, transfer_ids)
        state.seed_accounts(loader.locked.values())
        for transfer, status in found:
            state.seed_transfer(transfer, status)
        state.begin(now_ns)
        documents = _LockedDocuments(batch)
        context = BatchContext(state, documents, now_ns)
        try:
            outcomes = apply_ops(ops, state, context)
            journal = state.journal()
            created = [self._snapshot(state, account.id) for account in journal.accounts]
            changed = state.changed_balances(loader.locked.values())
            _check_conservation(loader.locked, changed, created)
            applied = time.perf_counter()
            stats.apply_s += applied - started
            written = [
                (document, context.created(key) or documents.must_be_new(key))
                for document in context.documents()
                for key in [(document.kind, document.id)]
            ]
            wrote = not journal.is_empty() or bool(written)
            if self._clock_ns() - now_ns > BATCH_AGE_MAX_S * NS_PER_S:
                raise BatchConflict("the batch took longer than BATCH_AGE_MAX_S; running it again")
            if wrote:
                batch.write(journal, created, changed, written)
            batch.commit()  # also when nothing was written: it releases the locks
        except BatchConflict as conflict:  # the next attempt reads first what this one tried to create
            raise BatchConflict(str(conflict), conflict.transfer_ids or _journal_ids(state)) from conflict
        if wrote:
            stats.syncs += 1
            stats.write_s += time.perf_counter() - applied
        stats.batches += 1
        if self._verify_every_batches and stats.batches % self._verify_every_batches == 0:
            self.verify()
        return outcomes

    @staticmethod
    def _snapshot(state: LedgerState, account_id: str) -> Account:
        account = state.account(account_id)
        require(account is not None, f"account {account_id} vanished from the batch state")
        return account  # type: ignore[return-value]

    # ----------------------------------------------------------------- committed reads
    def account(self, account_id: str) -> Account | None:
        return self._store.read_account(account_id)

    def ledger(self, code: str) -> Ledger | None:
        found = self._ledgers.get(code)
        if found is None:
            found = next((ledger for ledger in self._store.read_ledgers() if ledger.code == code), None)
            if found is not None:
                self._ledgers[code] = found  # committed ledgers never change
        return found

    def ledgers(self) -> list[Ledger]:
        return self._store.read_ledgers()

    def accounts(self, starting_after: str | None, limit: int) -> list[Account]:
        return self._store.list_accounts(starting_after, limit)

    def transfer(self, transfer_id: str) -> Transfer | None:
        return self._store.read_transfer(transfer_id, 0)

    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]:
        return self._store.account_transfers(account_id, limit, before_timestamp)

    def transfer_count(self) -> int:
        return self._store.transfer_count()

    def verify(self) -> None:
        """Every ledger balances, read in one snapshot of the database."""
        for code, debits, credits, debits_pending, credits_pending in self._store.ledger_totals():
            require(debits == credits, f"ledger {code}: posted debits {debits} != credits {credits}")
            require(
                debits_pending == credits_pending,
                f"ledger {code}: pending debits {debits_pending} != credits {credits_pending}",
            )

    def document(self, kind: str, document_id: str) -> bytes | None:
        return self._store.read_document(kind, document_id)


def _journal_ids(state: LedgerState) -> list[str]:
    """Transfer ids a failed attempt tried to create: the next attempt reads them first."""
    columns = state.journal().transfers.columns
    return list(columns[0]) if columns else []
