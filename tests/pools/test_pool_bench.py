"""``micropay bench pools`` at a tiny scale: it runs, checks its books, and reports its figures."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from micropay.bench.pools import bench_pools, make_reads
from micropay.bench.report import Reporter


def test_make_reads_makes_exactly_that_many_grouped_by_member() -> None:
    reads = make_reads(members=7, publishers=3, reads=100, seed=1)
    assert len(reads) == 100 and len({read.id for read in reads}) == 100
    payers = [read.payer_id for read in reads]
    assert payers == sorted(payers, key=lambda payer: int(payer.split("-")[1]))
    assert len(set(payers)) == 7


def test_bench_pools_small(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench_pools(Reporter("pools", as_json=True), members=12, publishers=4, reads=200, runs=2, directory=str(tmp_path))
    figures = {line["metric"]: line["value"] for line in map(orjson.loads, capsys.readouterr().out.splitlines())}
    assert figures["distribution_s"] > 0 and figures["members_paid"] == 12
    assert figures["total"] == 12 * 999 and figures["earnings_parts"] > 0
    assert not list(tmp_path.iterdir())  # the work files are gone
