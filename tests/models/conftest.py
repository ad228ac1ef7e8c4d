"""Fixtures for the model tests: a settable UTC clock and a payment world on a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from models_testkit import USD, Clock, World


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> Iterator[World]:
    """A fresh engine with the USD ledger (scale 2); the books are checked when the test ends."""
    world = World(tmp_path / "micropay.db", clock)
    world.ledger(USD, 2)
    yield world
    world.check_books()
    world.close()
