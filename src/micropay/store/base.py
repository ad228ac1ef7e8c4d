"""The store protocol: what the engine needs from persistence, whatever the database."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from micropay.ledger import Journal, Transfer


class Document(NamedTuple):
    """A non-money record (an API key, a payer's settings...) written with a batch.

    ``body`` is JSON bytes; a document with the same kind and id replaces the old one. A
    NamedTuple: every document a batch writes is made into one on its way to the store (tens of
    thousands a second under metering), and a frozen dataclass costs 40 % more to make (0.64
    against 0.46 µs here).
    """

    kind: str
    id: str
    body: bytes


class DocumentBlock(NamedTuple):
    """Documents of one kind written with a batch, as two lists: a batch that writes thousands
    of records hands them to the store whole, not one ``Document`` each."""

    kind: str
    ids: Sequence[str]
    bodies: Sequence[bytes]


class Store(Protocol):
    """Durable home of the ledger: what every store answers, whoever writes it."""

    def read_transfer(self, transfer_id: str, locator: int) -> Transfer | None:
        """The transfer ``transfer_id`` in the batch holding timestamp ``locator``."""
        ...

    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]:
        """An account's transfers, newest first, with timestamps below ``before_timestamp``."""
        ...

    def read_document(self, kind: str, document_id: str) -> bytes | None: ...

    def read_documents(self, kind: str, document_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored documents of one kind among ``document_ids`` (missing ones are left out), in
        one read: for an operation about to look up many ids, most of them new."""
        ...

    def list_documents(self, kind: str, starting_after: str | None, limit: int) -> list[tuple[str, bytes]]:
        """Documents of one kind ordered by id, after ``starting_after``, at most ``limit``."""
        ...

    def close(self) -> None: ...


class LogStore(Store, Protocol):
    """A store with one writer engine, which keeps the ledger in memory and logs each batch.
    One ``write`` is one transaction, synced before it returns."""

    indexed_kinds: frozenset[str]
    """Document kinds the store finds through an index in memory (no search on disk): a cache in
    front of it gains little by keeping them."""

    cached_kinds: frozenset[str]
    """Of ``indexed_kinds``, those a cache should keep all the same: records that later batches
    read again (each read from the index is a query of the log)."""

    def any_document_exists(self, kind: str, document_ids: Sequence[str]) -> bool:
        """Whether any of these documents exists (one pass over the index for ``indexed_kinds``)."""
        ...

    def load(self) -> Iterator[Journal]:
        """Every committed change, oldest first, for the engine to replay at start."""
        ...

    def write(self, journal: Journal, documents: Sequence[Document], blocks: Sequence[DocumentBlock] = ()) -> None:
        """Persist one batch atomically and durably, or raise StoreError having written nothing.
        Of one kind and id, the newest version is the last: ``blocks`` in order, then ``documents``."""
        ...
