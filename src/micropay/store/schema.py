"""The schema of both stores, declared once and rendered per dialect.

Each migration is a tuple of steps (tables, indexes, seed rows); a step or a column may belong
to one dialect only, because the two stores keep money differently: SQLite has one writer that
keeps balances in memory and logs one row per batch; PostgreSQL has several writers, so it
keeps balances on the account rows (updated under row locks) and one row per transfer (its
primary key is what makes retries idempotent across processes). Everything else is shared,
except that SQLite logs the documents of the busiest kinds too (``LOGGED_KINDS``).
Migration ``i`` brings a database from version ``i`` to ``i + 1``; never edit a released one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]
BOTH: frozenset[Dialect] = frozenset({"sqlite", "postgresql"})
SQLITE: frozenset[Dialect] = frozenset({"sqlite"})
POSTGRESQL: frozenset[Dialect] = frozenset({"postgresql"})

ColumnType = Literal["text", "int32", "int64", "bytes"]

_TYPES: dict[Dialect, dict[ColumnType, str]] = {
    "sqlite": {"text": "TEXT", "int32": "INTEGER", "int64": "INTEGER", "bytes": "BLOB"},
    "postgresql": {"text": "TEXT", "int32": "INTEGER", "int64": "BIGINT", "bytes": "BYTEA"},
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False
    dialects: frozenset[Dialect] = BOTH


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    dialects: frozenset[Dialect] = BOTH
    clustered: bool = False
    """Stored in primary-key order (SQLite ``WITHOUT ROWID``); PostgreSQL ignores it."""


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]
    where: str = ""
    dialects: frozenset[Dialect] = BOTH


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    values: tuple[tuple[str, int | str], ...]
    dialects: frozenset[Dialect] = BOTH


@dataclass(frozen=True, slots=True)
class LogDocuments:
    """Move the documents of ``kinds`` from the documents table into the record log (a step of
    data, run by the store's own code: see ``record_log``)."""

    kinds: frozenset[str]
    dialects: frozenset[Dialect] = BOTH


Step = Table | Index | Row | LogDocuments

_LOGGED_SINCE_2: frozenset[str] = frozenset({"usage_event", "charge"})
_LOGGED_SINCE_3: frozenset[str] = frozenset({"usage_event_by_payer"})
_LOGGED_SINCE_4: frozenset[str] = frozenset({"usage"})
LOGGED_KINDS: frozenset[str] = _LOGGED_SINCE_2 | _LOGGED_SINCE_3 | _LOGGED_SINCE_4
"""Document kinds a SQLite database keeps in its record log rather than its documents table
(``record_log``): written at the rate of payments (charge records, usage events, the buckets of
a payer's usage events, one per payer a batch, and the usage of each payer, plan and month,
rewritten by every batch that meters it). Part of the schema: a database keeps every document
of a kind in one place, so a change here needs a migration."""

REREAD_KINDS: frozenset[str] = frozenset({"usage"})
"""Logged kinds whose records later batches read again (a payer's usage of a plan this month,
updated by each event): the engine's document cache keeps these, and leaves the other logged
kinds, written once under fresh ids, to the store's index."""

_BALANCES = tuple(
    Column(name, "int64", dialects=POSTGRESQL)
    for name in ("debits_posted", "credits_posted", "debits_pending", "credits_pending")
)

MIGRATIONS: tuple[tuple[Step, ...], ...] = (
    (
        Table("meta", (Column("key", "text"), Column("value", "text")), ("key",)),
        Table("ledgers", (Column("code", "text"), Column("scale", "int32"), Column("timestamp", "int64")), ("code",)),
        Table(
            "accounts",
            (
                Column("id", "text"),
                Column("ledger", "text"),
                Column("flags", "int32"),
                Column("credit_limit", "int64"),
                *_BALANCES,
                Column("timestamp", "int64"),
                Column("metadata", "text"),
            ),
            ("id",),
        ),
        # SQLite: the transfer log, one row per committed batch (see codec).
        Table(
            "batches",
            (
                Column("seq", "int64"),
                Column("first_ts", "int64", nullable=True),
                Column("last_ts", "int64", nullable=True),
                Column("transfer_count", "int64"),
                Column("body", "bytes"),
            ),
            ("seq",),
            dialects=SQLITE,
        ),
        Index("batches_first_ts", "batches", ("first_ts",), dialects=SQLITE),
        # PostgreSQL: one row per transfer; ``status`` is a pending transfer's PendingStatus
        # (NULL for every other transfer), ``expires_at`` its timeout in engine nanoseconds (0: none).
        Table(
            "transfers",
            (
                Column("id", "text"),
                Column("debit_account_id", "text"),
                Column("credit_account_id", "text"),
                Column("amount", "int64"),
                Column("ledger", "text"),
                Column("code", "int32"),
                Column("flags", "int32"),
                Column("pending_id", "text"),
                Column("timeout_s", "int64"),
                Column("timestamp", "int64"),
                Column("metadata", "text"),
                Column("status", "int32", nullable=True),
                Column("expires_at", "int64"),
            ),
            ("id",),
            dialects=POSTGRESQL,
        ),
        Index("transfers_debit", "transfers", ("debit_account_id", "timestamp"), dialects=POSTGRESQL),
        Index("transfers_credit", "transfers", ("credit_account_id", "timestamp"), dialects=POSTGRESQL),
        Index("transfers_due", "transfers", ("expires_at",), "status = 0 AND expires_at > 0", dialects=POSTGRESQL),
        # PostgreSQL: the last timestamp any writer reserved (timestamps are unique across writers).
        Table("clock", (Column("id", "int32"), Column("last_timestamp", "int64")), ("id",), dialects=POSTGRESQL),
        Row("clock", (("id", 1), ("last_timestamp", 0)), dialects=POSTGRESQL),
        Table(
            "documents",
            (Column("kind", "text"), Column("id", "text"), Column("body", "bytes")),
            ("kind", "id"),
            clustered=True,
        ),
    ),
    (
        # SQLite: the record log, one row per batch that wrote documents of LOGGED_KINDS.
        Table(
            "records",
            (Column("seq", "int64"), Column("header", "bytes"), Column("data", "bytes")),
            ("seq",),
            dialects=SQLITE,
        ),
        LogDocuments(_LOGGED_SINCE_2, dialects=SQLITE),
    ),
    (
        # SQLite: a payer's usage-event buckets join the record log (written once, one per
        # payer a batch: in the documents table, a random leaf each).
        LogDocuments(_LOGGED_SINCE_3, dialects=SQLITE),
    ),
    (
        # SQLite: the usage of each payer, plan and month joins the record log. A metering
        # batch rewrote thousands of them in the documents table (3-4.5 µs a row, most of the
        # batch's write); in the log each is a slice of the batch's one row.
        LogDocuments(_LOGGED_SINCE_4, dialects=SQLITE),
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def _table(dialect: Dialect, table: Table) -> str:
    columns = [
        f"{column.name} {_TYPES[dialect][column.type]}{'' if column.nullable else ' NOT NULL'}"
        for column in table.columns
        if dialect in column.dialects
    ]
    columns.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    suffix = " WITHOUT ROWID" if table.clustered and dialect == "sqlite" else ""
    return f"CREATE TABLE {table.name} ({', '.join(columns)}){suffix}"


def _index(index: Index) -> str:
    where = f" WHERE {index.where}" if index.where else ""
    return f"CREATE INDEX {index.name} ON {index.table} ({', '.join(index.columns)}){where}"


def _literal(value: int | str) -> str:
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


def _row(row: Row) -> str:
    names = ", ".join(name for name, _ in row.values)
    values = ", ".join(_literal(value) for _, value in row.values)
    return f"INSERT INTO {row.table} ({names}) VALUES ({values})"


def migration_steps(dialect: Dialect, version: int) -> list[str | LogDocuments]:
    """What brings a ``dialect`` database from ``version`` to ``version + 1``, in order: SQL,
    and the data steps the store runs itself."""
    steps: list[str | LogDocuments] = []
    for step in MIGRATIONS[version]:
        if dialect not in step.dialects:
            continue
        if isinstance(step, Table):
            steps.append(_table(dialect, step))
        elif isinstance(step, Index):
            steps.append(_index(step))
        elif isinstance(step, Row):
            steps.append(_row(step))
        else:
            steps.append(step)
    return steps


def migration_statements(dialect: Dialect, version: int) -> list[str]:
    """The SQL that brings a ``dialect`` database from ``version`` to ``version + 1``, for a
    dialect whose migrations are SQL alone (PostgreSQL)."""
    steps = migration_steps(dialect, version)
    statements = [step for step in steps if isinstance(step, str)]
    if len(statements) != len(steps):
        raise TypeError(f"{dialect} migration {version} has data steps: run it with migration_steps")
    return statements
