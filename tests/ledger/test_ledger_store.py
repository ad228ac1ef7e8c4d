"""The SQLite store: the writer lock, the schema version, the batch codec, and failed writes."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_testkit import (
    PENDING,
    POST,
    USD,
    Clock,
    Engines,
    balances,
    codes,
    fund,
    held,
    ok,
    setup_accounts,
    tick,
    totals,
    transfer,
    wallet,
)

from micropay.engine import BatchContext, Engine
from micropay.errors import StoreError, StoreLockedError, StoreSchemaError
from micropay.ledger import AccountRequest, Journal, Result, Transfer
from micropay.ledger.types import TransferColumns
from micropay.models.payments import CHARGE
from micropay.store import SQLiteStore, open_store
from micropay.store.base import Document, DocumentBlock
from micropay.store.codec import decode_batch, encode_batch
from micropay.store.sqlite import PAGE_SIZE_BYTES, SCHEMA_VERSION, sqlite_path


# ----------------------------------------------------------------------------- the writer lock
def test_a_second_writer_on_the_same_file_gets_store_locked_error(db_path: Path) -> None:
    first = SQLiteStore(db_path)
    try:
        with pytest.raises(StoreLockedError):
            SQLiteStore(db_path)
        with pytest.raises(StoreLockedError):
            Engine(SQLiteStore(db_path))
    finally:
        first.close()
    SQLiteStore(db_path).close()  # the lock goes with the store that held it


def test_a_writer_in_another_process_gets_store_locked_error(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        script = (
            "import sys\n"
            "from micropay.errors import StoreLockedError\n"
            "from micropay.store import SQLiteStore\n"
            "try:\n    SQLiteStore(sys.argv[1])\nexcept StoreLockedError:\n    sys.exit(3)\n"
        )
        assert subprocess.run([sys.executable, "-c", script, str(db_path)], timeout=60).returncode == 3
    finally:
        store.close()


def test_a_closed_engine_releases_the_lock(engines: Engines) -> None:
    engine = engines.open()
    engine.close()
    engines.open().close()


# ----------------------------------------------------------------------------- schema
def test_the_schema_version_is_recorded(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
    finally:
        store.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)


def test_reopening_keeps_the_data_and_does_not_migrate_again(engines: Engines) -> None:
    engine = engines.open()
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "a", "b")
    ok(engine, transfer("t", "a", "b", 3))
    engine = engines.reopen(engine)
    assert engine.store.schema_version() == SCHEMA_VERSION
    assert totals(engine.account("b")) == (0, 3, 0, 0)


def test_a_newer_schema_version_is_refused(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreSchemaError):
        SQLiteStore(db_path)
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    SQLiteStore(db_path).close()  # the refused open released the lock


def test_a_fresh_store_is_empty_and_passes_the_integrity_check(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    try:
        journals = list(store.load())
        assert len(journals) == 1 and journals[0].is_empty()
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def _page_size(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        (size,) = db.execute("PRAGMA page_size").fetchone()
    return int(size)


def test_a_new_database_gets_the_stores_page_size(db_path: Path) -> None:
    SQLiteStore(db_path).close()
    assert _page_size(db_path) == PAGE_SIZE_BYTES


def test_a_database_made_with_smaller_pages_keeps_them_and_works(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
    engine = Engine(SQLiteStore(db_path))
    try:
        engine.create_ledger(USD, 2)
        setup_accounts(engine, "a", "b")
        ok(engine, transfer("t", "a", "b", 3))
        engine.call(lambda ctx: ctx.put_document(CHARGE, "c", b"[1]"))
    finally:
        engine.close()
    assert _page_size(db_path) == 4096
    engine = Engine(SQLiteStore(db_path))
    try:
        assert totals(engine.account("b")) == (0, 3, 0, 0) and engine.document(CHARGE, "c") == b"[1]"
        assert engine.store.integrity_check() == "ok"
    finally:
        engine.close()


def test_sqlite_urls_name_files(tmp_path: Path) -> None:
    assert sqlite_path("sqlite:///data/x.db") == Path("data/x.db")
    assert sqlite_path("sqlite:////abs/x.db") == Path("/abs/x.db")
    assert sqlite_path("plain.db") == Path("plain.db")
    with pytest.raises(StoreError):
        sqlite_path("sqlite://host/x.db")
    with pytest.raises(StoreError):
        open_store("postgresql://localhost/micropay")
    store = open_store(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    store.close()
    assert (tmp_path / "sub" / "x.db").exists()


# ----------------------------------------------------------------------------- the batch codec
IDS = st.text("abcXYZ019_-:", min_size=1, max_size=12)
METADATA = st.lists(st.tuples(st.text(min_size=1, max_size=5), st.text(max_size=5)), max_size=3).map(tuple)


@st.composite
def transfer_columns(draw: st.DrawFn) -> TransferColumns:
    """Transfers as a batch holds them: increasing timestamps (a run or with gaps), and columns
    that are often constant (one account, one amount, no metadata) and sometimes not."""
    count = draw(st.integers(1, 20))

    def column(values: st.SearchStrategy[object]) -> list[object]:
        if draw(st.booleans()):
            return [draw(values)] * count
        return [draw(values) for _ in range(count)]

    ids = draw(st.lists(IDS, min_size=count, max_size=count, unique=True))
    start = draw(st.integers(0, 2**62))
    if draw(st.booleans()):
        stamps = list(range(start, start + count))
    else:
        gaps = draw(st.lists(st.integers(1, 10**9), min_size=count, max_size=count))
        stamps = [start + sum(gaps[: i + 1]) for i in range(count)]
    return TransferColumns(
        [
            ids,
            column(IDS),
            column(IDS),
            column(st.integers(1, 10**15)),
            column(st.sampled_from(["USD", "EUR", "PTS"])),
            column(st.integers(0, 65535)),
            column(st.integers(0, 63)),
            column(st.one_of(st.just(""), IDS)),
            column(st.integers(0, 10 * 366 * 86400)),
            stamps,
            column(METADATA),
        ]
    )


@settings(max_examples=300, deadline=None)
@given(transfers=st.one_of(st.just(TransferColumns()), transfer_columns()), expired=st.lists(IDS, max_size=5))
def test_the_batch_codec_round_trips(transfers: TransferColumns, expired: list[str]) -> None:
    decoded, decoded_expired = decode_batch(encode_batch(transfers, expired))
    assert list(decoded) == list(transfers)
    assert decoded_expired == expired
    assert all(isinstance(pair, tuple) for t in decoded for pair in t.metadata)


def test_the_codec_writes_constant_columns_and_timestamp_runs_once() -> None:
    columns = TransferColumns()
    for i in range(5):
        columns.append(Transfer(f"t{i}", "a", "b", 7, "USD", 0, 0, "", 0, 100 + i, ()))
    body = orjson.loads(encode_batch(columns, []))
    assert body["n"] == 5
    ids, debit, _credit, amount, *_rest, stamps, metadata = body["t"]
    assert ids == ["t0", "t1", "t2", "t3", "t4"]
    assert (debit, amount, stamps, metadata) == ({"k": "a"}, {"k": 7}, {"r": 100}, {"k": []})


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 2, "t": [[1, 2]], "x": []}',
        b'{"n": 2, "t": [[1], [1], [1], [1], [1], [1], [1], [1], [1], [1], [1]], "x": []}',
        b'{"n": 1, "t": [7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7], "x": []}',
    ],
    ids=["too-few-columns", "short-column", "not-a-column"],
)
def test_a_damaged_batch_body_raises_store_schema_error(body: bytes) -> None:
    with pytest.raises(StoreSchemaError):
        decode_batch(body)


# ----------------------------------------------------------------------------- failed writes
class FlakyStore(SQLiteStore):
    """A real SQLite store whose next write can be made to fail, as a full disk would."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail_next_write = False
        self.writes = 0

    def write(self, journal: Journal, documents: Sequence[Document], blocks: Sequence[DocumentBlock] = ()) -> None:
        self.writes += 1
        if self.fail_next_write:
            self.fail_next_write = False
            raise StoreError("injected write failure")
        super().write(journal, documents, blocks)


def test_a_failed_store_write_fails_the_whole_batch_and_memory_stays_equal_to_disk(db_path: Path, clock: Clock) -> None:
    store = FlakyStore(db_path)
    engine = Engine(store, clock_ns=clock, batch_window_s=0)
    try:
        engine.create_ledger(USD, 2)
        setup_accounts(engine, "bank", wallet("w"), "shop")
        fund(engine, "w", 100)
        (p1,) = ok(engine, transfer("p1", "w", "shop", 30, flags=PENDING))
        (p2,) = ok(engine, transfer("p2", "w", "shop", 20, flags=PENDING, timeout_s=5))
        before = balances(engine)

        def one_batch(fail: bool) -> list[object]:
            with held(engine):
                clock.now_ns = p2.timestamp + 5 * 10**9  # the batch also expires p2
                store.fail_next_write = fail
                return [
                    engine.submit_transfers([transfer("t1", "w", "shop", 10), transfer("t2", "bank", "w", 5)]),
                    engine.submit(lambda ctx: ctx.create_accounts([AccountRequest("late", USD)])),
                    engine.submit(lambda ctx: ctx.set_credit_limit("w", 500)),
                    engine.submit_transfers([transfer("post1", pending_id=p1.id, flags=POST)]),
                    engine.submit(lambda ctx: ctx.put_document("note", "n1", b'{"a": 1}')),
                ]

        futures = one_batch(fail=True)
        for future in futures:
            with pytest.raises(StoreError):
                future.result(30)
        assert balances(engine) == before
        assert engine.transfer("t1") is None and engine.transfer("post1") is None
        assert engine.account("late") is None
        assert engine.account("w").credit_limit == 0
        assert engine.document("note", "n1") is None
        assert engine.account("w").debits_pending == 50  # p2's expiry undone too
        engine.verify()

        results = [future.result(30) for future in one_batch(fail=False)]
        assert codes(results[0]) == [Result.OK, Result.OK]
        assert results[1][0][0] is Result.OK and results[2][0] is Result.OK
        assert codes(results[3]) == [Result.OK]
        assert totals(engine.account("w")) == (40, 105, 0, 0)  # p2 expired, p1 posted
        assert engine.document("note", "n1") == b'{"a": 1}'
        after = balances(engine)
    finally:
        engine.close()
    reopened = Engine(SQLiteStore(db_path), clock_ns=clock)
    try:
        assert balances(reopened) == after
        assert reopened.account("w").credit_limit == 500
        assert reopened.document("note", "n1") == b'{"a": 1}'
        reopened.verify()
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", [CHARGE, "note"])
def test_a_record_created_in_bulk_then_put_again_in_its_batch_is_stored_in_the_newer_version(
    db_path: Path, clock: Clock, kind: str
) -> None:
    """Whether the kind goes to the record log (charges) or the documents table (others)."""

    def batch(ctx: BatchContext) -> None:
        ctx.create_documents(kind, ["a", "b"], [b'"a1"', b'"b1"'])
        ctx.put_document(kind, "a", b'"a2"')

    engine = Engine(SQLiteStore(db_path), clock_ns=clock)
    try:
        engine.call(batch)
        assert (engine.document(kind, "a"), engine.document(kind, "b")) == (b'"a2"', b'"b1"')
    finally:
        engine.close()
    store = SQLiteStore(db_path)
    try:
        assert (store.read_document(kind, "a"), store.read_document(kind, "b")) == (b'"a2"', b'"b1"')
        assert store.list_documents(kind, None, 10) == [("a", b'"a2"'), ("b", b'"b1"')]
    finally:
        store.close()


def _refuse_transfer_writes(engines: Engines, refuse: bool) -> None:
    """Make the database itself fail (or stop failing) every write of transfers."""
    if isinstance(engines.where, Path):
        with sqlite3.connect(engines.where) as db:
            if refuse:
                db.execute(
                    "CREATE TRIGGER refuse BEFORE INSERT ON batches BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
                )
            else:
                db.execute("DROP TRIGGER refuse")
        return
    with psycopg.connect(engines.where, autocommit=True) as db:
        if refuse:
            db.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'disk says no'; END $$"
            )
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON transfers FOR EACH ROW EXECUTE FUNCTION refuse()")
        else:
            db.execute("DROP TRIGGER refuse ON transfers")


def test_a_database_error_inside_a_write_rolls_back_what_the_batch_already_wrote(engines: Engines) -> None:
    engine = engines.open()
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "a", "b")
    ok(engine, transfer("t0", "a", "b", 1))
    _refuse_transfer_writes(engines, True)

    def new_account_and_transfer(ctx: object) -> None:
        ctx.create_accounts([AccountRequest("c", USD)])
        ctx.create_transfers([transfer("t1", "a", "c", 5)])

    with pytest.raises(StoreError):
        engine.call(new_account_and_transfer)
    assert engine.account("c") is None
    assert totals(engine.account("a")) == (1, 0, 0, 0)
    _refuse_transfer_writes(engines, False)
    engine = engines.reopen(engine)
    assert engine.account("c") is None
    engine.call(new_account_and_transfer)
    assert totals(engine.account("c")) == (0, 5, 0, 0)


# ----------------------------------------------------------------------------- reads from the log
def test_account_history_reads_newest_first_in_pages(engine: Engine) -> None:
    setup_accounts(engine, "a", "b")
    ok(engine, *(transfer(f"t{i}", "a", "b", i + 1) for i in range(12)))  # one batch, the fast path
    ok(engine, transfer("p", "b", "a", 5, flags=PENDING))
    ok(engine, transfer("post", pending_id="p", flags=POST))
    history = engine.account_transfers("a", limit=1000)
    assert [t.id for t in history] == ["post", "p", *(f"t{i}" for i in reversed(range(12)))]
    page1 = engine.account_transfers("a", limit=5)
    page2 = engine.account_transfers("a", limit=5, before_timestamp=page1[-1].timestamp)
    assert [t.id for t in page1 + page2] == [t.id for t in history[:10]]
    assert engine.account_transfers("nobody") == []
    if isinstance(engine.store, SQLiteStore):
        assert engine.store.read_transfers([history[3].timestamp, 1]) == [history[3]]


def test_a_store_can_be_tick_written_with_an_expiry_only_batch(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, "a")
    (p,) = ok(engine, transfer("p", "bank", "a", 5, flags=PENDING, timeout_s=1))
    clock.now_ns = p.timestamp + 10**9
    tick(engine)  # a batch with an expiry and no transfer
    ok(engine, transfer("t", "bank", "a", 1))
    assert engine.transfer("t").amount == 1
    assert engine.transfer("p") == p


# ----------------------------------------------------------------------------- how a batch is written
def test_a_batch_of_transfers_alone_is_written_by_one_statement_and_is_durable(db_path: Path, clock: Clock) -> None:
    """Each statement lets go of the interpreter lock, so a batch of nothing but transfers is
    one ``INSERT``, its own transaction; it is on disk when its future resolves."""
    store = SQLiteStore(db_path)
    engine = Engine(store, clock_ns=clock, batch_window_s=0)
    try:
        engine.create_ledger(USD, 2)
        setup_accounts(engine, "a", "b")
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        ok(engine, transfer("t1", "a", "b", 7))
        store._db.set_trace_callback(None)
        assert [statement.split()[0] for statement in statements] == ["INSERT"]
    finally:
        engine.close()
    reopened = Engine(SQLiteStore(db_path), clock_ns=clock)
    try:
        assert reopened.transfer("t1").amount == 7
    finally:
        reopened.close()


def test_a_refused_batch_of_transfers_alone_writes_nothing_and_the_next_one_goes_through(engines: Engines) -> None:
    engine = engines.open()
    engine.create_ledger(USD, 2)
    setup_accounts(engine, "a", "b")
    _refuse_transfer_writes(engines, True)
    with pytest.raises(StoreError):
        engine.create_transfers([transfer("t1", "a", "b", 5)])
    assert engine.transfer("t1") is None and totals(engine.account("b")) == (0, 0, 0, 0)
    _refuse_transfer_writes(engines, False)
    ok(engine, transfer("t2", "a", "b", 3))
    engine = engines.reopen(engine)
    assert engine.transfer("t1") is None
    assert totals(engine.account("b")) == (0, 3, 0, 0)


# ----------------------------------------------------------------------------- checkpoints
def test_a_thread_of_its_own_copies_the_write_ahead_log_into_the_database_file(db_path: Path, tmp_path: Path) -> None:
    engine = Engine(SQLiteStore(db_path))
    try:
        engine.create_ledger(USD, 2)
        setup_accounts(engine, "a", "b")
        for batch in range(5):
            requests = [transfer(f"t{batch}-{i}", "a", "b", 1) for i in range(1000)]
            assert codes(engine.create_transfers(requests)) == [Result.OK] * 1000
        # The database file alone (without its log) comes to hold every batch, while the
        # engine, which never checkpoints below 16,384 log pages itself, keeps running.
        deadline = time.monotonic() + 10
        for attempt in itertools.count():
            copy = tmp_path / f"copy-{attempt}.db"  # the file alone: no log beside it
            copy.write_bytes(db_path.read_bytes())
            db = sqlite3.connect(copy)
            try:
                copied = db.execute("SELECT coalesce(sum(transfer_count), 0) FROM batches").fetchone()[0]
            finally:
                db.close()
            if copied == 5000 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert copied == 5000
        assert any(thread.name == "micropay-checkpoint" for thread in threading.enumerate())
    finally:
        engine.close()
    assert not any(thread.name == "micropay-checkpoint" for thread in threading.enumerate())
