"""Fixtures for the payment API tests: the engine runs on a settable clock, and the app's
settler ticks only when a test calls it (``payments_kit.tick``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from payments_kit import Clock, Payments
from starlette.testclient import TestClient

from micropay.api import Settings
from micropay.engine import Engine
from micropay.store import open_store


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def engine(db_url: str, clock: Clock) -> Iterator[Engine]:
    # The only engine on its database (also on PostgreSQL): the settler needs no lag.
    with Engine(open_store(db_url), clock_ns=clock, settle_lag_s=0) as engine:
        yield engine


@pytest.fixture
def settings() -> Settings:
    """No background settler thread: tests tick it themselves."""
    return Settings(settle_interval_s=None)


@pytest.fixture
def pay(admin: TestClient, make_key: Callable[..., str]) -> Payments:
    """The USD ledger (scale 2), and shorthands for setting up payers, merchants and charges."""
    return Payments(admin, make_key)
