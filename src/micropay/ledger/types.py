"""Plain immutable ledger data: flags, result codes, ledgers, accounts and transfers."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, overload

Metadata = tuple[tuple[str, str], ...]
"""Metadata as sorted (key, value) pairs: immutable and comparable."""

AccountRow = tuple[str, str, int, int, int, int, int, int, int, Metadata]
"""An account as a plain tuple in ``Account``'s field order (how a shared store hands over
thousands of them per batch without building an object each)."""

BalanceRow = tuple[str, int, int, int, int, int]
"""What a batch changes on a stored account: id, credit limit and the four totals."""


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1
    PENDING = 2
    POST_PENDING = 4
    VOID_PENDING = 8
    BALANCING_DEBIT = 16
    BALANCING_CREDIT = 32


class AccountFlags(enum.IntFlag):
    NONE = 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 2


TRANSFER_FLAG_NAMES: dict[str, TransferFlags] = {
    "linked": TransferFlags.LINKED,
    "pending": TransferFlags.PENDING,
    "post_pending": TransferFlags.POST_PENDING,
    "void_pending": TransferFlags.VOID_PENDING,
    "balancing_debit": TransferFlags.BALANCING_DEBIT,
    "balancing_credit": TransferFlags.BALANCING_CREDIT,
}
ACCOUNT_FLAG_NAMES: dict[str, AccountFlags] = {
    "debits_must_not_exceed_credits": AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    "credits_must_not_exceed_debits": AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
}


def flag_names(flags: int, names: dict[str, TransferFlags] | dict[str, AccountFlags]) -> list[str]:
    """The names of the bits set in ``flags``, in declaration order."""
    return [name for name, bit in names.items() if flags & bit]


class Result(enum.StrEnum):
    """Outcome of one event. ``ok`` and ``exists`` are successes; the rest move nothing."""

    OK = "ok"
    EXISTS = "exists"
    EXISTS_WITH_DIFFERENT_FIELDS = "exists_with_different_fields"
    ACCOUNTS_MUST_BE_DIFFERENT = "accounts_must_be_different"
    DEBIT_ACCOUNT_NOT_FOUND = "debit_account_not_found"
    CREDIT_ACCOUNT_NOT_FOUND = "credit_account_not_found"
    ACCOUNT_NOT_FOUND = "account_not_found"
    LEDGER_NOT_FOUND = "ledger_not_found"
    LEDGER_MISMATCH = "ledger_mismatch"
    AMOUNT_MUST_BE_POSITIVE = "amount_must_be_positive"
    AMOUNT_EXCEEDS_MAXIMUM = "amount_exceeds_maximum"
    EXCEEDS_CREDITS = "exceeds_credits"
    EXCEEDS_DEBITS = "exceeds_debits"
    OVERFLOWS_DEBITS = "overflows_debits"
    OVERFLOWS_CREDITS = "overflows_credits"
    LINKED_EVENT_FAILED = "linked_event_failed"
    LINKED_EVENT_CHAIN_OPEN = "linked_event_chain_open"
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = "flags_are_mutually_exclusive"
    PENDING_ID_REQUIRED = "pending_id_required"
    PENDING_ID_MUST_BE_EMPTY = "pending_id_must_be_empty"
    PENDING_ID_MUST_BE_DIFFERENT = "pending_id_must_be_different"
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = "timeout_reserved_for_pending_transfer"
    PENDING_TRANSFER_NOT_FOUND = "pending_transfer_not_found"
    PENDING_TRANSFER_NOT_PENDING = "pending_transfer_not_pending"
    PENDING_TRANSFER_ALREADY_POSTED = "pending_transfer_already_posted"
    PENDING_TRANSFER_ALREADY_VOIDED = "pending_transfer_already_voided"
    PENDING_TRANSFER_EXPIRED = "pending_transfer_expired"
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = "pending_transfer_has_different_debit_account_id"
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = "pending_transfer_has_different_credit_account_id"
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = "pending_transfer_has_different_ledger"
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = "pending_transfer_has_different_amount"
    EXCEEDS_PENDING_TRANSFER_AMOUNT = "exceeds_pending_transfer_amount"
    CREDIT_LIMIT_BELOW_USAGE = "credit_limit_below_usage"


SUCCESS_RESULTS = frozenset({Result.OK, Result.EXISTS})


class PendingStatus(enum.IntEnum):
    PENDING = 0
    POSTED = 1
    VOIDED = 2
    EXPIRED = 3


@dataclass(frozen=True, slots=True)
class Ledger:
    """A currency or asset: ``code`` names it, ``scale`` digits follow the point."""

    code: str
    scale: int
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class AccountRequest:
    """Asks to open an account."""

    id: str
    ledger: str
    flags: int = 0
    credit_limit: int = 0
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class Account:
    """A snapshot of an account and its four running totals."""

    id: str
    ledger: str
    flags: int
    credit_limit: int
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    timestamp: int
    metadata: Metadata = ()

    @property
    def balance(self) -> int:
        """Credits posted less debits posted."""
        return self.credits_posted - self.debits_posted

    @property
    def available(self) -> int:
        """What can still be debited: balance, less pending debits, plus the credit limit."""
        return self.balance - self.debits_pending + self.credit_limit


class TransferRequest(NamedTuple):
    """Asks to move money. A NamedTuple: it is built once per transfer on the hot path,
    and costs a quarter of a frozen dataclass there.

    For ``post_pending`` / ``void_pending`` the accounts and ledger may be left empty (taken
    from the pending transfer) and ``amount`` None (post or void all of it).
    """

    id: str
    debit_account_id: str = ""
    credit_account_id: str = ""
    amount: int | None = None
    ledger: str = ""
    code: int = 0
    flags: int = 0
    pending_id: str = ""
    timeout_s: int = 0
    metadata: Metadata = ()


class Transfer(NamedTuple):
    """A transfer as it was applied: ``amount`` is what moved; ``timestamp`` (ns) is unique,
    the transfer's place in the ledger's order (increasing in commit order with one writer;
    with several, increasing per writer: see docs/operations.md)."""

    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    ledger: str
    code: int
    flags: int
    pending_id: str
    timeout_s: int
    timestamp: int
    metadata: Metadata


def same_request(request: TransferRequest, stored: Transfer, pending_amount: int | None = None) -> bool:
    """Whether replaying ``request`` asks for exactly what ``stored`` did.

    Empty accounts/ledger and a None amount on post/void mean "as the pending transfer" (a
    None amount on a post means all of it: ``pending_amount``, the pending transfer's amount,
    when the caller knows it); a balancing transfer's amount is a ceiling, so any ceiling at or
    above what moved matches.
    """
    flags = request.flags
    if flags != stored.flags or request.code != stored.code or request.pending_id != stored.pending_id:
        return False
    if request.timeout_s != stored.timeout_s or request.metadata != stored.metadata:
        return False
    resolved = flags & (TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING)
    for asked, had in (
        (request.debit_account_id, stored.debit_account_id),
        (request.credit_account_id, stored.credit_account_id),
        (request.ledger, stored.ledger),
    ):
        if asked != had and not (resolved and asked == ""):
            return False
    if request.amount is None:
        if flags & TransferFlags.POST_PENDING and pending_amount is not None:
            return stored.amount == pending_amount
        return bool(resolved)
    if flags & (TransferFlags.BALANCING_DEBIT | TransferFlags.BALANCING_CREDIT):
        return request.amount >= stored.amount
    return request.amount == stored.amount


TRANSFER_FIELD_COUNT = len(Transfer._fields)
_TIMESTAMP = Transfer._fields.index("timestamp")
_make_transfer = Transfer._make


class TransferColumns:
    """Transfers in apply order, held as one list per field (in ``Transfer._fields`` order).

    Columnar, because batches are checked, applied, encoded and replayed column by column at
    C speed; a row is built as a ``Transfer`` only when one is read.
    """

    __slots__ = ("columns",)

    def __init__(self, columns: list[list[Any]] | None = None) -> None:
        if columns is None:
            columns = [[] for _ in range(TRANSFER_FIELD_COUNT)]
        if len(columns) != TRANSFER_FIELD_COUNT or len({len(column) for column in columns}) > 1:
            raise ValueError("transfer columns must be equally long, one per Transfer field")
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns[0])

    def __bool__(self) -> bool:
        return bool(self.columns[0])

    def __getitem__(self, index: int) -> Transfer:
        return _make_transfer([column[index] for column in self.columns])

    def __iter__(self) -> Iterator[Transfer]:
        return map(_make_transfer, zip(*self.columns, strict=True))

    @property
    def timestamps(self) -> list[int]:
        column: list[int] = self.columns[_TIMESTAMP]
        return column

    def append(self, transfer: Transfer) -> None:
        for column, value in zip(self.columns, transfer, strict=True):
            column.append(value)

    def extend_columns(self, columns: Sequence[Iterable[Any]]) -> None:
        for column, values in zip(self.columns, columns, strict=True):
            column.extend(values)

    def pop(self) -> Transfer:
        return _make_transfer([column.pop() for column in self.columns])


class PlainOutcomes(Sequence[tuple[Result, Transfer | None]]):
    """Outcomes of a batch that applied whole on the fast path: each is ``ok`` with its
    transfer, built from the batch's (immutable) columns when read."""

    __slots__ = ("_columns",)

    def __init__(self, columns: tuple[Sequence[Any], ...]) -> None:
        self._columns = columns

    def __len__(self) -> int:
        return len(self._columns[0])

    def __iter__(self) -> Iterator[tuple[Result, Transfer | None]]:
        ok = Result.OK
        for row in zip(*self._columns, strict=True):
            yield ok, _make_transfer(row)

    @overload
    def __getitem__(self, index: int) -> tuple[Result, Transfer | None]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[Result, Transfer | None]]: ...
    def __getitem__(
        self, index: int | slice
    ) -> tuple[Result, Transfer | None] | Sequence[tuple[Result, Transfer | None]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return Result.OK, _make_transfer([column[index] for column in self._columns])


def outcome_codes(outcomes: Sequence[tuple[Result, Transfer | None]]) -> list[Result]:
    """The result code of each outcome, without building transfers where none are needed."""
    if isinstance(outcomes, PlainOutcomes):
        return [Result.OK] * len(outcomes)
    return [code for code, _ in outcomes]
