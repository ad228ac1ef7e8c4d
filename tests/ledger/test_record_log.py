"""The record log: documents of the busiest kinds kept one row per batch in a SQLite store, read
and listed exactly as documents in the documents table are."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micropay.engine.memory import DocumentCache
from micropay.errors import StoreError, StoreSchemaError
from micropay.ledger import Journal
from micropay.models.metering import USAGE, USAGE_EVENT, USAGE_EVENT_BY_PAYER
from micropay.models.payments import CHARGE
from micropay.store import SQLiteStore
from micropay.store.base import Document, DocumentBlock
from micropay.store.record_log import (
    RecordColumns,
    RecordIndex,
    SortedIds,
    decode_header,
    encode_record_groups,
    encode_records,
)
from micropay.store.schema import LOGGED_KINDS, SCHEMA_VERSION, migration_statements, migration_steps

OTHER = "payer"  # a kind kept in the documents table


@pytest.fixture
def store(db_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(db_path)
    yield opened
    opened.close()


def _write(store: SQLiteStore, *documents: Document) -> None:
    store.write(Journal(), list(documents))


def _blocks(documents: list[Document]) -> list[DocumentBlock]:
    """Each document as a block of its own, as a batch would hand them over."""
    return [DocumentBlock(document.kind, [document.id], [document.body]) for document in documents]


def _rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql).fetchall()


def test_the_logged_kinds_are_the_charge_records_the_usage_events_their_buckets_and_the_usage() -> None:
    assert {CHARGE, USAGE_EVENT, USAGE_EVENT_BY_PAYER, USAGE} == LOGGED_KINDS
    assert OTHER not in LOGGED_KINDS


def test_the_logged_documents_of_a_batch_are_one_row_and_are_read_back_after_reopening(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    _write(
        store,
        *(Document(CHARGE, f"ch-{i:03d}", b'{"n":%d}' % i) for i in range(50)),
        Document(USAGE_EVENT, "ev-1", b"[1]"),
        Document(OTHER, "p-1", b"{}"),
    )
    store._db.set_trace_callback(None)
    assert sum(statement.startswith("INSERT INTO records") for statement in statements) == 1
    store.close()
    assert _rows(db_path, "SELECT count(*) FROM records") == [(1,)]
    assert _rows(db_path, "SELECT kind, id FROM documents") == [(OTHER, "p-1")]
    reopened = SQLiteStore(db_path)
    try:
        assert reopened.read_document(CHARGE, "ch-007") == b'{"n":7}'
        assert reopened.read_document(USAGE_EVENT, "ev-1") == b"[1]"
        assert reopened.read_document(OTHER, "p-1") == b"{}"
        assert reopened.read_document(CHARGE, "ev-1") is None  # ids are per kind
        assert reopened.read_documents(CHARGE, ["ch-001", "nope", "ch-049"]) == {
            "ch-001": b'{"n":1}',
            "ch-049": b'{"n":49}',
        }
        page = reopened.list_documents(CHARGE, "ch-010", 3)
        assert page == [("ch-011", b'{"n":11}'), ("ch-012", b'{"n":12}'), ("ch-013", b'{"n":13}')]
    finally:
        reopened.close()


def test_a_newer_version_of_a_logged_document_replaces_the_older(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    _write(store, Document(CHARGE, "ch", b'{"refunded":0}'), Document(CHARGE, "other", b"{}"))
    _write(store, Document(CHARGE, "ch", b'{"refunded":5}'))
    assert store.read_document(CHARGE, "ch") == b'{"refunded":5}'
    store.close()
    reopened = SQLiteStore(db_path)
    try:
        assert reopened.read_document(CHARGE, "ch") == b'{"refunded":5}'
        assert reopened.list_documents(CHARGE, None, 10) == [("ch", b'{"refunded":5}'), ("other", b"{}")]
    finally:
        reopened.close()


def test_a_refused_batch_leaves_the_logged_documents_as_they_were(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    _write(store, Document(CHARGE, "kept", b"1"))
    store._db.execute("CREATE TRIGGER refuse AFTER INSERT ON records BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(StoreError):
        _write(store, Document(CHARGE, "lost", b"2"), Document(CHARGE, "kept", b"3"), Document(OTHER, "o", b"4"))
    assert store.read_document(CHARGE, "lost") is None
    assert store.read_document(CHARGE, "kept") == b"1"
    assert store.read_document(OTHER, "o") is None  # the whole batch rolled back
    assert store.list_documents(CHARGE, None, 10) == [("kept", b"1")]
    store._db.execute("DROP TRIGGER refuse")
    _write(store, Document(CHARGE, "next", b"5"))
    store.close()
    reopened = SQLiteStore(db_path)
    try:
        assert reopened.list_documents(CHARGE, None, 10) == [("kept", b"1"), ("next", b"5")]
    finally:
        reopened.close()


def test_opening_a_version_1_database_moves_its_logged_documents_into_the_record_log(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        for statement in migration_statements("sqlite", 0):
            db.execute(statement)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        db.executemany(
            "INSERT INTO documents (kind, id, body) VALUES (?, ?, ?)",
            [(CHARGE, "c2", b"two"), (CHARGE, "c1", b"one"), (USAGE_EVENT, "e1", b"ev"), (OTHER, "p", b"pay")],
        )
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.list_documents(CHARGE, None, 10) == [("c1", b"one"), ("c2", b"two")]
        assert store.read_document(USAGE_EVENT, "e1") == b"ev"
        assert store.read_document(OTHER, "p") == b"pay"
        _write(store, Document(CHARGE, "c0", b"zero"))
        assert [document_id for document_id, _ in store.list_documents(CHARGE, None, 10)] == ["c0", "c1", "c2"]
    finally:
        store.close()
    assert _rows(db_path, "SELECT kind, id FROM documents") == [(OTHER, "p")]


def test_opening_a_version_2_database_moves_its_usage_event_buckets_into_the_record_log(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        for statement in migration_statements("sqlite", 0):
            db.execute(statement)
        for step in migration_steps("sqlite", 1):  # its data step has nothing to move yet
            if isinstance(step, str):
                db.execute(step)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '2')")
        db.executemany(
            "INSERT INTO documents (kind, id, body) VALUES (?, ?, ?)",
            [
                (USAGE_EVENT_BY_PAYER, "p1:02", b'["e2"]'),
                (USAGE_EVENT_BY_PAYER, "p1:01", b'["e1"]'),
                (OTHER, "p", b"x"),
            ],
        )
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.list_documents(USAGE_EVENT_BY_PAYER, None, 10) == [("p1:01", b'["e1"]'), ("p1:02", b'["e2"]')]
        assert store.read_document(OTHER, "p") == b"x"
    finally:
        store.close()
    assert _rows(db_path, "SELECT kind, id FROM documents") == [(OTHER, "p")]


def test_opening_a_version_3_database_moves_its_usage_records_into_the_record_log(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        for version in range(3):
            for step in migration_steps("sqlite", version):  # the data steps have nothing to move yet
                if isinstance(step, str):
                    db.execute(step)
        db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '3')")
        db.executemany(
            "INSERT INTO documents (kind, id, body) VALUES (?, ?, ?)",
            [(USAGE, "calls:2026-11:p2", b"[2]"), (USAGE, "calls:2026-11:p1", b"[1]"), (OTHER, "p", b"x")],
        )
    store = SQLiteStore(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        assert store.list_documents(USAGE, "calls:2026-11:", 10) == [
            ("calls:2026-11:p1", b"[1]"),
            ("calls:2026-11:p2", b"[2]"),
        ]
        _write(store, Document(USAGE, "calls:2026-11:p1", b"[3]"))
        assert store.read_documents(USAGE, ["calls:2026-11:p1", "calls:2026-11:p2"]) == {
            "calls:2026-11:p1": b"[3]",
            "calls:2026-11:p2": b"[2]",
        }
    finally:
        store.close()
    assert _rows(db_path, "SELECT kind, id FROM documents") == [(OTHER, "p")]


def test_a_damaged_record_header_is_refused_when_the_store_opens(db_path: Path) -> None:
    store = SQLiteStore(db_path)
    _write(store, Document(CHARGE, "c", b"1"))
    store.close()
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE records SET header = ?", (b"[1,2]",))
    with pytest.raises(StoreSchemaError):
        SQLiteStore(db_path)


def test_the_engines_document_cache_leaves_logged_documents_to_the_stores_index(store: SQLiteStore) -> None:
    """A charge record or usage event per payment would fill the cache and make it start over."""
    cache = DocumentCache(store)
    written = [Document(CHARGE, "ch", b"c"), Document(USAGE_EVENT, "ev", b"e"), Document(OTHER, "p", b"p")]
    _write(store, *written)
    cache.committed(_blocks(written))
    assert (OTHER, "p") in cache
    assert (CHARGE, "ch") not in cache and (USAGE_EVENT, "ev") not in cache
    assert cache.get((CHARGE, "ch")) == b"c" and cache.get((CHARGE, "none")) is None
    assert cache.get_many(USAGE_EVENT, ["ev", "none"]) == {"ev": b"e"}
    assert (CHARGE, "ch") not in cache and (CHARGE, "none") not in cache and (USAGE_EVENT, "ev") not in cache


def test_the_engines_document_cache_keeps_the_logged_usage_records_that_every_batch_reads_again(
    store: SQLiteStore,
) -> None:
    cache = DocumentCache(store)
    written = [Document(USAGE, "calls:2026-11:p1", b"[1]")]
    _write(store, *written)
    cache.committed(_blocks(written))
    assert (USAGE, "calls:2026-11:p1") in cache
    assert cache.get_many(USAGE, ["calls:2026-11:p2"]) == {}
    _write(store, Document(USAGE, "calls:2026-11:p2", b"[2]"))  # a version the cache has not seen
    assert cache.get_many(USAGE, ["calls:2026-11:p1", "calls:2026-11:p2"]) == {
        "calls:2026-11:p1": b"[1]",
        "calls:2026-11:p2": b"[2]",
    }
    assert (USAGE, "calls:2026-11:p2") in cache


def test_the_engines_document_cache_reads_many_as_it_reads_each(store: SQLiteStore) -> None:
    cache = DocumentCache(store)
    _write(store, Document(OTHER, "a", b"1"), Document(OTHER, "b", b"2"))
    assert cache.get((OTHER, "a")) == b"1" and cache.get((OTHER, "gone")) is None  # remembered, known absent
    # Remembered, known absent, unknown and stored, unknown and absent, and an id twice.
    assert cache.get_many(OTHER, ["a", "gone", "b", "never", "a"]) == {"a": b"1", "b": b"2"}
    assert (OTHER, "b") in cache and (OTHER, "never") not in cache
    assert cache.get_many(OTHER, ["a", "b"]) == {"a": b"1", "b": b"2"}
    assert cache.get_many(OTHER, []) == {}


def test_the_engines_document_cache_remembers_absent_documents_only_when_asked(store: SQLiteStore) -> None:
    cache = DocumentCache(store)
    assert cache.get_many(OTHER, ["x", "y"], remember_absent=True) == {}
    assert (OTHER, "x") in cache and (OTHER, "y") in cache and cache.get((OTHER, "x")) is None
    assert cache.get_many(OTHER, ["z"]) == {} and (OTHER, "z") not in cache
    assert cache.get_many(CHARGE, ["nope"], remember_absent=True) == {}
    assert (CHARGE, "nope") not in cache  # a kind the store's index answers for


# ----------------------------------------------------------------------------- the row codec
BODIES = st.binary(max_size=40)
DOCUMENTS = st.lists(
    st.builds(Document, st.sampled_from(sorted(LOGGED_KINDS)), st.text("abc", min_size=1, max_size=3), BODIES),
    min_size=1,
    max_size=20,
)


@given(DOCUMENTS)
def test_a_record_row_names_each_document_where_its_body_lies(documents: list[Document]) -> None:
    """The row holds each kind's documents together, kinds in order, each kind's in the order given."""
    row = encode_records(documents)
    assert decode_header(row.header) == row.columns
    entries = row.columns.entries()
    expected = sorted(documents, key=lambda document: document.kind)
    assert [(kind, document_id) for kind, document_id, _, _ in entries] == [(d.kind, d.id) for d in expected]
    assert [row.data[start : start + length] for _, _, start, length in entries] == [d.body for d in expected]


def _kind_runs_one_by_one(columns: RecordColumns) -> list[tuple[str, list[str], list[int]]]:
    runs: dict[str, tuple[str, list[str], list[int]]] = {}
    for position, (kind, document_id, _, _) in enumerate(columns.entries()):
        run = runs.setdefault(kind, (kind, [], []))
        run[1].append(document_id)
        run[2].append(position)
    return [runs[kind] for kind in columns.kinds if kind in runs]


def _by_kind(columns: RecordColumns) -> list[tuple[str, list[str], list[int]]]:
    return [(kind, ids, list(positions)) for kind, ids, positions in columns.by_kind()]


@given(DOCUMENTS, st.randoms(use_true_random=False))
def test_a_rows_documents_by_kind_keep_their_order_however_the_row_lays_them_out(
    documents: list[Document], rng: Any
) -> None:
    columns = encode_records(documents).columns
    assert _by_kind(columns) == _kind_runs_one_by_one(columns)
    order = list(range(len(columns.ids)))
    rng.shuffle(order)  # a row as an older version wrote it: kinds interleaved
    shuffled = RecordColumns(
        columns.kinds,
        [columns.kind_numbers[i] for i in order],
        [columns.ids[i] for i in order],
        [columns.starts[i] for i in order],
        [columns.lengths[i] for i in order],
    )
    assert _by_kind(shuffled) == _kind_runs_one_by_one(shuffled)


@given(DOCUMENTS, st.integers(0, 3))
def test_a_record_row_of_blocks_equals_the_row_of_their_documents_one_by_one(
    documents: list[Document], cut: int
) -> None:
    """Blocks of one kind, each made of consecutive documents of that kind, encode as the documents do."""
    blocks: list[tuple[str, list[str], list[bytes]]] = []
    for kind, document_id, body in documents:
        if blocks and blocks[-1][0] == kind and len(blocks[-1][1]) <= cut:
            blocks[-1][1].append(document_id)
            blocks[-1][2].append(body)
        else:
            blocks.append((kind, [document_id], [body]))
    assert encode_record_groups([DocumentBlock(*block) for block in blocks]) == encode_records(documents)


def test_the_index_lists_ids_in_order_and_forgets_replaced_versions() -> None:
    index = RecordIndex()
    index.add(1, RecordColumns([CHARGE], [0, 0], ["b", "a"], [0, 1], [1, 2]))
    assert index.ids_after(CHARGE, None, 10) == ["a", "b"]
    index.add(2, RecordColumns([CHARGE, USAGE_EVENT], [0, 1, 0, 0], ["a", "a", "c", "c"], [0, 4, 5, 6], [4, 1, 1, 2]))
    assert index.ids_after(CHARGE, "a", 10) == ["b", "c"]
    location = index.locate(CHARGE, "a")
    assert location is not None and (location.seq, location.start, location.length) == (2, 0, 4)
    location = index.locate(CHARGE, "c")  # twice in one row: the later one
    assert location is not None and (location.seq, location.start, location.length) == (2, 6, 2)
    assert index.count(CHARGE) == 3 and index.count(USAGE_EVENT) == 1


@settings(max_examples=200, deadline=None)
@given(
    first=st.sets(st.text("abcdef", min_size=1, max_size=4), max_size=60),
    later=st.lists(st.text("abcdef", min_size=1, max_size=4), max_size=60),
    starting_after=st.none() | st.text("abcdef", max_size=4),
    limit=st.integers(1, 30),
)
def test_sorted_ids_keep_order_through_inserts_and_chunk_splits(
    first: set[str], later: list[str], starting_after: str | None, limit: int
) -> None:
    ordered = SortedIds(sorted(first), chunk_ids_max=4)  # many chunks, many splits
    every = set(first)
    for document_id in later:
        if document_id not in every:
            ordered.insert(document_id)
            every.add(document_id)
    expected = sorted(i for i in every if starting_after is None or i > starting_after)
    assert len(ordered) == len(every)
    assert ordered.after(starting_after, limit) == expected[:limit]


# ----------------------------------------------------------------------------- against a model
BATCHES = st.lists(
    st.lists(
        st.builds(
            Document,
            st.sampled_from([CHARGE, USAGE_EVENT, OTHER]),
            st.text("abcd", min_size=1, max_size=3),
            BODIES,
        ),
        max_size=8,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=60, deadline=None)
@given(batches=BATCHES, starting_after=st.none() | st.text("abcd", max_size=3), limit=st.integers(1, 5))
def test_documents_read_and_list_the_same_whether_logged_or_not(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[Document]], starting_after: str | None, limit: int
) -> None:
    """Every kind answers as the documents table would: the newest body of each id; lists in id
    order after ``starting_after``; the same again after reopening."""
    db_path = tmp_path_factory.mktemp("log") / "log.db"
    model: dict[tuple[str, str], bytes] = {}
    store = SQLiteStore(db_path)
    try:
        for batch in batches:  # checked after each batch: lists between writes take in the new ids
            _write(store, *batch)
            model.update(((document.kind, document.id), document.body) for document in batch)
            _check(store, model, starting_after, limit)
    finally:
        store.close()
    reopened = SQLiteStore(db_path)
    try:
        _check(reopened, model, starting_after, limit)
    finally:
        reopened.close()


def _check(store: SQLiteStore, model: dict[tuple[str, str], bytes], starting_after: str | None, limit: int) -> None:
    for kind in (CHARGE, USAGE_EVENT, OTHER):
        of_kind = {document_id: body for (k, document_id), body in model.items() if k == kind}
        for document_id in ("a", "b", "abc", "dd"):
            assert store.read_document(kind, document_id) == of_kind.get(document_id)
        asked = ["a", "b", "c", "d", "ab", "zz"]
        assert store.read_documents(kind, asked) == {i: of_kind[i] for i in asked if i in of_kind}
        expected = sorted((i, body) for i, body in of_kind.items() if starting_after is None or i > starting_after)
        assert store.list_documents(kind, starting_after, limit) == expected[:limit]


def test_the_engines_document_cache_starts_over_rather_than_hold_more_than_its_bound(store: SQLiteStore) -> None:
    cache = DocumentCache(store, entries_max=3)
    cache.committed([DocumentBlock(OTHER, ["a", "b"], [b"1", b"2"])])
    cache.committed([DocumentBlock(OTHER, ["c", "d"], [b"3", b"4"])])  # 4 > 3: it starts over
    assert (OTHER, "c") in cache and (OTHER, "d") in cache and (OTHER, "a") not in cache
    cache.committed([DocumentBlock(OTHER, ["e"], [b"5"])])
    assert (OTHER, "e") in cache and (OTHER, "c") in cache
