"""What one operation sees inside an engine batch, and how a batch runs its operations."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Protocol, TypeVar

from micropay.errors import InvariantViolation, StoreError, require
from micropay.ledger import (
    Account,
    AccountRequest,
    Ledger,
    LedgerState,
    Result,
    TransferOutcome,
    TransferRequest,
)
from micropay.ledger.limits import BATCH_SIZE_MAX
from micropay.ledger.validate import (
    RequestColumns,
    check_account_requests,
    check_credit_limit,
    check_ledger,
    columns_valid,
    transfer_columns,
)
from micropay.store.base import Document, DocumentBlock

T = TypeVar("T")

PLAIN_COLUMNS_MAX = 2 * BATCH_SIZE_MAX
"""Most transfers one ``create_plain_transfers`` takes: an operation of a batch's worth of
charges moves one payment leg per charge and at most one fee leg per merchant."""

DocumentKey = tuple[str, str]


class DocumentReader(Protocol):
    """Committed documents as a batch may read them (from memory, or locked in the database)."""

    def get(self, key: DocumentKey) -> bytes | None: ...

    def get_many(self, kind: str, document_ids: list[str], remember_absent: bool = False) -> dict[str, bytes]: ...

    def any_exists(self, kind: str, document_ids: list[str]) -> bool:
        """Whether any of these documents exists (``get_many`` answering anything)."""
        ...


class BatchContext:
    """What one operation may do inside an engine batch: the view a model works against.

    Everything it does commits with the batch, or is undone if the operation raises. On a
    shared database a batch that conflicts with another writer runs again, so an operation
    may run more than once before its batch commits: it must act only through this context
    (or take its inputs once), never with effects outside it that a second run would repeat.
    """

    def __init__(self, state: LedgerState, documents: DocumentReader, now_ns: int) -> None:
        self._state = state
        self._reader = documents
        self._written: dict[DocumentKey, bytes] = {}
        self._written_kinds: set[str] = set()  # kinds ever put in _written this batch (kept on undo)
        self._created: set[DocumentKey] = set()
        self._undo: list[tuple[DocumentKey, bytes | None, bool]] = []  # key, body before, created before
        # Records made in bulk (create_documents): id -> body per kind, all new, none in _written
        # when made (a later put_document of one goes to _written and wins).
        self._blocks: dict[str, dict[str, bytes]] = {}
        # Records rewritten in bulk (put_documents): the same, but they may exist already. An id
        # is in at most one block of its kind; _written, where later writes of it go, wins.
        self._put_blocks: dict[str, dict[str, bytes]] = {}
        self._block_undo: list[tuple[dict[str, bytes], Sequence[str]]] = []  # a block, ids added to it
        self.now_ns = now_ns

    def create_transfers(self, requests: Sequence[TransferRequest]) -> Sequence[TransferOutcome]:
        return self._state.create_transfers(requests, transfer_columns(requests))

    def create_transfers_columns(
        self, requests: Sequence[TransferRequest], columns: RequestColumns
    ) -> Sequence[TransferOutcome]:
        """``create_transfers`` for requests validated already (``columns`` from ``transfer_columns``)."""
        return self._state.create_transfers(requests, columns)

    def create_plain_transfers(self, columns: RequestColumns) -> bool:
        """Apply plain transfers given column by column (one tuple per ``TransferRequest`` field;
        up to ``PLAIN_COLUMNS_MAX``) all at once, when they are well formed and the ledger's fast
        path is certain they all succeed; else answer False, having applied nothing (the caller
        then takes the request-by-request path)."""
        return columns_valid(columns, PLAIN_COLUMNS_MAX) and self._state.create_plain_transfers(columns)

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

    def available(self, account_id: str) -> int | None:
        """What the account can still be debited (``Account.available``), or None if it does not exist."""
        return self._state.available(account_id)

    def transfer_exists(self, transfer_id: str) -> bool:
        """Whether a transfer with this id exists (committed, or applied earlier in this batch)."""
        return self._state.transfer_locator(transfer_id) is not None

    def put_document(self, kind: str, document_id: str, body: bytes) -> None:
        """Write a record with this batch (replacing any older version)."""
        key = (kind, document_id)
        self._undo.append((key, self._written.get(key), key in self._created))
        self._written[key] = body
        self._written_kinds.add(kind)

    def put_documents(self, kind: str, document_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        """``put_document`` of each (id, body) in order, with a few passes for them all (for
        operations that rewrite thousands of records of one kind, such as usage records).

        Distinct ids that this batch has not written yet go into the kind's put block whole
        (ids to bodies, with no key or undo entry each): putting and handing over a record then
        costs 65 ns against 250 (3,000 usage records, measured)."""
        require(len(document_ids) == len(bodies), "put_documents: one body per id")
        distinct = len(set(document_ids)) == len(document_ids)
        if distinct and kind not in self._written_kinds and self._unblocked(kind, document_ids):
            block = self._put_blocks.get(kind)
            if block is None:
                block = self._put_blocks[kind] = {}
            block.update(zip(document_ids, bodies, strict=True))
            self._block_undo.append((block, document_ids))
            return
        if not distinct:  # an id twice: its undo entries must see each other
            for document_id, body in zip(document_ids, bodies, strict=True):
                self.put_document(kind, document_id, body)
            return
        keys = list(zip(repeat(kind), document_ids))
        written = self._written
        created = map(self._created.__contains__, keys) if self._created else repeat(False)
        self._undo += zip(keys, map(written.get, keys), created, strict=False)  # created: a column, or False repeated
        written.update(zip(keys, bodies, strict=True))
        self._written_kinds.add(kind)

    def create_document(self, kind: str, document_id: str, body: bytes) -> None:
        """Write a record that must not exist yet: the one made under a client's idempotency key.

        On a shared database another writer may make the same record at the same time without
        this batch having read it (an operation may decide from other evidence, such as the
        ledger's transfers, that it is new). Written as new, the database's primary key then
        decides: the second writer's batch conflicts and runs again, and finds the first's."""
        self.put_document(kind, document_id, body)
        self._created.add((kind, document_id))

    def any_document_exists(self, kind: str, document_ids: list[str]) -> bool:
        """Whether any of these documents exists (written in this batch, or committed): for an
        operation about to create records under many new ids."""
        if kind in self._written_kinds and not self._written.keys().isdisjoint(
            [(kind, document_id) for document_id in document_ids]
        ):
            return True
        if not self._unblocked(kind, document_ids):
            return True
        return self._reader.any_exists(kind, document_ids)

    def _unblocked(self, kind: str, document_ids: Iterable[str]) -> bool:
        """Whether none of these ids is in a block of ``kind`` (created or put in bulk)."""
        made = self._blocks.get(kind)
        put = self._put_blocks.get(kind)
        return (made is None or made.keys().isdisjoint(document_ids)) and (
            put is None or put.keys().isdisjoint(document_ids)
        )

    def create_documents(self, kind: str, document_ids: Sequence[str], bodies: Sequence[bytes]) -> None:
        """``create_document`` for many new records of one kind at once.

        Kept as one block of the kind (ids to bodies) rather than entry by entry: a third of
        the cost a record, for operations that create thousands."""
        require(len(document_ids) == len(bodies), "create_documents: one body per id")
        block = self._blocks.get(kind)
        if block is None:
            block = self._blocks[kind] = {}
        fresh = (
            kind not in self._written_kinds
            and self._unblocked(kind, document_ids)
            and len(set(document_ids)) == len(document_ids)
        )
        if not fresh:
            for document_id, body in zip(document_ids, bodies, strict=True):
                self.create_document(kind, document_id, body)
            return
        block.update(zip(document_ids, bodies, strict=True))
        self._block_undo.append((block, document_ids))

    def get_documents(
        self, kind: str, document_ids: Iterable[str], *, remember_absent: bool = False
    ) -> dict[str, bytes]:
        """The newest versions of those of these documents that exist, as ``get_document`` would
        answer one by one, with one store read for all that are not in memory (for an operation
        about to look up many ids, most of them new). ``remember_absent``: ids asked for again
        and again whose documents mostly do not exist (a payer's promo grants) are remembered
        as absent, as ``get_document`` remembers them, and not read from the store each time."""
        block = self._blocks.get(kind, {})
        put = self._put_blocks.get(kind, {})
        if not block and not put and kind not in self._written_kinds:  # none written yet: all are committed
            return self._reader.get_many(kind, list(document_ids), remember_absent)
        written = self._written
        found: dict[str, bytes] = {}
        unwritten: list[str] = []
        for document_id in document_ids:
            body = written.get((kind, document_id))
            if body is None:
                body = block.get(document_id)
            if body is None:
                body = put.get(document_id)
            if body is None:
                unwritten.append(document_id)
            else:
                found[document_id] = body
        if unwritten:
            found.update(self._reader.get_many(kind, unwritten, remember_absent))
        return found

    def get_document(self, kind: str, document_id: str) -> bytes | None:
        """The newest version: written earlier in this batch, else the committed one."""
        key = (kind, document_id)
        body = self._written.get(key)
        if body is None:
            block = self._blocks.get(kind)
            if block is not None:
                body = block.get(document_id)
            if body is None:
                put = self._put_blocks.get(kind)
                if put is not None:
                    body = put.get(document_id)
        return body if body is not None else self._reader.get(key)

    def mark(self) -> tuple[int, int]:
        return len(self._undo), len(self._block_undo)

    def rollback_documents(self, mark: tuple[int, int]) -> None:
        undo_mark, block_mark = mark
        while len(self._block_undo) > block_mark:
            block, document_ids = self._block_undo.pop()
            for document_id in document_ids:
                del block[document_id]
        while len(self._undo) > undo_mark:
            key, before, created_before = self._undo.pop()
            if before is None:
                del self._written[key]
            else:
                self._written[key] = before
            if not created_before:
                self._created.discard(key)

    def created(self, key: DocumentKey) -> bool:
        """Whether this batch writes ``key`` through ``create_document(s)`` (so it must be new)."""
        return key in self._created or key[1] in self._blocks.get(key[0], ())

    def document_blocks(self) -> list[DocumentBlock]:
        """What this batch writes, for a store that takes blocks: the blocks of records created
        or rewritten in bulk, then the records written one by one, a block per kind (newer than
        any block version of the same id; of one kind, in the order first written)."""
        blocks = [
            DocumentBlock(kind, list(block), list(block.values()))
            for bulk in (self._blocks, self._put_blocks)
            for kind, block in bulk.items()
            if block
        ]
        written: dict[str, tuple[list[str], list[bytes]]] = {}
        for (kind, document_id), body in self._written.items():
            found = written.get(kind)
            if found is None:
                found = written[kind] = ([], [])
            found[0].append(document_id)
            found[1].append(body)
        blocks += [DocumentBlock(kind, ids, bodies) for kind, (ids, bodies) in written.items()]
        return blocks

    def documents(self) -> list[Document]:
        """What this batch writes, the newest version of each once: the blocks' records (but
        those written again one by one since), then the records written one by one."""
        # tuple.__new__ makes each in 0.2 µs against 0.46 µs for the NamedTuple's own call.
        new = tuple.__new__
        written = self._written
        documents: list[Document] = []
        for kind, block in [*self._blocks.items(), *self._put_blocks.items()]:
            maybe_rewritten = kind in self._written_kinds
            documents += [
                new(Document, (kind, document_id, body))
                for document_id, body in block.items()
                if not maybe_rewritten or (kind, document_id) not in written
            ]
        documents += [new(Document, (kind, document_id, body)) for (kind, document_id), body in written.items()]
        return documents


Operation = Callable[[BatchContext], T]


@dataclass(slots=True)
class QueuedOp:
    """An operation waiting for (or inside) a batch. ``accounts`` and ``transfer_ids`` are what it
    is known to touch in advance: a shared-database engine locks those first, in id order."""

    run: Callable[[BatchContext], Any]
    size: int
    future: Future[Any]
    accounts: Sequence[str] = field(default=())
    transfer_ids: Sequence[str] = field(default=())


Outcome = tuple[bool, Any]
"""An operation's result (True, value) or the exception it raised (False, error)."""


def apply_ops(ops: Sequence[QueuedOp], state: LedgerState, context: BatchContext) -> list[Outcome]:
    """Run each operation in order; one that raises has just its own effects undone.

    Invariant violations and store errors are not an operation's failure but the batch's: they
    propagate, and the caller rolls the whole batch back.
    """
    outcomes: list[Outcome] = []
    for op in ops:
        mark = state.mark()
        documents_mark = context.mark()
        try:
            outcomes.append((True, op.run(context)))
        except (InvariantViolation, StoreError):
            raise
        except Exception as error:
            state.rollback_to(mark)
            context.rollback_documents(documents_mark)
            outcomes.append((False, error))
    return outcomes
