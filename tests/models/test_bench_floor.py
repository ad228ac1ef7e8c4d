"""The floor of ``bench charges`` and ``bench metering`` (``micropay.bench.floor``): it does the
arithmetic a real run must do (so the figure is not of less work), and both benchmarks, at a
tiny scale, check their books and report their floor beside their own figure."""

from __future__ import annotations

import random
from fractions import Fraction
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micropay.bench.charges import bench_charges
from micropay.bench.floor import charges_floor, events_floor, stored_rows
from micropay.bench.metering import bench_metering
from micropay.bench.report import Reporter
from micropay.errors import InvariantViolation
from micropay.models.metering import EventRequest
from micropay.models.payments import ChargeRequest


def _figures(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    return {line["metric"]: line["value"] for line in map(orjson.loads, capsys.readouterr().out.splitlines())}


def test_charges_floor_stores_each_distinct_charge_once_and_moves_their_sum(tmp_path: Path) -> None:
    charges = [
        ChargeRequest("c1", "p1", "m1", 100),
        ChargeRequest("c2", "p2", "m1", 250),
        ChargeRequest("c1", "p1", "m1", 100),  # a replay: nothing more
        ChargeRequest("c3", "p1", "m2", 7),
    ]
    run = charges_floor(tmp_path / "floor.db", charges, fee_bps=250, batch_size=2)
    assert (run.items, run.charged) == (3, 357)
    assert stored_rows(tmp_path / "floor.db") == 3
    assert run.per_s > 0


def test_events_floor_charges_carry_fractions_to_the_price_of_the_total(tmp_path: Path) -> None:
    # 0.0004 a unit: 1000 units cost 0.4 (charged 0), 2500 cost 1.0 (charged 1), 5000 cost 2.0 (1 more).
    events = [EventRequest(f"e{i}", "p1", "calls", quantity) for i, quantity in enumerate((1000, 1500, 2500))]
    run = events_floor(tmp_path / "floor.db", events, Fraction(4, 10_000), batch_size=8190)
    assert (run.items, run.charged) == (3, 2)
    assert stored_rows(tmp_path / "floor.db") == 3


@settings(max_examples=40, deadline=None)
@given(quantities=st.lists(st.integers(1, 10_000), min_size=1, max_size=40), seed=st.integers(0, 2**32))
def test_any_split_of_usage_at_the_floor_costs_the_price_of_its_total(
    tmp_path_factory: pytest.TempPathFactory, quantities: list[int], seed: int
) -> None:
    rng = random.Random(seed)
    payers = ["p1", "p2", "p3"]
    events = [EventRequest(f"e{i}", rng.choice(payers), "calls", q) for i, q in enumerate(quantities)]
    price = Fraction(7, 3_000)
    run = events_floor(tmp_path_factory.mktemp("floor") / "floor.db", events, price, batch_size=rng.randint(1, 9))
    totals = {payer: sum(e.quantity for e in events if e.payer_id == payer) for payer in payers}
    assert run.charged == sum(int(total * price) for total in totals.values())


def test_the_floor_refuses_a_batch_over_its_limit(tmp_path: Path) -> None:
    with pytest.raises(InvariantViolation):
        charges_floor(tmp_path / "floor.db", [], fee_bps=0, batch_size=8191)


def test_bench_charges_in_process_reports_its_floor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_charges(
        Reporter("charges", as_json=True),
        charges=3000,
        payers=20,
        merchants=5,
        threads=2,
        in_flight=64,
        one_op_charges=100,
        http=False,
        directory=str(tmp_path),
    )
    figures = _figures(capsys)
    assert figures["charges_per_s"] > 0 and figures["charges_per_s_one_op_each"] > 0
    assert figures["floor_charges_per_s"] > 0
    ratio = figures["charges_per_s"] / figures["floor_charges_per_s"]
    assert figures["charges_vs_floor"] == pytest.approx(ratio, abs=0.001)
    assert not list(tmp_path.iterdir())  # the work files are gone


def test_bench_metering_in_process_reports_its_floor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_metering(
        Reporter("metering", as_json=True),
        events=5000,
        payers=30,
        batch_size=1000,
        one_by_one_seconds=0,
        http_seconds=0,
        directory=str(tmp_path),
    )
    figures = _figures(capsys)
    assert figures["events_per_s"] > 0 and figures["floor_events_per_s"] > 0
    ratio = figures["events_per_s"] / figures["floor_events_per_s"]
    assert figures["events_vs_floor"] == pytest.approx(ratio, abs=0.001)
    assert not list(tmp_path.iterdir())
