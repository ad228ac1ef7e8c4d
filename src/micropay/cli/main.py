"""``micropay`` console script (typer)."""

from __future__ import annotations

from typing import Annotated

import typer

from micropay.bench.ledger import bench_ledger
from micropay.bench.report import Reporter

app = typer.Typer(help="Micropay: micropayments on one double-entry ledger.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (figures, never pass/fail).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line and figure.")]


@bench_app.command("ledger")
def bench_ledger_command(
    as_json: JsonOption = False,
    transfers: Annotated[int, typer.Option(min=1, help="Transfers to load.")] = 1_000_000,
    accounts: Annotated[int, typer.Option(min=2, help="Accounts to spread them over.")] = 10_000,
    batch_size: Annotated[int, typer.Option(min=1, max=8190, help="Transfers per submitted batch.")] = 8190,
    baseline_seconds: Annotated[float, typer.Option(min=0.1, help="Time given to the slow baseline.")] = 5.0,
) -> None:
    """Durable transfers/s through the engine vs a per-transfer SQLite ledger."""
    bench_ledger(
        Reporter("ledger", as_json=as_json),
        accounts=accounts,
        transfers=transfers,
        batch_size=batch_size,
        baseline_seconds=baseline_seconds,
    )


def main() -> None:
    app()
