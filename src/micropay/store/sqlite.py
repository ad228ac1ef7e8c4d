"""SQLite store: one file, WAL, synchronous=FULL, one writer engine at a time.

The transfer log is one row per committed batch (columnar JSON, see ``codec``), and so is the
record log of the busiest document kinds (``record_log``); ledgers, accounts and the other
documents are ordinary rows. Balances are not stored: they are the sum of the log, which the
engine replays at start (``load``) and then keeps in memory.
"""

from __future__ import annotations

import bisect
import fcntl
import os
import sqlite3
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import orjson

from micropay.errors import StoreError, StoreLockedError, StoreSchemaError
from micropay.ledger import Account, Journal, Ledger, Transfer
from micropay.ledger.types import TransferColumns
from micropay.store.base import Document, DocumentBlock
from micropay.store.codec import decode_batch, encode_batch
from micropay.store.record_log import (
    Location,
    RecordColumns,
    RecordIndex,
    decode_header,
    encode_record_groups,
    encode_records,
)
from micropay.store.schema import LOGGED_KINDS, REREAD_KINDS, SCHEMA_VERSION, LogDocuments, migration_steps

_READ_MANY_CHUNK = 8190
"""Ids looked up per query by ``read_documents`` (passed as one JSON array)."""

_DECODED_BATCHES_MAX = 16
"""Decoded batches kept for reads by timestamp (each up to 8190 transfers)."""

_INSERT_BATCH = "INSERT INTO batches (first_ts, last_ts, transfer_count, body) VALUES (?, ?, ?, ?)"
_INSERT_RECORDS = "INSERT INTO records (header, data) VALUES (?, ?)"

_LOGGED_ROWS_PER_RECORD_MAX = 8190
"""Documents per record row when a migration moves existing documents into the log."""

PAGE_SIZE_BYTES = 16_384
"""The page size of a database this store creates (SQLite's default: 4,096). SQLite writes a
transaction into its log a page at a time, two system calls a page, and a metering batch's
record row is some 1.8 MB: 16 KiB pages take a quarter of the calls, and the engine writes such
a batch about 0.1 µs an event quicker (1.28-1.51 against 1.35-1.74 µs, five alternating runs),
while single transfers over HTTP ran no slower (17.6k against 15.9k a second, medians of three).
A database made earlier keeps its pages: the size is fixed once the log is on."""

WAL_AUTOCHECKPOINT_BYTES = 64 * 2**20
"""Past this much in the write-ahead log the writer checkpoints it itself: the safety net should
the checkpointing thread fall behind (SQLite's default is 1,000 pages)."""


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/or/absolute.db`` (or a bare path) to a filesystem path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    if url.startswith("sqlite://"):
        raise StoreError(f"unsupported SQLite URL {url!r}: use sqlite:///path/to/file.db")
    return Path(url)


class SQLiteStore:
    """The embedded store. Opening it takes the file's writer lock for this process."""

    indexed_kinds = LOGGED_KINDS
    cached_kinds = REREAD_KINDS

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(str(self.path) + ".lock", "a+b")  # noqa: SIM115 - held open while we write
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            self._lock_file.close()
            raise StoreLockedError(f"{self.path} is already open for writing by another Micropay engine") from error
        self._mutex = threading.Lock()
        self._decoded: OrderedDict[int, TransferColumns] = OrderedDict()
        self._history: dict[str, array[int]] = {}
        self._history_seq = 0
        self._records = RecordIndex()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE_BYTES}")  # a new database's; an old one keeps its own
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA cache_size=-65536")
            (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
            self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_BYTES // page_size}")
            self._migrate()
            self._index_records()
            self._checkpointer = Checkpointer(self.path)
        except sqlite3.Error as error:
            self._release()
            raise StoreError(f"cannot open {self.path}: {error}") from error
        except BaseException:
            self._release()
            raise

    # ----------------------------------------------------------------- schema
    def schema_version(self) -> int:
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            return 0
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{self.path} has schema version {version}; this Micropay knows up to {SCHEMA_VERSION}"
            )
        for target in range(version, SCHEMA_VERSION):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for step in migration_steps("sqlite", target):
                    if isinstance(step, LogDocuments):
                        self._log_documents(step.kinds)
                    else:
                        self._db.execute(step)
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(target + 1),)
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _log_documents(self, kinds: frozenset[str]) -> None:
        """Move the documents of ``kinds`` from the documents table into the record log (inside
        the migration's transaction)."""
        db = self._db
        for kind in sorted(kinds):
            after = ""
            while True:
                rows = db.execute(
                    "SELECT id, body FROM documents WHERE kind = ? AND id > ? ORDER BY id LIMIT ?",
                    (kind, after, _LOGGED_ROWS_PER_RECORD_MAX),
                ).fetchall()
                if not rows:
                    break
                row = encode_records([Document(kind, str(document_id), bytes(body)) for document_id, body in rows])
                db.execute(_INSERT_RECORDS, (row.header, row.data))
                after = str(rows[-1][0])
            db.execute("DELETE FROM documents WHERE kind = ?", (kind,))

    def _index_records(self) -> None:
        """Rebuild the record index from the headers of the record log, oldest row first."""
        last_seq = 0
        while True:
            rows = self._db.execute(
                "SELECT seq, header FROM records WHERE seq > ? ORDER BY seq LIMIT 256", (last_seq,)
            ).fetchall()
            if not rows:
                return
            for seq, header in rows:
                self._records.add(seq, decode_header(bytes(header)))
                last_seq = seq

    # ----------------------------------------------------------------- recovery
    def load(self) -> Iterator[Journal]:
        with self._mutex:
            ledgers = [
                Ledger(code, scale, timestamp)
                for code, scale, timestamp in self._db.execute(
                    "SELECT code, scale, timestamp FROM ledgers ORDER BY timestamp"
                )
            ]
            accounts = [
                Account(
                    id=row[0],
                    ledger=row[1],
                    flags=row[2],
                    credit_limit=row[3],
                    debits_posted=0,
                    credits_posted=0,
                    debits_pending=0,
                    credits_pending=0,
                    timestamp=row[4],
                    metadata=tuple((str(k), str(v)) for k, v in orjson.loads(row[5])),
                )
                for row in self._db.execute(
                    "SELECT id, ledger, flags, credit_limit, timestamp, metadata FROM accounts ORDER BY timestamp"
                )
            ]
        yield Journal(ledgers=ledgers, accounts=accounts)
        last_seq = 0
        while True:
            with self._mutex:
                rows = self._db.execute(
                    "SELECT seq, body FROM batches WHERE seq > ? ORDER BY seq LIMIT 64", (last_seq,)
                ).fetchall()
            if not rows:
                return
            for seq, body in rows:
                transfers, expired = decode_batch(body)
                last_seq = seq
                yield Journal(transfers=transfers, expired=expired)

    # ----------------------------------------------------------------- writes
    def write(self, journal: Journal, documents: Sequence[Document], blocks: Sequence[DocumentBlock] = ()) -> None:
        """Write one batch as one transaction (one sync).

        Every statement the sqlite3 module runs lets go of the interpreter lock several times
        (counting its parameters, each step, the reset), and in a server each of those is a
        hand-over to the event loop's thread and back. A batch of transfers alone, the hot
        path of single transfers, is therefore its one ``INSERT``, a transaction of its own
        (no ``BEGIN`` and ``COMMIT`` around it). Documents stay one ``executemany`` row each:
        many rows to a statement were slower for random ids (SQLite 3.40: 17.2 against 14.9 µs
        a document in batches of 30,000, and the metering benchmark's writes 30-36 against
        26-29 µs an event). The documents of ``LOGGED_KINDS`` are instead one row of the record
        log, the index learning where they are once the transaction has committed; a block of
        them goes into it as its two lists."""
        db = self._db
        transfers = journal.transfers
        alone = not (journal.ledgers or journal.accounts or journal.credit_limits or documents or blocks)
        logged_blocks = [block for block in blocks if block.kind in LOGGED_KINDS]
        logged = [document for document in documents if document.kind in LOGGED_KINDS]
        rows = [
            (block.kind, document_id, body)
            for block in blocks
            if block.kind not in LOGGED_KINDS
            for document_id, body in zip(block.ids, block.bodies, strict=True)
        ]
        rows += [document for document in documents if document.kind not in LOGGED_KINDS]
        with self._mutex:
            try:
                batch_row = (
                    (
                        transfers.timestamps[0] if transfers else None,
                        transfers.timestamps[-1] if transfers else None,
                        len(transfers),
                        encode_batch(transfers, journal.expired),
                    )
                    if transfers or journal.expired
                    else None
                )
                if alone:
                    if batch_row is not None:
                        db.execute(_INSERT_BATCH, batch_row)
                        self._checkpointer.nudge()
                    return
                db.execute("BEGIN IMMEDIATE")
                if journal.ledgers:
                    db.executemany(
                        "INSERT INTO ledgers (code, scale, timestamp) VALUES (?, ?, ?)",
                        [(ledger.code, ledger.scale, ledger.timestamp) for ledger in journal.ledgers],
                    )
                if journal.accounts:
                    db.executemany(
                        "INSERT INTO accounts (id, ledger, flags, credit_limit, timestamp, metadata)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        [
                            (a.id, a.ledger, a.flags, a.credit_limit, a.timestamp, orjson.dumps(a.metadata))
                            for a in journal.accounts
                        ],
                    )
                if journal.credit_limits:
                    db.executemany(
                        "UPDATE accounts SET credit_limit = ? WHERE id = ?",
                        [(limit, account_id) for account_id, limit in journal.credit_limits],
                    )
                if batch_row is not None:
                    db.execute(_INSERT_BATCH, batch_row)
                if rows:
                    db.executemany("INSERT OR REPLACE INTO documents (kind, id, body) VALUES (?, ?, ?)", rows)
                records: tuple[int, RecordColumns] | None = None
                if logged_blocks or logged:
                    row = encode_record_groups(logged_blocks, logged)
                    seq = db.execute(_INSERT_RECORDS, (row.header, row.data)).lastrowid
                    if seq is None:
                        raise StoreError("the record row got no number")
                    records = (seq, row.columns)
                db.execute("COMMIT")
            except Exception as error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise StoreError(f"batch write failed: {error}") from error
            if records is not None:  # committed: now the index may say where they are
                self._records.add(*records)
            self._checkpointer.nudge()

    # ----------------------------------------------------------------- reads
    def _batch_for(self, timestamp: int) -> TransferColumns | None:
        row = self._db.execute(
            "SELECT first_ts, body FROM batches WHERE first_ts <= ? ORDER BY first_ts DESC LIMIT 1",
            (timestamp,),
        ).fetchone()
        if row is None:
            return None
        first_ts, body = row
        cached = self._decoded.get(first_ts)
        if cached is not None:
            self._decoded.move_to_end(first_ts)
            return cached
        decoded, _ = decode_batch(body)
        self._decoded[first_ts] = decoded
        if len(self._decoded) > _DECODED_BATCHES_MAX:
            self._decoded.popitem(last=False)
        return decoded

    def read_transfer(self, transfer_id: str, locator: int) -> Transfer | None:
        with self._mutex:
            batch = self._batch_for(locator)
            if batch is None:
                return None
            try:
                return batch[batch.columns[0].index(transfer_id)]
            except ValueError:
                return None

    def read_transfers(self, timestamps: Sequence[int]) -> list[Transfer]:
        found: list[Transfer] = []
        with self._mutex:
            for timestamp in timestamps:
                batch = self._batch_for(timestamp)
                if batch is None:
                    continue
                stamps = batch.timestamps
                index = bisect.bisect_left(stamps, timestamp)
                if index < len(stamps) and stamps[index] == timestamp:
                    found.append(batch[index])
        return found

    def _index_history(self) -> None:
        """Bring the per-account history index up to the newest committed batch.

        Built lazily on the first history read, then kept up incrementally: the write path
        never pays for it.
        """
        history = self._history
        while True:
            rows = self._db.execute(
                "SELECT seq, body FROM batches WHERE seq > ? ORDER BY seq LIMIT 64", (self._history_seq,)
            ).fetchall()
            if not rows:
                return
            for seq, body in rows:
                columns = decode_batch(body)[0].columns
                for debit_id, credit_id, timestamp in zip(columns[1], columns[2], columns[9], strict=True):
                    for account_id in (debit_id, credit_id):
                        stamps = history.get(account_id)
                        if stamps is None:
                            stamps = history[account_id] = array("q")
                        stamps.append(timestamp)
                self._history_seq = seq

    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]:
        with self._mutex:
            self._index_history()
            stamps = self._history.get(account_id)
            if not stamps:
                return []
            end = len(stamps) if before_timestamp is None else bisect.bisect_left(stamps, before_timestamp)
            wanted = [stamps[i] for i in range(end - 1, max(end - limit, 0) - 1, -1)]
        return self.read_transfers(wanted)

    def _read_logged(self, location: Location) -> bytes:
        if not location.length:
            return b""  # (substr of an empty blob is NULL)
        row = self._db.execute(
            "SELECT substr(data, ?, ?) FROM records WHERE seq = ?",
            (location.start + 1, location.length, location.seq),
        ).fetchone()
        if row is None:
            raise StoreSchemaError(f"the record log has no row {location.seq}")
        body = b"" if row[0] is None else bytes(row[0])
        if len(body) != location.length:
            raise StoreSchemaError(f"record log row {location.seq} is shorter than its header says")
        return body

    def _read_logged_many(self, kind: str, document_ids: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for document_id in document_ids:
            location = self._records.locate(kind, document_id)
            if location is not None:
                found[document_id] = self._read_logged(location)
        return found

    def read_document(self, kind: str, document_id: str) -> bytes | None:
        with self._mutex:
            if kind in LOGGED_KINDS:
                location = self._records.locate(kind, document_id)
                return None if location is None else self._read_logged(location)
            row = self._db.execute(
                "SELECT body FROM documents WHERE kind = ? AND id = ?", (kind, document_id)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def any_document_exists(self, kind: str, document_ids: Sequence[str]) -> bool:
        if kind in LOGGED_KINDS:
            with self._mutex:
                return self._records.any_of(kind, document_ids)
        return bool(self.read_documents(kind, document_ids))

    def read_documents(self, kind: str, document_ids: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        with self._mutex:
            if kind in LOGGED_KINDS:
                return self._read_logged_many(kind, document_ids)
            for start in range(0, len(document_ids), _READ_MANY_CHUNK):
                wanted = orjson.dumps(list(document_ids[start : start + _READ_MANY_CHUNK])).decode()
                rows = self._db.execute(
                    "SELECT id, body FROM documents WHERE kind = ? AND id IN (SELECT value FROM json_each(?))",
                    (kind, wanted),
                ).fetchall()
                found.update((str(row[0]), bytes(row[1])) for row in rows)
        return found

    def list_documents(self, kind: str, starting_after: str | None, limit: int) -> list[tuple[str, bytes]]:
        with self._mutex:
            if kind in LOGGED_KINDS:
                ids = self._records.ids_after(kind, starting_after, limit)
                return list(self._read_logged_many(kind, ids).items())
            rows = self._db.execute(
                "SELECT id, body FROM documents WHERE kind = ? AND id > ? ORDER BY id LIMIT ?",
                (kind, starting_after or "", limit),
            ).fetchall()
        return [(str(row[0]), bytes(row[1])) for row in rows]

    def integrity_check(self) -> str:
        with self._mutex:
            row = self._db.execute("PRAGMA integrity_check").fetchone()
        return str(row[0])

    # ----------------------------------------------------------------- closing
    def _release(self) -> None:
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
        finally:
            self._lock_file.close()

    def close(self) -> None:
        with self._mutex:
            try:
                self._checkpointer.close()
                self._db.close()
            finally:
                self._release()


class Checkpointer:
    """Copies the write-ahead log into the database file from a thread and connection of its
    own, so that the engine's thread, which commits every batch, does not.

    With SQLite's automatic checkpoints the commit that crosses 1,000 log pages copies them
    into the database file and syncs it, in the committing thread: for the charge benchmark's
    batches about 1 µs of a charge's 10. Here each commit only sets an event; this thread then
    runs a passive checkpoint (it never blocks the writer; SQLite releases the interpreter lock
    while it works, so it runs on another core). The log restarts from its beginning at the
    first commit after a checkpoint that copied all of it. Durability is unchanged: every commit
    still syncs the log (``synchronous=FULL``)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=FULL")
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="micropay-checkpoint", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """A commit has grown the log: copy it when this thread next gets to it."""
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:  # busy with the writer's own checkpoint: the next nudge retries
                continue

    def close(self) -> None:
        """Stop the thread (after the checkpoint it is running, if any) and close its connection."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        self._db.close()
