"""Fixtures for the ledger-core tests: a settable clock and engines on real stores (each test
taking ``engine`` or ``engines`` runs on a SQLite file and on a PostgreSQL database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_testkit import EUR, USD, Clock, Engines

from micropay.engine import Engine
from micropay.ledger import AccountRequest, Result


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, db_path: Path) -> Path | str:
    """Where an engine keeps the ledger: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return db_path
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def engines(database: Path | str, clock: Clock) -> Iterator[Engines]:
    opener = Engines(database, clock)
    yield opener
    opener.close_all()


@pytest.fixture
def engine(engines: Engines) -> Engine:
    """A fresh engine with ledgers USD and EUR (scale 2) and ``bank``, an unconstrained USD account."""
    engine = engines.open()
    assert engine.create_ledger(USD, 2)[0] is Result.OK
    assert engine.create_ledger(EUR, 2)[0] is Result.OK
    assert engine.create_accounts([AccountRequest("bank", USD)])[0][0] is Result.OK
    return engine
