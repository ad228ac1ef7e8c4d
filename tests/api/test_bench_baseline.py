"""The calibration of ``micropay bench http``: a bare protocol answering a constant, with the
load generator's single mode measured against it (a tiny, short run), and the machine's CPU
steal read from /proc/stat."""

from __future__ import annotations

from pathlib import Path

from micropay.bench.http import machine_cpu_ticks, parse_cpu_line, run_baseline, steal_pct


def test_the_baseline_answers_every_request_of_the_load_generator() -> None:
    summary = run_baseline(connections=4, duration_s=1.0)
    requests = int(str(summary["requests"]))
    assert requests > 0
    assert summary["statuses"] == {"201": requests}
    assert summary["transfers_ok"] == requests and summary["connection_errors"] == 0


def test_the_first_line_of_proc_stat_reads_as_all_ticks_and_stolen_ticks() -> None:
    line = "cpu  4705 150 1120 16250 520 0 30 212 40 0\n"
    assert parse_cpu_line(line) == (4705 + 150 + 1120 + 16250 + 520 + 0 + 30 + 212, 212)
    assert parse_cpu_line("cpu0 1 2 3 4 5 6 7 8") is None  # one core's line, not the machine's
    assert parse_cpu_line("cpu 1 2 3") is None
    assert parse_cpu_line("cpu 1 2 3 4 5 6 7 x") is None


def test_steal_is_the_stolen_share_of_the_ticks_between_two_readings() -> None:
    assert steal_pct((1000, 10), (1400, 110)) == 25.0
    assert steal_pct((1000, 10), (1000, 10)) is None  # no time passed
    assert steal_pct(None, (1400, 110)) is None


def test_this_machine_reads_its_cpu_ticks_where_proc_stat_exists() -> None:
    first = machine_cpu_ticks()
    if not Path("/proc/stat").exists():
        assert first is None
        return
    second = machine_cpu_ticks()
    assert first is not None and second is not None
    assert 0 <= first[1] <= first[0] <= second[0] and first[1] <= second[1]
