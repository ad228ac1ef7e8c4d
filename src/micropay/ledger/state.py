"""The ledger state machine: validates and applies events in order, in memory.

Pure: no I/O, no clock, no randomness. Time comes in as ``now_ns`` at ``begin``; a stored
transfer is read back through the ``fetch_transfer`` port the owner passes in.

A batch runs as: ``begin(now_ns)``, any number of ``create_*``/``set_credit_limit`` calls,
then ``journal()`` (what to persist) and ``commit()`` once it is durable, or ``rollback()``
to return memory to what it was at ``begin``.

Two more ports let one state be a partial view of a shared database for a single batch (the
multi-writer engine): a ``StateLoader`` that hands over committed rows the state has not seen
(read under the caller's locks), and a ``TimestampSource`` that reserves unique timestamps.
Without them the state is the whole ledger, kept in memory.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Protocol, cast

from micropay.errors import InvariantViolation, require
from micropay.ledger.limits import AMOUNT_MAX, BALANCE_MAX, CREDIT_LIMIT_MAX, NS_PER_S
from micropay.ledger.types import (
    Account,
    AccountFlags,
    AccountRequest,
    AccountRow,
    BalanceRow,
    Ledger,
    PendingStatus,
    PlainOutcomes,
    Result,
    Transfer,
    TransferColumns,
    TransferFlags,
    TransferRequest,
    same_request,
)
from micropay.ledger.validate import RequestColumns

_LINKED = int(TransferFlags.LINKED)
_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)
_RESOLVE = _POST | _VOID
_BAL_DEBIT = int(TransferFlags.BALANCING_DEBIT)
_BAL_CREDIT = int(TransferFlags.BALANCING_CREDIT)
_DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)

_OK = Result.OK
_EXISTS = Result.EXISTS

TransferOutcome = tuple[Result, Transfer | None]
"""A result code, and the transfer that was applied (ok) or found (exists...)."""

FetchTransfer = Callable[[str, int], Transfer | None]
"""Reads a durable transfer back by its id and locator (see ``LedgerState.transfer_locator``)."""

TimestampSource = Callable[[int, int], int]
"""``(count, now_ns)`` to the first of at least ``count`` consecutive timestamps no other writer
uses, each above ``now_ns``-ish and above every timestamp handed out before."""

TIMESTAMP_BLOCK_MIN = 1024
"""Fewest timestamps asked of a ``TimestampSource`` at once."""

_TIMESTAMP_UNBOUNDED = 2**63
"""The end of the timestamp range when the state owns the whole ledger (no source)."""

PLAIN_BATCH_MIN = 8
"""Fewest transfers the fast path takes (below it, its passes cost more than they save)."""


class StateLoader(Protocol):
    """Committed rows a partial state has not seen yet, read under the caller's locks."""

    def ledger(self, code: str) -> Ledger | None: ...

    def account(self, account_id: str) -> Account | None: ...

    def transfer(self, transfer_id: str) -> tuple[Transfer, PendingStatus | None] | None:
        """A stored transfer and, for a pending one, its status now."""
        ...


class _AccountState:
    """Mutable running totals of one account; only the state machine touches it."""

    __slots__ = (
        "credit_limit",
        "credits_pending",
        "credits_posted",
        "debits_pending",
        "debits_posted",
        "flags",
        "id",
        "ledger",
        "metadata",
        "timestamp",
    )

    def __init__(self, request: AccountRequest, timestamp: int) -> None:
        self.id = request.id
        self.ledger = request.ledger
        self.flags = request.flags
        self.credit_limit = request.credit_limit
        self.metadata = request.metadata
        self.timestamp = timestamp
        self.debits_posted = 0
        self.credits_posted = 0
        self.debits_pending = 0
        self.credits_pending = 0

    @classmethod
    def seeded(cls, row: AccountRow) -> _AccountState:
        """An account as committed, totals included (a partial state's view of a stored row)."""
        state = cls.__new__(cls)
        (
            state.id,
            state.ledger,
            state.flags,
            state.credit_limit,
            state.debits_posted,
            state.credits_posted,
            state.debits_pending,
            state.credits_pending,
            state.timestamp,
            state.metadata,
        ) = row
        return state

    def snapshot(self) -> Account:
        return Account(
            id=self.id,
            ledger=self.ledger,
            flags=self.flags,
            credit_limit=self.credit_limit,
            debits_posted=self.debits_posted,
            credits_posted=self.credits_posted,
            debits_pending=self.debits_pending,
            credits_pending=self.credits_pending,
            timestamp=self.timestamp,
            metadata=self.metadata,
        )

    def check_limits(self) -> None:
        """Postcondition: totals non-negative, flag limits and the 64-bit bound hold."""
        debits = self.debits_posted + self.debits_pending
        credits = self.credits_posted + self.credits_pending
        require(
            min(self.debits_posted, self.debits_pending, self.credits_posted, self.credits_pending) >= 0,
            f"account {self.id}: a total went negative",
        )
        require(debits <= BALANCE_MAX and credits <= BALANCE_MAX, f"account {self.id}: total overflows")
        if self.flags & _DMNEC:
            require(
                debits <= self.credits_posted + self.credit_limit,
                f"account {self.id}: debits exceed credits plus credit limit",
            )
        if self.flags & _CMNED:
            require(
                credits <= self.debits_posted + self.credit_limit,
                f"account {self.id}: credits exceed debits plus credit limit",
            )


class _PendingState:
    __slots__ = ("status", "transfer")

    def __init__(self, transfer: Transfer) -> None:
        self.transfer = transfer
        self.status = PendingStatus.PENDING


@dataclass(slots=True)
class Journal:
    """What one batch changed, in apply order per kind: exactly what must be persisted."""

    ledgers: list[Ledger] = field(default_factory=list)
    accounts: list[Account] = field(default_factory=list)
    credit_limits: list[tuple[str, int]] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    transfers: TransferColumns = field(default_factory=TransferColumns)

    def is_empty(self) -> bool:
        return not (self.ledgers or self.accounts or self.credit_limits or self.expired or self.transfers)


Mark = tuple[int, int, int, int, int]
"""A point inside an open batch: the lengths of the journal's lists. The journal is the undo
log: rolling back pops each list to its mark, transfers first (newest first), then credit
limits, expiries, accounts and ledgers, which is the reverse of every dependency between them."""

_new_transfer = tuple.__new__
_flags_of = operator.attrgetter("flags")


def expires_at_ns(transfer: Transfer) -> int:
    """When a pending transfer with a timeout stops reserving funds (0: never)."""
    if not transfer.timeout_s:
        return 0
    return transfer.timestamp + transfer.timeout_s * NS_PER_S


class LedgerState:
    """All ledgers, accounts, transfer ids and pending transfers, with batch undo."""

    def __init__(
        self,
        fetch_transfer: FetchTransfer,
        *,
        plain_batch_fast_path: bool = True,
        loader: StateLoader | None = None,
        timestamp_source: TimestampSource | None = None,
    ) -> None:
        """``plain_batch_fast_path=False`` forces the exact sequential path (tests compare the two).
        ``loader`` and ``timestamp_source`` make this a partial view (see the module docstring)."""
        self._fetch = fetch_transfer
        self._fast_path = plain_batch_fast_path
        self._loader = loader
        self._timestamp_source = timestamp_source
        self._timestamp_end = _TIMESTAMP_UNBOUNDED if timestamp_source is None else 0
        self._ledgers: dict[str, Ledger] = {}
        self._accounts: dict[str, _AccountState] = {}
        self._ids: dict[str, int] = {}  # transfer id -> locator
        self._ledger_accounts: dict[str, dict[str, _AccountState]] = {}
        self._limited_count: dict[str, int] = {}  # per ledger: accounts with a limit flag
        self._pending: dict[str, _PendingState] = {}
        self._expiry: list[tuple[int, int, str]] = []
        self._last_timestamp = 0
        self._now_ns = 0
        self._journal = Journal()
        self._limits_before: list[int] = []
        self._totals_bound = 0  # upper bound on any account's debit or credit total
        self._committed_timestamp = 0

    # ----------------------------------------------------------------- reads
    @property
    def last_timestamp(self) -> int:
        return self._last_timestamp

    def ledger(self, code: str) -> Ledger | None:
        found = self._ledgers.get(code)
        return found if found is not None or self._loader is None else self._load_ledger(code)

    def ledgers(self) -> list[Ledger]:
        return sorted(self._ledgers.values(), key=lambda ledger: ledger.code)

    def account(self, account_id: str) -> Account | None:
        state = self._account_state(account_id)
        return None if state is None else state.snapshot()

    def available(self, account_id: str) -> int | None:
        """``account(account_id).available`` without building the snapshot, or None for no such
        account (the charging path reads it once per payer and operation)."""
        state = self._account_state(account_id)
        if state is None:
            return None
        return state.credits_posted - state.debits_posted - state.debits_pending + state.credit_limit

    def changed_balances(self, seeded: Iterable[AccountRow]) -> list[BalanceRow]:
        """Of these accounts as seeded, the ones whose credit limit or totals differ now."""
        accounts = self._accounts
        changed: list[BalanceRow] = []
        for before in seeded:
            state = accounts[before[0]]
            now = (
                before[0],
                state.credit_limit,
                state.debits_posted,
                state.credits_posted,
                state.debits_pending,
                state.credits_pending,
            )
            if now[1:] != (before[3], before[4], before[5], before[6], before[7]):
                changed.append(now)
        return changed

    def account_ids(self) -> list[str]:
        return list(self._accounts)

    def transfer_locator(self, transfer_id: str) -> int | None:
        """Where to find a transfer: a timestamp in its batch, at or before its own.

        Batches applied whole share one locator (their first timestamp), so indexing a batch
        allocates nothing per transfer; the store finds the transfer inside that batch.
        """
        found = self._ids.get(transfer_id)
        if found is None and self._loader is not None and self._load_transfer(transfer_id):
            found = self._ids.get(transfer_id)
        return found

    def transfer_count(self) -> int:
        return len(self._ids)

    def pending_status(self, pending_id: str) -> PendingStatus | None:
        state = self._pending.get(pending_id)
        return None if state is None else state.status

    # ----------------------------------------------------------------- batch lifecycle
    def begin(self, now_ns: int) -> None:
        """Start a batch at ``now_ns``: expire pending transfers whose timeout has passed."""
        require(self._journal.is_empty(), "begin() inside an open batch")
        self._now_ns = now_ns
        if now_ns > self._last_timestamp:
            self._last_timestamp = now_ns - 1
        self._expire_due(now_ns)

    def journal(self) -> Journal:
        return self._journal

    def commit(self) -> Journal:
        """The batch is durable: forget its undo log and hand back its journal."""
        journal = self._journal
        self._journal = Journal()
        self._limits_before.clear()
        self._committed_timestamp = self._last_timestamp
        return journal

    def rollback(self) -> None:
        """Undo everything since ``begin``: memory equals what was last committed."""
        self._rollback_to((0, 0, 0, 0, 0))
        require(self._journal.is_empty(), "rollback left a journal behind")

    def mark(self) -> Mark:
        """A point inside the open batch that ``rollback_to`` can return to."""
        journal = self._journal
        return (
            len(journal.transfers),
            len(journal.credit_limits),
            len(journal.expired),
            len(journal.accounts),
            len(journal.ledgers),
        )

    def rollback_to(self, mark: Mark) -> None:
        """Undo what was applied since ``mark`` (one operation of a batch)."""
        now = self.mark()
        require(all(0 <= m <= n for m, n in zip(mark, now, strict=True)), "rollback_to() past the open batch")
        self._rollback_to(mark)

    def _next_timestamp(self) -> int:
        if self._last_timestamp + 1 >= self._timestamp_end:
            self._reserve_timestamps(1)
        self._last_timestamp += 1
        return self._last_timestamp

    def _reserve_timestamps(self, count: int) -> None:
        """Take a fresh block of timestamps from the source (a partial state only)."""
        source = self._timestamp_source
        if source is None:
            raise InvariantViolation("timestamps exhausted without a source")
        block = max(count, TIMESTAMP_BLOCK_MIN)
        first = source(block, self._now_ns)
        require(first > self._last_timestamp, "timestamp source went backwards")
        self._last_timestamp = first - 1
        self._timestamp_end = first + block

    # ----------------------------------------------------------------- loading (partial state)
    def _account_state(self, account_id: str) -> _AccountState | None:
        state = self._accounts.get(account_id)
        if state is None and self._loader is not None:
            state = self._load_account(account_id)
        return state

    def _loader_or_fail(self) -> StateLoader:
        if self._loader is None:
            raise InvariantViolation("a state that owns the whole ledger has nothing to load")
        return self._loader

    def _load_ledger(self, code: str) -> Ledger | None:
        ledger = self._loader_or_fail().ledger(code)
        if ledger is not None:
            self._ledgers[code] = ledger
        return ledger

    def _load_account(self, account_id: str) -> _AccountState | None:
        account = self._loader_or_fail().account(account_id)
        if account is None:
            return None
        require(account.id == account_id, "loader answered another account")
        return self._seed_account_state(
            (
                account.id,
                account.ledger,
                account.flags,
                account.credit_limit,
                account.debits_posted,
                account.credits_posted,
                account.debits_pending,
                account.credits_pending,
                account.timestamp,
                account.metadata,
            )
        )

    def _seed_account_state(self, row: AccountRow) -> _AccountState:
        state = _AccountState.seeded(row)
        if state.ledger not in self._ledgers:
            require(self._load_ledger(state.ledger) is not None, f"account {state.id}: ledger missing")
        if state.flags & (_DMNEC | _CMNED) or state.credits_pending < 0 or state.debits_pending < 0:
            state.check_limits()
        self._add_account(state)
        self._totals_bound = max(
            self._totals_bound,
            state.debits_posted + state.debits_pending,
            state.credits_posted + state.credits_pending,
        )
        return state

    def _load_transfer(self, transfer_id: str) -> bool:
        """Seed a stored transfer (and, if pending, its accounts and status); False if none."""
        found = self._loader_or_fail().transfer(transfer_id)
        if found is None:
            return False
        self.seed_transfer(*found)
        return True

    def seed_accounts(self, rows: Iterable[AccountRow]) -> None:
        """Make committed accounts (with their totals) known without journaling them."""
        self._loader_or_fail()
        accounts = self._accounts
        for row in rows:
            if row[0] not in accounts:
                self._seed_account_state(row)

    def seed_transfer(self, transfer: Transfer, status: PendingStatus | None) -> None:
        """Make a committed transfer known (its id, and a pending one's status) without
        journaling it. A pending transfer still open past its timeout expires in this batch."""
        self._loader_or_fail()
        if transfer.id in self._ids:
            return
        self._ids[transfer.id] = transfer.timestamp
        if not transfer.flags & _PENDING:
            return
        require(status is not None, f"pending transfer {transfer.id} loaded without a status")
        for account_id in (transfer.debit_account_id, transfer.credit_account_id):
            require(self._account_state(account_id) is not None, f"transfer {transfer.id}: account missing")
        pending = _PendingState(transfer)
        pending.status = cast(PendingStatus, status)
        self._pending[transfer.id] = pending
        if pending.status is PendingStatus.PENDING:
            expires_at = expires_at_ns(transfer)
            if expires_at:
                heapq.heappush(self._expiry, (expires_at, transfer.timestamp, transfer.id))
                if expires_at <= self._now_ns:
                    self._expire_due(self._now_ns)

    # ----------------------------------------------------------------- ledgers and accounts
    def create_ledger(self, code: str, scale: int) -> tuple[Result, Ledger]:
        existing = self.ledger(code)
        if existing is not None:
            same = existing.scale == scale
            return (_EXISTS if same else Result.EXISTS_WITH_DIFFERENT_FIELDS), existing
        ledger = Ledger(code=code, scale=scale, timestamp=self._next_timestamp())
        self._ledgers[code] = ledger
        self._journal.ledgers.append(ledger)
        return _OK, ledger

    def create_account(self, request: AccountRequest) -> tuple[Result, Account | None]:
        existing = self._account_state(request.id)
        if existing is not None:
            same = (
                existing.ledger == request.ledger
                and existing.flags == request.flags
                and existing.metadata == request.metadata
            )
            return (_EXISTS if same else Result.EXISTS_WITH_DIFFERENT_FIELDS), existing.snapshot()
        if request.flags & _DMNEC and request.flags & _CMNED:
            return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE, None
        if self.ledger(request.ledger) is None:
            return Result.LEDGER_NOT_FOUND, None
        state = _AccountState(request, self._next_timestamp())
        self._add_account(state)
        account = state.snapshot()
        self._journal.accounts.append(account)
        return _OK, account

    def _add_account(self, state: _AccountState) -> None:
        self._accounts[state.id] = state
        self._ledger_accounts.setdefault(state.ledger, {})[state.id] = state
        if state.flags & (_DMNEC | _CMNED):
            self._limited_count[state.ledger] = self._limited_count.get(state.ledger, 0) + 1

    def _remove_account(self, account_id: str) -> None:
        state = self._accounts.pop(account_id)
        del self._ledger_accounts[state.ledger][account_id]
        if state.flags & (_DMNEC | _CMNED):
            self._limited_count[state.ledger] -= 1

    def set_credit_limit(self, account_id: str, credit_limit: int) -> tuple[Result, Account | None]:
        """Change an account's credit limit; never below what is already used against it."""
        state = self._account_state(account_id)
        if state is None:
            return Result.ACCOUNT_NOT_FOUND, None
        require(0 <= credit_limit <= CREDIT_LIMIT_MAX, "credit limit out of range")
        if state.flags & _DMNEC and (state.debits_posted + state.debits_pending > state.credits_posted + credit_limit):
            return Result.CREDIT_LIMIT_BELOW_USAGE, state.snapshot()
        if state.flags & _CMNED and (state.credits_posted + state.credits_pending > state.debits_posted + credit_limit):
            return Result.CREDIT_LIMIT_BELOW_USAGE, state.snapshot()
        self._limits_before.append(state.credit_limit)
        state.credit_limit = credit_limit
        self._journal.credit_limits.append((account_id, credit_limit))
        state.check_limits()
        return _OK, state.snapshot()

    # ----------------------------------------------------------------- transfers
    def create_transfers(
        self, requests: Sequence[TransferRequest], columns: RequestColumns | None = None
    ) -> Sequence[TransferOutcome]:
        """Apply ``requests`` in order. Independent unless chained by ``linked``: a chain
        applies whole or not at all. ``columns``, if given, is ``zip(*requests)`` already made."""
        if columns is None and len(requests) >= PLAIN_BATCH_MIN and self._fast_path:
            columns = tuple(zip(*requests, strict=True))
        fast = None if columns is None else self._create_plain_batch(columns)
        if fast is not None:
            return fast
        count = len(requests)
        outcomes: list[TransferOutcome] = [(_OK, None)] * count
        create = self._create_transfer
        index = 0
        while index < count:
            request = requests[index]
            if not request.flags & _LINKED:
                outcomes[index] = create(request)
                index += 1
                continue
            index = self._create_chain(requests, index, outcomes)
        return outcomes

    def create_plain_transfers(self, columns: RequestColumns) -> bool:
        """Apply the transfers ``columns`` (``zip(*requests)``, validated) whole, when the fast
        path below applies; else answer False, having applied nothing (the caller then builds
        the requests and takes ``create_transfers``)."""
        return self._create_plain_batch(columns) is not None

    def _create_plain_batch(self, columns: RequestColumns) -> PlainOutcomes | None:
        """All-or-nothing fast path for a batch that is certain to succeed in any order.

        Applies when every request is a plain transfer (no flags, pending id or timeout), every
        id is new, every account exists on the one ledger, and every limit-flagged account has
        room for the sum of what the batch debits (credits) it, ignoring what the batch brings
        in. Then each request would answer ``ok`` in sequence too, so the checks run per batch
        in C-level passes over the columns. Anything else returns None: the caller takes the
        exact sequential path. The tests check that both paths agree.
        """
        count = len(columns[0])
        if count < PLAIN_BATCH_MIN or not self._fast_path:
            return None
        ids, debit_ids, credit_ids, amounts, ledgers, codes, flags, pending_ids, timeouts, metadata = columns
        if any(flags) or any(pending_ids) or any(timeouts) or None in amounts:
            return None
        if min(amounts) <= 0 or max(amounts) > AMOUNT_MAX:
            return None
        total = sum(amounts)
        if self._totals_bound + total > BALANCE_MAX:
            return None
        ledger = ledgers[0]
        if ledgers.count(ledger) != count or any(map(str.__eq__, debit_ids, credit_ids)):
            return None
        on_ledger = self._ledger_accounts.get(ledger)
        if on_ledger is None:
            return None
        debit_accounts = list(map(on_ledger.get, debit_ids))  # None: missing, or on another ledger
        credit_accounts = list(map(on_ledger.get, credit_ids))
        if None in debit_accounts or None in credit_accounts:
            return None
        known = self._ids
        if not known.keys().isdisjoint(ids):
            return None
        limited: list[_AccountState] | None = None
        if self._limited_count.get(ledger):
            limited = self._limited_accounts(
                cast(list[_AccountState], debit_accounts), cast(list[_AccountState], credit_accounts), amounts
            )
            if limited is None:  # an account might run out of room: only the exact path can tell
                return None
        if self._last_timestamp + count >= self._timestamp_end:
            self._reserve_timestamps(count)
        start = self._last_timestamp + 1
        stamps = range(start, start + count)
        known_before = len(known)
        known.update(zip(ids, repeat(start)))
        if len(known) != known_before + count:  # an id repeats inside the batch
            for transfer_id in ids:
                known.pop(transfer_id, None)
            return None
        self._last_timestamp += count
        for debit_account, credit_account, amount in zip(debit_accounts, credit_accounts, amounts, strict=True):
            debit_account.debits_posted += amount  # type: ignore[union-attr]
            credit_account.credits_posted += amount  # type: ignore[union-attr]
        self._totals_bound += total
        applied = (ids, debit_ids, credit_ids, amounts, ledgers, codes, flags, pending_ids, timeouts, stamps, metadata)
        self._journal.transfers.extend_columns(applied)
        for account in limited or ():
            account.check_limits()
        return PlainOutcomes(applied)

    @staticmethod
    def _limited_accounts(
        debit_accounts: list[_AccountState], credit_accounts: list[_AccountState], amounts: Sequence[int]
    ) -> list[_AccountState] | None:
        """The limit-flagged accounts a plain batch touches, or None if any might run out of room."""
        debited: dict[_AccountState, int] = {}
        credited: dict[_AccountState, int] = {}
        for account, amount in zip(debit_accounts, amounts, strict=True):
            if account.flags & _DMNEC:
                debited[account] = debited.get(account, 0) + amount
        for account, amount in zip(credit_accounts, amounts, strict=True):
            if account.flags & _CMNED:
                credited[account] = credited.get(account, 0) + amount
        for account, amount in debited.items():
            room = account.credits_posted + account.credit_limit - account.debits_posted - account.debits_pending
            if amount > room:
                return None
        for account, amount in credited.items():
            room = account.debits_posted + account.credit_limit - account.credits_posted - account.credits_pending
            if amount > room:
                return None
        return [*debited, *credited]

    def _create_chain(self, requests: Sequence[TransferRequest], start: int, outcomes: list[TransferOutcome]) -> int:
        """Apply the linked chain that begins at ``start``; return the index after it."""
        count = len(requests)
        end = start
        while end < count and requests[end].flags & _LINKED:
            end += 1
        chain_open = end == count
        last = count - 1 if chain_open else end
        undo_mark = self.mark()
        failed_at = -1
        failure: TransferOutcome = (Result.LINKED_EVENT_FAILED, None)
        seen_ok = False
        first_exists = -1
        for index in range(start, last + 1):
            if chain_open and index == last:
                failed_at, failure = index, (Result.LINKED_EVENT_CHAIN_OPEN, None)
                break
            outcome = self._create_transfer(requests[index])
            outcomes[index] = outcome
            code = outcome[0]
            seen_ok = seen_ok or code is _OK
            if code is _EXISTS and first_exists < 0:
                first_exists = index
            if code is not _OK and code is not _EXISTS:
                failed_at, failure = index, outcome
                break
            if seen_ok and first_exists >= 0:
                # A chain replays whole (all exist) or applies whole (all new); a mix fails at
                # its first existing event, which answers ``exists``: no event of a failed
                # chain may answer ``ok``.
                failed_at, failure = first_exists, outcomes[first_exists]
                break
        if failed_at >= 0:
            self._rollback_to(undo_mark)
            for index in range(start, last + 1):
                outcomes[index] = (Result.LINKED_EVENT_FAILED, None)
            outcomes[failed_at] = failure
        return last + 1

    def _existing(self, request: TransferRequest, locator: int) -> TransferOutcome:
        stored: Transfer | None = None
        transfers = self._journal.transfers
        if locator > self._committed_timestamp and request.id in transfers.columns[0]:  # applied in this batch
            stored = transfers[transfers.columns[0].index(request.id)]
        else:
            stored = self._fetch(request.id, locator)
        if stored is None:
            raise InvariantViolation(f"transfer {request.id} is indexed but cannot be read back")
        pending_amount: int | None = None
        if stored.flags & _POST:
            pending = self._pending.get(stored.pending_id)
            if pending is None and self._loader is not None and self._load_transfer(stored.pending_id):
                pending = self._pending.get(stored.pending_id)
            pending_amount = None if pending is None else pending.transfer.amount
        if same_request(request, stored, pending_amount):
            return _EXISTS, stored
        return Result.EXISTS_WITH_DIFFERENT_FIELDS, stored

    def _create_transfer(self, request: TransferRequest) -> TransferOutcome:
        transfer_id = request.id
        existing = self._ids.get(transfer_id)
        if existing is not None:
            return self._existing(request, existing)
        flags = int(request.flags)  # a TransferFlags value is stored as a plain int
        if flags & _RESOLVE:
            return self._resolve_pending(request)
        if request.pending_id:
            return Result.PENDING_ID_MUST_BE_EMPTY, None
        if request.timeout_s and not flags & _PENDING:
            return Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, None
        amount = request.amount
        if amount is None or amount <= 0:
            return Result.AMOUNT_MUST_BE_POSITIVE, None
        if amount > AMOUNT_MAX:
            return Result.AMOUNT_EXCEEDS_MAXIMUM, None
        debit_id = request.debit_account_id
        credit_id = request.credit_account_id
        if debit_id == credit_id:
            return Result.ACCOUNTS_MUST_BE_DIFFERENT, None
        accounts = self._accounts
        dr = accounts.get(debit_id)
        if dr is None:
            dr = self._account_state(debit_id)
            if dr is None:
                return Result.DEBIT_ACCOUNT_NOT_FOUND, None
        cr = accounts.get(credit_id)
        if cr is None:
            cr = self._account_state(credit_id)
            if cr is None:
                return Result.CREDIT_ACCOUNT_NOT_FOUND, None
        ledger = request.ledger
        if dr.ledger != ledger or cr.ledger != ledger:
            return Result.LEDGER_MISMATCH, None
        if flags & _BAL_DEBIT and dr.flags & _DMNEC:
            room = dr.credits_posted + dr.credit_limit - dr.debits_posted - dr.debits_pending
            amount = min(amount, max(room, 0))
            if amount == 0:
                return Result.EXCEEDS_CREDITS, None
        if flags & _BAL_CREDIT and cr.flags & _CMNED:
            room = cr.debits_posted + cr.credit_limit - cr.credits_posted - cr.credits_pending
            amount = min(amount, max(room, 0))
            if amount == 0:
                return Result.EXCEEDS_DEBITS, None
        debits = dr.debits_posted + dr.debits_pending + amount
        if dr.flags & _DMNEC and debits > dr.credits_posted + dr.credit_limit:
            return Result.EXCEEDS_CREDITS, None
        credits = cr.credits_posted + cr.credits_pending + amount
        if cr.flags & _CMNED and credits > cr.debits_posted + cr.credit_limit:
            return Result.EXCEEDS_DEBITS, None
        if debits > BALANCE_MAX:
            return Result.OVERFLOWS_DEBITS, None
        if credits > BALANCE_MAX:
            return Result.OVERFLOWS_CREDITS, None

        timestamp = self._next_timestamp()
        transfer: Transfer = _new_transfer(  # Transfer(...) without its Python-level __new__
            Transfer,
            (
                transfer_id,
                debit_id,
                credit_id,
                amount,
                ledger,
                request.code,
                flags,
                "",
                request.timeout_s,
                timestamp,
                request.metadata,
            ),
        )
        if flags & _PENDING:
            dr.debits_pending += amount
            cr.credits_pending += amount
            self._add_pending(transfer)
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
        self._totals_bound += amount
        # Postconditions: the checks above are what kept these true.
        if dr.flags & _DMNEC and dr.debits_posted + dr.debits_pending > dr.credits_posted + dr.credit_limit:
            raise InvariantViolation(f"account {debit_id}: debits exceed credits after a transfer")
        if cr.flags & _CMNED and cr.credits_posted + cr.credits_pending > cr.debits_posted + cr.credit_limit:
            raise InvariantViolation(f"account {credit_id}: credits exceed debits after a transfer")
        self._ids[transfer_id] = timestamp
        self._journal.transfers.append(transfer)
        return _OK, transfer

    def _add_pending(self, transfer: Transfer) -> None:
        self._pending[transfer.id] = _PendingState(transfer)
        expires_at = expires_at_ns(transfer)
        if expires_at:
            heapq.heappush(self._expiry, (expires_at, transfer.timestamp, transfer.id))

    def _resolve_pending(self, request: TransferRequest) -> TransferOutcome:
        flags = int(request.flags)
        pending_id = request.pending_id
        if flags & _PENDING or (flags & _POST and flags & _VOID) or flags & (_BAL_DEBIT | _BAL_CREDIT):
            return Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE, None
        if not pending_id:
            return Result.PENDING_ID_REQUIRED, None
        if pending_id == request.id:
            return Result.PENDING_ID_MUST_BE_DIFFERENT, None
        if request.timeout_s:
            return Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER, None
        state = self._pending.get(pending_id)
        if state is None and self._loader is not None and pending_id not in self._ids:
            self._load_transfer(pending_id)
            state = self._pending.get(pending_id)
        if state is None:
            if pending_id in self._ids:
                return Result.PENDING_TRANSFER_NOT_PENDING, None
            return Result.PENDING_TRANSFER_NOT_FOUND, None
        pending = state.transfer
        if request.debit_account_id and request.debit_account_id != pending.debit_account_id:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID, None
        if request.credit_account_id and request.credit_account_id != pending.credit_account_id:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID, None
        if request.ledger and request.ledger != pending.ledger:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER, None
        amount = request.amount
        if amount is None:
            amount = pending.amount
        elif flags & _POST:
            if amount <= 0:
                return Result.AMOUNT_MUST_BE_POSITIVE, None
            if amount > pending.amount:
                return Result.EXCEEDS_PENDING_TRANSFER_AMOUNT, None
        elif amount != pending.amount:
            return Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT, None
        status = state.status
        if status is PendingStatus.POSTED:
            return Result.PENDING_TRANSFER_ALREADY_POSTED, None
        if status is PendingStatus.VOIDED:
            return Result.PENDING_TRANSFER_ALREADY_VOIDED, None
        if status is PendingStatus.EXPIRED:
            return Result.PENDING_TRANSFER_EXPIRED, None

        transfer = Transfer(
            request.id,
            pending.debit_account_id,
            pending.credit_account_id,
            amount,
            pending.ledger,
            request.code,
            flags,
            pending_id,
            0,
            self._next_timestamp(),
            request.metadata,
        )
        self._apply_resolution(transfer, state)
        self._ids[transfer.id] = transfer.timestamp
        self._journal.transfers.append(transfer)
        return _OK, transfer

    def _apply_resolution(self, transfer: Transfer, state: _PendingState, check: bool = True) -> None:
        """Release a pending reservation; a post then books ``transfer.amount``.

        ``check=False`` on replay: accounts then carry today's credit limits, which an earlier
        point of the log need not meet (a limit lowered later); ``verify()`` checks the end state.
        """
        pending = state.transfer
        dr = self._accounts[pending.debit_account_id]
        cr = self._accounts[pending.credit_account_id]
        dr.debits_pending -= pending.amount
        cr.credits_pending -= pending.amount
        if transfer.flags & _POST:
            dr.debits_posted += transfer.amount
            cr.credits_posted += transfer.amount
            state.status = PendingStatus.POSTED
        else:
            state.status = PendingStatus.VOIDED
        if check:
            dr.check_limits()
            cr.check_limits()

    # ----------------------------------------------------------------- expiry
    def _expire_due(self, now_ns: int) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now_ns:
            _, timestamp, pending_id = heapq.heappop(heap)
            state = self._pending.get(pending_id)
            if state is None or state.transfer.timestamp != timestamp:
                continue  # a rolled-back pending transfer left this entry behind
            if state.status is not PendingStatus.PENDING:
                continue
            self._release_expired(state)
            self._journal.expired.append(pending_id)

    def _release_expired(self, state: _PendingState, check: bool = True) -> None:
        pending = state.transfer
        dr = self._accounts[pending.debit_account_id]
        cr = self._accounts[pending.credit_account_id]
        dr.debits_pending -= pending.amount
        cr.credits_pending -= pending.amount
        state.status = PendingStatus.EXPIRED
        if check:  # see _apply_resolution
            dr.check_limits()
            cr.check_limits()

    # ----------------------------------------------------------------- undo
    def _rollback_to(self, mark: Mark) -> None:
        transfers_mark, limits_mark, expired_mark, accounts_mark, ledgers_mark = mark
        journal = self._journal
        while len(journal.transfers) > transfers_mark:
            transfer = journal.transfers.pop()
            state = self._pending[transfer.pending_id] if transfer.flags & _RESOLVE else None
            self._undo_transfer(transfer, state)
        while len(journal.credit_limits) > limits_mark:
            account_id, _ = journal.credit_limits.pop()
            self._accounts[account_id].credit_limit = self._limits_before.pop()
        while len(journal.expired) > expired_mark:
            self._undo_expiry(self._pending[journal.expired.pop()])
        while len(journal.accounts) > accounts_mark:
            self._remove_account(journal.accounts.pop().id)
        while len(journal.ledgers) > ledgers_mark:
            del self._ledgers[journal.ledgers.pop().code]

    def _undo_transfer(self, transfer: Transfer, state: _PendingState | None) -> None:
        del self._ids[transfer.id]
        flags = transfer.flags
        if state is not None:
            pending = state.transfer
            dr = self._accounts[pending.debit_account_id]
            cr = self._accounts[pending.credit_account_id]
            if flags & _POST:
                dr.debits_posted -= transfer.amount
                cr.credits_posted -= transfer.amount
            dr.debits_pending += pending.amount
            cr.credits_pending += pending.amount
            state.status = PendingStatus.PENDING
            return
        dr = self._accounts[transfer.debit_account_id]
        cr = self._accounts[transfer.credit_account_id]
        if flags & _PENDING:
            dr.debits_pending -= transfer.amount
            cr.credits_pending -= transfer.amount
            del self._pending[transfer.id]
        else:
            dr.debits_posted -= transfer.amount
            cr.credits_posted -= transfer.amount

    def _undo_expiry(self, state: _PendingState) -> None:
        pending = state.transfer
        self._accounts[pending.debit_account_id].debits_pending += pending.amount
        self._accounts[pending.credit_account_id].credits_pending += pending.amount
        state.status = PendingStatus.PENDING
        heapq.heappush(self._expiry, (expires_at_ns(pending), pending.timestamp, pending.id))

    # ----------------------------------------------------------------- recovery
    def replay(self, journal: Journal) -> None:
        """Re-apply a committed journal without validating it (it was validated when it ran)."""
        require(self._journal.is_empty(), "replay() inside an open batch")
        for ledger in journal.ledgers:
            self._ledgers[ledger.code] = ledger
            self._last_timestamp = max(self._last_timestamp, ledger.timestamp)
        for account in journal.accounts:
            request = AccountRequest(account.id, account.ledger, account.flags, account.credit_limit, account.metadata)
            self._add_account(_AccountState(request, account.timestamp))
            self._last_timestamp = max(self._last_timestamp, account.timestamp)
        for account_id, credit_limit in journal.credit_limits:
            self._accounts[account_id].credit_limit = credit_limit
        for pending_id in journal.expired:
            self._release_expired(self._pending[pending_id], check=False)
        self._replay_transfers(journal.transfers)
        self._committed_timestamp = self._last_timestamp

    def _replay_transfers(self, transfers: TransferColumns) -> None:
        if not transfers:
            return
        accounts = self._accounts
        ids = self._ids
        columns = transfers.columns
        flags_column = columns[6]
        if not any(flags_column):  # all plain: column passes
            ids.update(zip(columns[0], repeat(columns[9][0])))
            amounts = columns[3]
            debit_accounts = map(accounts.__getitem__, columns[1])
            credit_accounts = map(accounts.__getitem__, columns[2])
            for debit_account, credit_account, amount in zip(debit_accounts, credit_accounts, amounts, strict=True):
                debit_account.debits_posted += amount
                credit_account.credits_posted += amount
            self._totals_bound += sum(amounts)
            self._last_timestamp = max(self._last_timestamp, columns[9][-1])
            return
        for transfer in transfers:
            flags = transfer.flags
            if flags & _RESOLVE:
                self._apply_resolution(transfer, self._pending[transfer.pending_id], check=False)
            else:
                dr = accounts[transfer.debit_account_id]
                cr = accounts[transfer.credit_account_id]
                if flags & _PENDING:
                    dr.debits_pending += transfer.amount
                    cr.credits_pending += transfer.amount
                    self._add_pending(transfer)
                else:
                    dr.debits_posted += transfer.amount
                    cr.credits_posted += transfer.amount
                self._totals_bound += transfer.amount
            ids[transfer.id] = transfer.timestamp
        self._last_timestamp = max(self._last_timestamp, columns[9][-1])

    # ----------------------------------------------------------------- invariants
    def verify(self) -> None:
        """Check every invariant over the whole state (O(accounts)); raise InvariantViolation."""
        sums: dict[str, list[int]] = {code: [0, 0, 0, 0] for code in self._ledgers}
        for account in self._accounts.values():
            require(account.ledger in sums, f"account {account.id}: unknown ledger {account.ledger}")
            account.check_limits()
            totals = sums[account.ledger]
            totals[0] += account.debits_posted
            totals[1] += account.credits_posted
            totals[2] += account.debits_pending
            totals[3] += account.credits_pending
        for code, (debits, credits, debits_pending, credits_pending) in sums.items():
            require(debits == credits, f"ledger {code}: posted debits {debits} != credits {credits}")
            require(
                debits_pending == credits_pending,
                f"ledger {code}: pending debits {debits_pending} != credits {credits_pending}",
            )
        reserved: dict[str, int] = {}
        for state in self._pending.values():
            if state.status is PendingStatus.PENDING:
                debit_id = state.transfer.debit_account_id
                reserved[debit_id] = reserved.get(debit_id, 0) + state.transfer.amount
        for account in self._accounts.values():
            require(
                reserved.get(account.id, 0) == account.debits_pending,
                f"account {account.id}: debits_pending disagrees with open pending transfers",
            )
