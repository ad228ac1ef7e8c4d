"""What only the PostgreSQL store has: migrations shared by processes, the schema rendered from
one declaration, and several engines writing one database (the same id raced, hot accounts)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from ledger_testkit import USD, codes, open_engine, setup_accounts, totals, transfer, wallet
from pg_cluster import Cluster

from micropay.engine import BatchContext
from micropay.errors import StoreSchemaError
from micropay.ledger import Result
from micropay.store.postgres import PostgresStore
from micropay.store.schema import SCHEMA_VERSION, migration_statements


def test_the_schema_version_is_recorded_and_processes_starting_together_migrate_once(postgres_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: PostgresStore(postgres_url), range(4)))
    try:
        assert {store.schema_version() for store in stores} == {SCHEMA_VERSION}
    finally:
        for store in stores:
            store.close()
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert db.execute("SELECT count(*) FROM clock").fetchone() == (1,)


def test_a_newer_schema_version_is_refused(postgres_url: str) -> None:
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreSchemaError):
        PostgresStore(postgres_url)


def test_each_test_database_is_a_world_of_its_own(postgres_cluster: Cluster) -> None:
    first, second = postgres_cluster.database(), postgres_cluster.database()
    with open_engine(first) as engine:
        engine.create_ledger(USD, 2)
    with open_engine(second) as engine:
        assert engine.ledgers() == []
    with psycopg.connect(first) as db:
        assert db.execute("SELECT count(*) FROM ledgers").fetchone() == (1,)
        schema = db.execute("SELECT current_schema()").fetchone()
    with psycopg.connect(second) as db:
        assert db.execute("SELECT current_schema()").fetchone() != schema


def test_both_dialects_render_every_shared_table_from_one_declaration() -> None:
    def tables(dialect: str) -> set[str]:
        return {
            statement.split()[2]
            for statement in migration_statements(dialect, 0)  # type: ignore[arg-type]
            if statement.startswith("CREATE TABLE")
        }

    shared = {"meta", "ledgers", "accounts", "documents"}
    assert shared <= tables("sqlite") and shared <= tables("postgresql")
    assert "batches" in tables("sqlite") and "transfers" in tables("postgresql")


def test_the_same_transfer_id_raced_by_two_engines_moves_money_once(postgres_url: str) -> None:
    engines = [open_engine(postgres_url) for _ in range(2)]
    try:
        engines[0].create_ledger(USD, 2)
        setup_accounts(engines[0], "a", "b", "c")
        for round_ in range(30):
            start = threading.Barrier(2)

            def race(n: int, round_: int = round_, start: threading.Barrier = start) -> Result:
                credit = "b" if n == 0 else "c"  # different bodies: one wins, the other differs
                start.wait()
                return codes(engines[n].create_transfers([transfer(f"t{round_}", "a", credit, 1)]))[0]

            with ThreadPoolExecutor(2) as pool:
                answers = sorted(pool.map(race, range(2)))
            assert answers == sorted([Result.OK, Result.EXISTS_WITH_DIFFERENT_FIELDS]), answers
        assert totals(engines[1].account("a")) == (30, 0, 0, 0)
        assert totals(engines[0].account("b"))[1] + totals(engines[0].account("c"))[1] == 30
        engines[0].verify()
    finally:
        for engine in engines:
            engine.close()


def test_engines_draining_one_hot_wallet_never_overdraw_it(postgres_url: str) -> None:
    engines = [open_engine(postgres_url, batch_window_s=0.001) for _ in range(3)]
    try:
        engines[0].create_ledger(USD, 2)
        setup_accounts(engines[0], "bank", wallet("w"), "shop")
        assert codes(engines[0].create_transfers([transfer("fund", "bank", "w", 100)])) == [Result.OK]

        def spend(n: int) -> list[Result]:
            engine = engines[n % 3]
            return [codes(engine.create_transfers([transfer(f"s{n}-{i}", "w", "shop", 1)]))[0] for i in range(10)]

        with ThreadPoolExecutor(24) as pool:
            answers = [code for batch in pool.map(spend, range(24)) for code in batch]
        assert answers.count(Result.OK) == 100 and answers.count(Result.EXCEEDS_CREDITS) == 140
        assert totals(engines[2].account("w")) == (100, 100, 0, 0)
    finally:
        for engine in engines:
            engine.close()


def test_a_record_created_unread_after_another_engine_made_it_conflicts_and_runs_again(postgres_url: str) -> None:
    """``create_document`` is insert-only on a shared database: an operation that decided from
    other evidence that its record is new (without reading it) cannot overwrite the record
    another writer made first; its batch runs again and finds that record."""
    engines = [open_engine(postgres_url) for _ in range(2)]
    try:
        engines[0].call(lambda ctx: ctx.create_document("test", "x", b"first"))
        runs: list[bytes | None] = []

        def create_unless_seen(ctx: BatchContext) -> bytes:
            if not runs:  # the first run decides, without reading, that the record is new
                runs.append(None)
                ctx.create_document("test", "x", b"second")
                return b"second"
            body = ctx.get_document("test", "x")
            runs.append(body)
            assert body is not None
            return body

        retries = engines[1].stats.retries
        assert engines[1].call(create_unless_seen) == b"first"
        assert runs == [None, b"first"] and engines[1].stats.retries > retries
        assert engines[0].call(lambda ctx: ctx.get_document("test", "x")) == b"first"
    finally:
        for engine in engines:
            engine.close()
