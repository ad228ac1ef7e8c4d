"""Fixtures for the metering tests: the model tests' settable clock and payment world, and a
metering helper over it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))

from metering_testkit import Meter
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


@pytest.fixture
def meter(world: World) -> Meter:
    return Meter(world)
