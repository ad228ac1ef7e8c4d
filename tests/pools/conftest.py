"""Fixtures for the pool tests: a settable UTC clock and a pool world on a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pools_testkit import Clock, PoolWorld


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> Iterator[PoolWorld]:
    """A fresh engine with the USD ledger (scale 2); the books are checked when the test ends."""
    world = PoolWorld(tmp_path / "micropay.db", clock)
    world.ledger()
    yield world
    world.check_books()
    world.close()


@pytest.fixture
def trio(world: PoolWorld) -> PoolWorld:
    """Publishers pubA, pubB, pubC (each with site-X and art-X) and pool1 (price 1000, 70/15/5/10)."""
    for publisher_id in ("pubA", "pubB", "pubC"):
        world.publisher(publisher_id)
    world.pool()
    return world
