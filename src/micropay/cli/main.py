"""``micropay`` console script (typer)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from micropay.bench.ledger import bench_ledger
from micropay.bench.report import Reporter
from micropay.engine import Engine
from micropay.errors import ApiError, StoreError, StoreLockedError
from micropay.store import DEFAULT_DB_URL, open_store

app = typer.Typer(help="Micropay: micropayments on one double-entry ledger.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (figures, never pass/fail).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(keys_app, name="keys")

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line and figure.")]
DbOption = Annotated[
    str,
    typer.Option("--db", envvar="MICROPAY_DB", help="Database URL (else $MICROPAY_DB).", show_default=True),
]


class RoleChoice(enum.StrEnum):
    admin = "admin"
    merchant = "merchant"
    payer = "payer"
    publisher = "publisher"


def _open_engine(db: str, *, purpose: str, batch_window_s: float | None = None) -> Engine:
    """Open the store and start an engine on it, or exit with a clear message."""
    try:
        store = open_store(db)
    except StoreLockedError:
        typer.echo(
            f"error: the database {db} is locked by a running Micropay server (or another engine).\n"
            f"Stop that server first, or {purpose}",
            err=True,
        )
        raise typer.Exit(1) from None
    except StoreError as error:
        typer.echo(f"error: cannot open the database {db}: {error}", err=True)
        raise typer.Exit(1) from None
    try:
        return Engine(store) if batch_window_s is None else Engine(store, batch_window_s=batch_window_s)
    except BaseException:
        store.close()
        raise


@app.command("serve")
def serve_command(
    db: DbOption = DEFAULT_DB_URL,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8080,
    admin_key_file: Annotated[
        Path | None,
        typer.Option(help="File holding an admin key; created (mode 0600) with a new key if missing."),
    ] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
    front_processes: Annotated[
        int,
        typer.Option(
            min=0,
            max=8,
            help="Processes that own the client connections and send this one only single transfers"
            " and charges (0: this process serves everything). Uses another core; not with --access-log.",
        ),
    ] = 0,
) -> None:
    """Serve the HTTP API (uvicorn with uvloop and httptools) on one database."""
    from micropay.cli.serve import SERVE_BATCH_WINDOW_S, FrontLost, FrontsUnavailable, run_server

    engine = _open_engine(db, purpose="point --db at another database.", batch_window_s=SERVE_BATCH_WINDOW_S)
    try:
        run_server(
            engine,
            host=host,
            port=port,
            admin_key_file=admin_key_file,
            access_log=access_log,
            front_processes=front_processes,
        )
    except FrontsUnavailable as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    except FrontLost as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.close()


@keys_app.command("create")
def keys_create_command(
    role: Annotated[RoleChoice, typer.Option(help="What the key may do.", case_sensitive=False)],
    subject: Annotated[
        str | None, typer.Option(help="The merchant, payer or publisher id the key acts as (not for admin).")
    ] = None,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Create an API key and print it once (the last line is the key alone).

    Opens the database itself, so it runs while no server holds it; with a server running,
    create keys through POST /v1/api_keys instead.
    """
    from micropay.api.keys import issue_key

    engine = _open_engine(db, purpose="create the key through the running server: POST /v1/api_keys (admin key).")
    try:
        record, key = issue_key(engine, role.value, subject)
    except ApiError as error:
        message = f"--subject is required for a {role.value} key." if error.param == "subject_id" else error.message
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None
    finally:
        engine.close()
    who = f" for {record.subject_id}" if record.subject_id else ""
    typer.echo(f"Created {record.role} API key {record.id}{who}. It is shown only now; keep it secret:")
    typer.echo(key)


@bench_app.command("ledger")
def bench_ledger_command(
    as_json: JsonOption = False,
    transfers: Annotated[int, typer.Option(min=1, help="Transfers to load.")] = 1_000_000,
    accounts: Annotated[int, typer.Option(min=2, help="Accounts to spread them over.")] = 10_000,
    batch_size: Annotated[int, typer.Option(min=1, max=8190, help="Transfers per submitted batch.")] = 8190,
    baseline_seconds: Annotated[float, typer.Option(min=0.1, help="Time given to the slow baseline.")] = 5.0,
    db: Annotated[
        str | None,
        typer.Option("--db", help="A postgresql:// URL to load instead of a fresh temporary SQLite file."),
    ] = None,
    writers: Annotated[int, typer.Option(min=1, max=16, help="Engines writing at once (PostgreSQL only).")] = 1,
) -> None:
    """Durable transfers/s through the engine vs a per-transfer SQLite ledger (or on PostgreSQL)."""
    bench_ledger(
        Reporter("ledger", as_json=as_json),
        accounts=accounts,
        transfers=transfers,
        batch_size=batch_size,
        baseline_seconds=baseline_seconds,
        db=db,
        writers=writers,
    )


@bench_app.command("http")
def bench_http_command(
    as_json: JsonOption = False,
    connections: Annotated[int, typer.Option(min=1, max=512, help="Concurrent single-transfer clients.")] = 64,
    duration_s: Annotated[float, typer.Option(min=1, max=120, help="Seconds each load phase runs.")] = 10.0,
    batch_connections: Annotated[int, typer.Option(min=1, max=16, help="Concurrent batch clients.")] = 2,
    accounts: Annotated[int, typer.Option(min=2, help="Accounts the transfers move between.")] = 1000,
    db: Annotated[
        str | None, typer.Option("--db", help="A postgresql:// URL the servers share (default: a fresh SQLite file).")
    ] = None,
    servers: Annotated[int, typer.Option(min=1, max=8, help="Server processes (several need PostgreSQL).")] = 1,
    front_processes: Annotated[
        int, typer.Option(min=0, max=8, help="Front processes of each server (`micropay serve --front-processes`).")
    ] = 1,
) -> None:
    """Transfers over HTTP against real servers: single (latency) and batch (throughput)."""
    from micropay.bench.http import bench_http

    bench_http(
        Reporter("http", as_json=as_json),
        connections=connections,
        duration_s=duration_s,
        batch_connections=batch_connections,
        accounts=accounts,
        db=db,
        servers=servers,
        front_processes=front_processes,
    )


@bench_app.command("charges")
def bench_charges_command(
    as_json: JsonOption = False,
    charges: Annotated[int, typer.Option(min=1, help="Charges to make in process.")] = 200_000,
    threads: Annotated[int, typer.Option(min=1, max=64, help="Threads submitting them.")] = 8,
    payers: Annotated[int, typer.Option(min=1, help="Payers charged (at random).")] = 1000,
    merchants: Annotated[int, typer.Option(min=1, help="Merchants paid (at random).")] = 100,
    one_op_charges: Annotated[int, typer.Option(min=0, help="Further charges made one operation each.")] = 50_000,
    coalesced_charges: Annotated[
        int | None, typer.Option(min=0, help="Single charges through the batcher (default: as many as --charges).")
    ] = None,
    http: Annotated[bool, typer.Option(help="Also charge over HTTP against a real server.")] = True,
    connections: Annotated[int, typer.Option(min=1, max=512, help="Concurrent HTTP clients.")] = 64,
    duration_s: Annotated[float, typer.Option(min=1, max=120, help="Seconds the HTTP load runs.")] = 10.0,
    front_processes: Annotated[
        int, typer.Option(min=0, max=8, help="Front processes of the server (`micropay serve --front-processes`).")
    ] = 1,
) -> None:
    """Durable charges/s: in process (in batches; single charges from many threads) and over HTTP."""
    from micropay.bench.charges import bench_charges

    bench_charges(
        Reporter("charges", as_json=as_json),
        charges=charges,
        threads=threads,
        payers=payers,
        merchants=merchants,
        one_op_charges=one_op_charges,
        coalesced_charges=coalesced_charges,
        http=http,
        connections=connections,
        duration_s=duration_s,
        front_processes=front_processes,
    )


@bench_app.command("metering")
def bench_metering_command(
    as_json: JsonOption = False,
    events: Annotated[int, typer.Option(min=1, help="Usage events to rate in process.")] = 500_000,
    payers: Annotated[int, typer.Option(min=1, help="Payers the events are spread over.")] = 1000,
    batch_size: Annotated[int, typer.Option(min=1, max=8190, help="Events per submitted batch.")] = 8190,
    one_by_one_seconds: Annotated[
        float, typer.Option(min=0, help="Time given to the one-by-one path (0: skip).")
    ] = 3.0,
    http_seconds: Annotated[float, typer.Option(min=0, max=120, help="Seconds of HTTP batches (0: skip).")] = 10.0,
    http_connections: Annotated[int, typer.Option(min=1, max=16, help="Concurrent HTTP batch clients.")] = 2,
) -> None:
    """Usage events rated and charged per second: in process (batches) and over HTTP (batches)."""
    from micropay.bench.metering import bench_metering

    bench_metering(
        Reporter("metering", as_json=as_json),
        events=events,
        payers=payers,
        batch_size=batch_size,
        one_by_one_seconds=one_by_one_seconds,
        http_seconds=http_seconds,
        http_connections=http_connections,
    )


@bench_app.command("pools")
def bench_pools_command(
    as_json: JsonOption = False,
    members: Annotated[int, typer.Option(min=1, help="Members who joined the pool this month.")] = 10_000,
    publishers: Annotated[int, typer.Option(min=1, help="Publishers (each with a site and 10 articles).")] = 1_000,
    reads: Annotated[int, typer.Option(min=0, help="Reads in the month.")] = 1_000_000,
    runs: Annotated[int, typer.Option(min=1, max=20, help="Distributions timed (on copies); median reported.")] = 3,
) -> None:
    """A month of a collaborative pool distributed: time of the real, durable distribution."""
    from micropay.bench.pools import bench_pools

    bench_pools(Reporter("pools", as_json=as_json), members=members, publishers=publishers, reads=reads, runs=runs)


def main() -> None:
    app()
