"""The calibration server of ``micropay bench http``: a bare protocol answering a constant, and
the load generator's single mode measured against it (a tiny, short run)."""

from __future__ import annotations

from micropay.bench.http import run_baseline


def test_the_baseline_answers_every_request_of_the_load_generator() -> None:
    summary = run_baseline(connections=4, duration_s=1.0)
    requests = int(str(summary["requests"]))
    assert requests > 0
    assert summary["statuses"] == {"201": requests}
    assert summary["transfers_ok"] == requests and summary["connection_errors"] == 0
