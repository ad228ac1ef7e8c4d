"""PostgreSQL store: several engines (processes, machines) write one database at once.

Balances live on the account rows and every transfer is one row whose primary key is its id.
A writer's batch is one transaction (``PostgresBatch``): it locks the accounts it touches with
``SELECT ... FOR UPDATE`` in id order, reads transfers and documents under those locks, and
writes set-based (``COPY`` into the transfer table, ``COPY`` into a staging table then one
``UPDATE`` for balances and one ``INSERT`` for documents). A concurrent writer's duplicate id or
a deadlock aborts the batch with ``BatchConflict``, and the engine runs it again on fresh reads.
Plain SQL only (no extensions), so PostgreSQL-compatible engines can stand in.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg import errors as pg_errors

from micropay.errors import BatchConflict, StoreError, StoreSchemaError
from micropay.ledger import Account, Journal, Ledger, PendingStatus, Transfer, TransferFlags
from micropay.ledger.limits import NS_PER_S
from micropay.ledger.types import AccountRow, BalanceRow
from micropay.store.base import Document
from micropay.store.schema import SCHEMA_VERSION, migration_statements

_MIGRATION_LOCK = 7_403_211
"""Advisory lock key that serialises schema migrations between processes starting together."""

_CONNECT_TIMEOUT_S = 10

_PENDING = int(TransferFlags.PENDING)
_POST = int(TransferFlags.POST_PENDING)
_VOID = int(TransferFlags.VOID_PENDING)

_ACCOUNT_COLUMNS = (
    "id, ledger, flags, credit_limit, debits_posted, credits_posted, debits_pending, credits_pending,"
    " timestamp, metadata"
)
_TRANSFER_COLUMNS = (
    "id, debit_account_id, credit_account_id, amount, ledger, code, flags, pending_id, timeout_s, timestamp, metadata"
)
# Rows are looked up (and locked) by key, one index probe per id, in the order of the id list,
# sorted where locking: the one order every writer locks in. A LATERAL subquery that locks or
# has OFFSET 0 is not flattened, so the plan cannot become a scan of the table; with a long
# ``= ANY(list)`` or a plain join the planner may scan, comparing every row with every id.
_CONFLICTS = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure, pg_errors.UniqueViolation)


def _metadata(text: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(key), str(value)) for key, value in orjson.loads(text)) if text != "[]" else ()


def _account_row(row: Sequence[Any]) -> AccountRow:
    metadata = row[9]
    return (
        row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
        () if metadata == "[]" else _metadata(metadata),
    )  # fmt: skip


def _account(row: Sequence[Any]) -> Account:
    return Account(*_account_row(row))


def _transfer(row: Sequence[Any]) -> Transfer:
    return Transfer(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], _metadata(row[10]))


def _status(value: int | None) -> PendingStatus | None:
    return None if value is None else PendingStatus(value)


def _expires_at(flags: int, timeout_s: int, timestamp: int) -> int:
    return timestamp + timeout_s * NS_PER_S if flags & _PENDING and timeout_s else 0


def _id_list(ids: Collection[str]) -> str:
    """Ids as one comma-separated text (ids never hold a comma: see ledger.limits), which the
    server splits; far cheaper to send than an array of thousands of strings."""
    return ",".join(ids)


_NULL = "\\N"
"""NULL in COPY's text format."""


def _copy_json(value: object) -> str:
    """``value`` as JSON inside a COPY text field (ids, codes and numbers never need escaping;
    JSON text may hold backslashes, which COPY reads as escapes)."""
    if not value:
        return "[]"
    text = orjson.dumps(value).decode()
    return text.replace("\\", "\\\\") if "\\" in text else text


def _copy_lines(cursor: psycopg.Cursor[Any], sql: str, lines: list[str]) -> None:
    """COPY rows already in COPY's text format (far cheaper than adapting each value)."""
    with cursor.copy(sql.encode()) as copy:
        copy.write("".join(lines))


def _connect(url: str, *, autocommit: bool) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=_CONNECT_TIMEOUT_S)
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to PostgreSQL: {error}") from error


def _store_error(error: psycopg.Error, what: str) -> StoreError:
    if isinstance(error, _CONFLICTS):
        return BatchConflict(f"{what}: {error.sqlstate} {error}")
    return StoreError(f"{what}: {error}")


class PostgresStore:
    """Reads on a shared connection (serialised by a mutex); batches on the engine's own.
    The staging tables are temporary and emptied at every commit (``ON COMMIT DELETE ROWS``)."""

    multi_writer = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._mutex = threading.Lock()
        self._read = _connect(url, autocommit=True)
        try:
            self._migrate()
        except BaseException:
            self._read.close()
            raise
        self._writer: psycopg.Connection[Any] | None = None
        self._clock: psycopg.Connection[Any] | None = None

    # ----------------------------------------------------------------- schema
    def schema_version(self) -> int:
        with self._mutex:
            return self._schema_version(self._read)

    @staticmethod
    def _schema_version(connection: psycopg.Connection[Any]) -> int:
        row = connection.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
        if not row or not row[0]:
            return 0
        found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(found[0]) if found else 0

    def _migrate(self) -> None:
        connection = self._read
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                version = self._schema_version(connection)
                if version > SCHEMA_VERSION:
                    raise StoreSchemaError(
                        f"the database has schema version {version}; this Micropay knows up to {SCHEMA_VERSION}"
                    )
                for target in range(version, SCHEMA_VERSION):
                    for statement in migration_statements("postgresql", target):
                        connection.execute(statement.encode())
                    connection.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
                        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (str(target + 1),),
                    )
        except psycopg.Error as error:
            raise StoreError(f"cannot migrate the PostgreSQL schema: {error}") from error

    # ----------------------------------------------------------------- batches (engine thread only)
    def batch(self) -> PostgresBatch:
        """Begin one batch transaction on the engine's connection (reconnecting if it broke)."""
        writer = self._writer
        if writer is None or writer.closed or writer.broken:
            writer = self._writer = _connect(self.url, autocommit=False)
            try:
                writer.execute(
                    "CREATE TEMP TABLE stage_accounts (id TEXT PRIMARY KEY, credit_limit BIGINT,"
                    " debits_posted BIGINT, credits_posted BIGINT, debits_pending BIGINT, credits_pending BIGINT)"
                    " ON COMMIT DELETE ROWS"
                )
                writer.execute(
                    "CREATE TEMP TABLE stage_documents (kind TEXT, id TEXT, body BYTEA, fresh BOOLEAN)"
                    " ON COMMIT DELETE ROWS"
                )
                writer.commit()
            except psycopg.Error as error:
                writer.close()
                raise StoreError(f"cannot prepare the batch connection: {error}") from error
        return PostgresBatch(writer)

    def reserve_timestamps(self, count: int, now_ns: int) -> int:
        """The first of ``count`` consecutive timestamps no other writer will use: at least
        ``now_ns`` and above every timestamp reserved before.

        Committed at once in its own short transaction (not the batch's), so writers do not queue
        on the clock row; without a synchronous commit, because a batch using the block commits
        synchronously later and so makes the block durable too (WAL is written in order).
        """
        clock = self._clock
        try:
            if clock is None or clock.closed or clock.broken:
                clock = self._clock = _connect(self.url, autocommit=True)
                clock.execute("SET synchronous_commit = off")
            row = clock.execute(
                "UPDATE clock SET last_timestamp = GREATEST(last_timestamp + %s, %s) WHERE id = 1"
                " RETURNING last_timestamp",
                (count, now_ns + count - 1),
            ).fetchone()
        except psycopg.Error as error:
            raise StoreError(f"cannot reserve timestamps: {error}") from error
        if row is None:
            raise StoreSchemaError("the clock row is missing")
        return int(row[0]) - count + 1

    # ----------------------------------------------------------------- reads (any thread)
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._mutex:
            try:
                return self._read.execute(sql.encode(), params).fetchall()
            except psycopg.Error as error:
                raise StoreError(f"read failed: {error}") from error

    def read_transfer(self, transfer_id: str, locator: int) -> Transfer | None:
        rows = self._query(f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE id = %s", (transfer_id,))
        return _transfer(rows[0]) if rows else None

    def account_transfers(self, account_id: str, limit: int, before_timestamp: int | None) -> list[Transfer]:
        before = before_timestamp if before_timestamp is not None else 2**63 - 1
        rows = self._query(
            f"(SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE debit_account_id = %s AND timestamp < %s"
            " ORDER BY timestamp DESC LIMIT %s)"
            f" UNION ALL (SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE credit_account_id = %s AND timestamp < %s"
            " ORDER BY timestamp DESC LIMIT %s) ORDER BY timestamp DESC LIMIT %s",
            (account_id, before, limit, account_id, before, limit, limit),
        )
        return [_transfer(row) for row in rows]

    def read_account(self, account_id: str) -> Account | None:
        rows = self._query(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = %s", (account_id,))
        return _account(rows[0]) if rows else None

    def list_accounts(self, starting_after: str | None, limit: int) -> list[Account]:
        rows = self._query(
            f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id > %s ORDER BY id LIMIT %s",
            (starting_after or "", limit),
        )
        return [_account(row) for row in rows]

    def read_ledgers(self) -> list[Ledger]:
        return [Ledger(*row) for row in self._query("SELECT code, scale, timestamp FROM ledgers ORDER BY code")]

    def transfer_count(self) -> int:
        return int(self._query("SELECT count(*) FROM transfers")[0][0])

    def ledger_totals(self) -> list[tuple[str, int, int, int, int]]:
        """Per ledger, in one snapshot: posted debits, posted credits, pending debits, pending credits."""
        rows = self._query(
            "SELECT ledger, sum(debits_posted), sum(credits_posted), sum(debits_pending), sum(credits_pending)"
            " FROM accounts GROUP BY ledger ORDER BY ledger"
        )
        return [(str(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4])) for row in rows]

    def read_document(self, kind: str, document_id: str) -> bytes | None:
        rows = self._query("SELECT body FROM documents WHERE kind = %s AND id = %s", (kind, document_id))
        return bytes(rows[0][0]) if rows else None

    def read_documents(self, kind: str, document_ids: Sequence[str]) -> dict[str, bytes]:
        rows = self._query(
            "SELECT id, body FROM documents WHERE kind = %s AND id = ANY(%s)", (kind, list(document_ids))
        )
        return {str(row[0]): bytes(row[1]) for row in rows}

    def list_documents(self, kind: str, starting_after: str | None, limit: int) -> list[tuple[str, bytes]]:
        rows = self._query(
            "SELECT id, body FROM documents WHERE kind = %s AND id > %s ORDER BY id LIMIT %s",
            (kind, starting_after or "", limit),
        )
        return [(str(row[0]), bytes(row[1])) for row in rows]

    # ----------------------------------------------------------------- closing
    def close(self) -> None:
        with self._mutex:
            for connection in (self._read, self._writer, self._clock):
                if connection is not None and not connection.closed:
                    connection.close()


class PostgresBatch:
    """One batch transaction. Every method raises ``BatchConflict`` or ``StoreError`` on failure,
    after which the caller must ``rollback()``."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._db = connection

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql.encode(), params).fetchall()
        except psycopg.Error as error:
            raise _store_error(error, "batch read failed") from error

    # ----------------------------------------------------------------- locked reads
    def ledger(self, code: str) -> Ledger | None:
        rows = self._rows("SELECT code, scale, timestamp FROM ledgers WHERE code = %s", (code,))
        return Ledger(*rows[0]) if rows else None

    def lock_accounts(self, account_ids: Collection[str]) -> list[AccountRow]:
        """Lock these accounts in id order (the order every writer uses) and read them."""
        if not account_ids:
            return []
        rows = self._rows(
            "SELECT a.* FROM unnest(string_to_array(%s, ',')) AS k (id),"
            f" LATERAL (SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE accounts.id = k.id FOR UPDATE) AS a",
            (_id_list(sorted(account_ids)),),
        )
        return [_account_row(row) for row in rows]

    def transfers(self, transfer_ids: Collection[str]) -> list[tuple[Transfer, PendingStatus | None]]:
        """These stored transfers with each pending one's status (read after the account locks)."""
        if not transfer_ids:
            return []
        rows = self._rows(
            "SELECT t.* FROM unnest(string_to_array(%s, ',')) AS k (id),"
            f" LATERAL (SELECT {_TRANSFER_COLUMNS}, status FROM transfers WHERE transfers.id = k.id OFFSET 0) AS t",
            (_id_list(transfer_ids),),
        )
        return [(_transfer(row), _status(row[11])) for row in rows]

    def due_pending_ids(self, now_ns: int, limit: int) -> list[str]:
        """Pending transfers whose timeout has passed, oldest deadline first."""
        rows = self._rows(
            "SELECT id FROM transfers WHERE status = 0 AND expires_at > 0 AND expires_at <= %s"
            " ORDER BY expires_at LIMIT %s",
            (now_ns, limit),
        )
        return [str(row[0]) for row in rows]

    def lock_documents(self, kind: str, document_ids: Collection[str]) -> dict[str, bytes]:
        """Lock and read those of these documents that exist (in id order)."""
        if not document_ids:
            return {}
        rows = self._rows(
            "SELECT d.* FROM unnest(%s::text[]) AS k (id), LATERAL (SELECT id, body FROM documents"
            " WHERE documents.kind = %s AND documents.id = k.id FOR UPDATE) AS d",
            (sorted(document_ids), kind),
        )
        return {str(row[0]): bytes(row[1]) for row in rows}

    def write(
        self,
        journal: Journal,
        accounts_created: Iterable[Account],
        balances_changed: Sequence[BalanceRow],
        documents: Iterable[tuple[Document, bool]],
    ) -> None:
        """Write one batch set-based. Created accounts and changed balances carry final totals
        (the rows are locked); each document comes with
        whether it must be new (``True``: it was read as absent, so a concurrent insert conflicts)."""
        db = self._db
        try:
            with db.cursor() as cursor:
                if journal.ledgers:
                    cursor.executemany(
                        b"INSERT INTO ledgers (code, scale, timestamp) VALUES (%s, %s, %s)",
                        [(ledger.code, ledger.scale, ledger.timestamp) for ledger in journal.ledgers],
                    )
                self._copy_accounts(cursor, accounts_created)
                self._update_balances(cursor, balances_changed)
                self._copy_transfers(cursor, journal)
                self._update_statuses(cursor, journal)
                self._write_documents(cursor, documents)
        except psycopg.Error as error:
            raise _store_error(error, "batch write failed") from error

    @staticmethod
    def _copy_accounts(cursor: psycopg.Cursor[Any], accounts: Iterable[Account]) -> None:
        rows = [
            (
                a.id, a.ledger, a.flags, a.credit_limit, a.debits_posted, a.credits_posted, a.debits_pending,
                a.credits_pending, a.timestamp, orjson.dumps(a.metadata).decode(),
            )
            for a in accounts
        ]  # fmt: skip
        if not rows:
            return
        with cursor.copy(f"COPY accounts ({_ACCOUNT_COLUMNS}) FROM STDIN".encode()) as copy:
            for row in rows:
                copy.write_row(row)

    @staticmethod
    def _update_balances(cursor: psycopg.Cursor[Any], rows: Sequence[BalanceRow]) -> None:
        if not rows:
            return
        _copy_lines(
            cursor,
            "COPY stage_accounts FROM STDIN",
            [f"{i}\t{lim}\t{d}\t{c}\t{dp}\t{cp}\n" for i, lim, d, c, dp, cp in rows],
        )
        cursor.execute(
            b"UPDATE accounts a SET credit_limit = s.credit_limit, debits_posted = s.debits_posted,"
            b" credits_posted = s.credits_posted, debits_pending = s.debits_pending,"
            b" credits_pending = s.credits_pending FROM stage_accounts s WHERE a.id = s.id"
        )
        if cursor.rowcount != len(rows):
            raise StoreError(f"balance update touched {cursor.rowcount} accounts, expected {len(rows)}")

    @staticmethod
    def _copy_transfers(cursor: psycopg.Cursor[Any], journal: Journal) -> None:
        transfers = journal.transfers
        if not transfers:
            return
        ids, debits, credits, amounts, ledgers, codes, flags, pending_ids, timeouts, stamps, metadata = (
            transfers.columns
        )
        lines = [
            f"{i}\t{d}\t{c}\t{a}\t{lg}\t{code}\t{f}\t{p}\t{t}\t{ts}\t{_copy_json(m)}\t"
            f"{0 if f & _PENDING else _NULL}\t{_expires_at(f, t, ts)}\n"
            for i, d, c, a, lg, code, f, p, t, ts, m in zip(
                ids, debits, credits, amounts, ledgers, codes, flags, pending_ids, timeouts, stamps, metadata,
                strict=True,
            )
        ]  # fmt: skip
        _copy_lines(cursor, f"COPY transfers ({_TRANSFER_COLUMNS}, status, expires_at) FROM STDIN", lines)

    @staticmethod
    def _update_statuses(cursor: psycopg.Cursor[Any], journal: Journal) -> None:
        changes: list[tuple[str, int]] = [(pending_id, int(PendingStatus.EXPIRED)) for pending_id in journal.expired]
        columns = journal.transfers.columns
        if columns and any(columns[6]):
            for flags, pending_id in zip(columns[6], columns[7], strict=True):
                if flags & _POST:
                    changes.append((pending_id, int(PendingStatus.POSTED)))
                elif flags & _VOID:
                    changes.append((pending_id, int(PendingStatus.VOIDED)))
        if not changes:
            return
        cursor.execute(
            b"UPDATE transfers t SET status = c.status FROM unnest(%s::text[], %s::int[]) AS c(id, status)"
            b" WHERE t.id = c.id AND t.status = 0",
            ([pending_id for pending_id, _ in changes], [status for _, status in changes]),
        )
        if cursor.rowcount != len(changes):
            raise StoreError(f"pending status update touched {cursor.rowcount} transfers, expected {len(changes)}")

    @staticmethod
    def _write_documents(cursor: psycopg.Cursor[Any], documents: Iterable[tuple[Document, bool]]) -> None:
        rows = [(doc.kind, doc.id, doc.body, fresh) for doc, fresh in documents]
        if not rows:
            return
        with cursor.copy(b"COPY stage_documents FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cursor.execute(b"INSERT INTO documents (kind, id, body) SELECT kind, id, body FROM stage_documents WHERE fresh")
        cursor.execute(
            b"INSERT INTO documents (kind, id, body) SELECT kind, id, body FROM stage_documents WHERE NOT fresh"
            b" ON CONFLICT (kind, id) DO UPDATE SET body = EXCLUDED.body"
        )

    # ----------------------------------------------------------------- ending
    def commit(self) -> None:
        try:
            self._db.commit()
        except psycopg.Error as error:
            raise _store_error(error, "batch commit failed") from error

    def rollback(self) -> None:
        try:
            self._db.rollback()
        except psycopg.Error:
            self._db.close()  # a broken connection: the next batch reconnects
