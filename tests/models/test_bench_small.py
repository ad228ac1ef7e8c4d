"""``micropay bench charges`` and ``micropay bench metering`` in process, at a tiny scale: they
run, check their books (a failed check raises), leave no files, and report their figures."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from micropay.bench.charges import bench_charges
from micropay.bench.metering import Tally, bench_metering
from micropay.bench.report import Reporter
from micropay.errors import ApiError
from micropay.models.metering import UsageEvent


def _figures(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    return {line["metric"]: line["value"] for line in map(orjson.loads, capsys.readouterr().out.splitlines())}


def test_bench_charges_in_process_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
    assert figures["charges_per_s_coalesced"] > 0 and 1 <= figures["operations_coalesced"] <= 3000
    assert figures["batches"] == 1  # 3,000 charges: one operation
    assert figures["apply_us_per_charge"] > 0 and figures["write_us_per_charge"] > 0
    assert figures["apply_us_per_charge_coalesced"] > 0
    assert not list(tmp_path.iterdir())  # the work files are gone


def test_bench_metering_in_process_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
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
    assert figures["events_per_s"] > 0 and 1 <= figures["batches"] <= 5
    assert figures["apply_us_per_event"] > 0 and figures["write_us_per_event"] > 0
    assert not list(tmp_path.iterdir())


def _event(event_id: str, status: str, quantity: int, amount: int) -> UsageEvent:
    return UsageEvent(event_id, "p", "plan", quantity, 1, "2026-11", status, amount, "", 1)


def test_the_metering_tally_counts_charged_units_and_amounts_and_declined_events() -> None:
    tally = Tally()
    tally.add([(_event("a", "charged", 3, 5), False), (_event("b", "declined", 7, 0), False)])
    tally.add([(_event("c", "charged", 2, 1), True)])
    assert (tally.refused, tally.charged, tally.declined, tally.quantity, tally.amount) == (0, 2, 1, 5, 6)


def test_the_metering_tally_counts_refused_answers() -> None:
    tally = Tally()
    tally.add([(_event("a", "charged", 3, 5), False), ApiError("plan_not_found", "no plan x")])
    assert tally.refused == 1
