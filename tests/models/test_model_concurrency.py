"""Limits hold under concurrency: many threads calling ``engine.call`` at once, batched together
(a batch window) or one by one (no window)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from models_testkit import USD, Clock, World

from micropay.engine import BatchContext
from micropay.errors import ApiError
from micropay.models import payments, promo
from micropay.models.payments import ChargeRequest
from micropay.models.records import SpendCap

pytestmark = pytest.mark.slow

WINDOWS = [0.0, 0.005]
"""No batch window (operations mostly one per batch) and 5 ms (many operations in one batch)."""


@pytest.fixture(params=WINDOWS, ids=["no-window", "5ms-window"])
def busy_world(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[World]:
    world = World(tmp_path / "micropay.db", clock, batch_window_s=request.param)
    world.ledger(USD, 2)
    yield world
    world.check_books()
    world.close()


def race(world: World, operations: list[Callable[[BatchContext], Any]]) -> list[Any]:
    """Run every operation from its own thread, all released at once; answer results or error codes."""
    start = threading.Barrier(len(operations))

    def attempt(operation: Callable[[BatchContext], Any]) -> Any:
        start.wait()
        try:
            return world.engine.call(operation)
        except ApiError as error:
            return error.code

    batches_before = world.engine.stats.batches
    with ThreadPoolExecutor(max_workers=len(operations)) as pool:
        results = list(pool.map(attempt, operations))
    if world.engine_options.get("batch_window_s"):
        assert world.engine.stats.batches - batches_before < len(operations)  # they did share batches
    return results


def _outcomes(results: list[Any]) -> Counter[str]:
    return Counter(result if isinstance(result, str) else "ok" for result in results)


def test_a_wallet_funded_for_n_charges_pays_exactly_n_of_50_concurrent_ones(busy_world: World) -> None:
    world = busy_world
    world.payer("p1")
    world.merchant("m1", bps=1_000)
    world.fund("p1", 17 * 30)

    results = race(world, [payments.charge(ChargeRequest(f"c{i}", "p1", "m1", 30)) for i in range(50)])

    assert _outcomes(results) == Counter({"ok": 17, "insufficient_funds": 33})
    assert world.wallet("p1") == 0
    assert (world.earnings("m1"), world.fees()) == (17 * 27, 17 * 3)


def test_a_credit_limit_admits_exactly_the_charges_it_covers(busy_world: World) -> None:
    world = busy_world
    world.payer("p1", "hybrid", credit_limit=12 * 25)
    world.merchant("m1")
    world.fund("p1", 3 * 25)

    results = race(world, [payments.charge(ChargeRequest(f"c{i}", "p1", "m1", 25)) for i in range(50)])

    assert _outcomes(results) == Counter({"ok": 15, "credit_limit_exceeded": 35})
    assert (world.wallet("p1"), world.tab("p1")) == (0, -300)


def test_a_daily_cap_admits_exactly_ten_of_50_concurrent_charges(busy_world: World) -> None:
    world = busy_world
    world.payer("p1", caps=(SpendCap("day", 10 * 40),))
    world.merchant("m1")
    world.fund("p1", 100_000)

    results = race(world, [payments.charge(ChargeRequest(f"c{i}", "p1", "m1", 40)) for i in range(50)])

    assert _outcomes(results) == Counter({"ok": 10, "spend_cap_exceeded": 40})
    assert world.read_cap_usage("p1").amount("2026-03-10") == 400
    assert world.wallet("p1") == 100_000 - 400


def test_one_voucher_redeemed_by_20_payers_at_once_credits_exactly_one(busy_world: World) -> None:
    world = busy_world
    for i in range(20):
        world.payer(f"p{i}")
    world.voucher("ONE-ONLY", 500, expires_in_s=3_600)

    results = race(world, [promo.redeem_voucher(f"p{i}", "ONE-ONLY") for i in range(20)])

    assert _outcomes(results) == Counter({"ok": 1, "voucher_already_redeemed": 19})
    (winner,) = [result[0].redeemed_by for result in results if not isinstance(result, str)]
    assert [world.promo(f"p{i}") for i in range(20)] == [500 if f"p{i}" == winner else 0 for i in range(20)]


def test_one_charge_id_sent_50_times_at_once_moves_money_once(busy_world: World) -> None:
    world = busy_world
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 1_000)

    results = race(world, [payments.charge(ChargeRequest("c1", "p1", "m1", 30)) for _ in range(50)])

    assert sorted(replayed for _, replayed in results) == [False] + [True] * 49
    assert len({record for record, _ in results}) == 1
    assert world.wallet("p1") == 970
