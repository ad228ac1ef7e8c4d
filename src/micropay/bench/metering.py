"""``micropay bench metering``: usage events rated and charged per second, durably.

(a) in process: events submitted to the engine in batches of up to 8190 (``record_events``:
    each event checked and rated on its own, in order; each payer, plan and month of a batch
    charged once), a few batches kept queued so the engine never waits;
(b) for comparison, the one-by-one path: one operation and one charge per event;
(c) over HTTP: ``POST /v1/usage_events/batch`` with 8190 events per request, from a client in
    this process against a real ``micropay serve`` process on a database set up the same way.

The workload: ``payers`` prepay payers (funded), one merchant taking a 1 % fee, three plans (per
unit at 0.0004 of a cent, graduated with a flat fee, packages of 100 rounding up); each event is
1 to 100 units for a random payer and plan, with a random 16-hex-digit id. After each run the
books are checked: the ledger invariants hold, for every payer and plan the month's usage costs
floor(price(its total quantity)), and (after the batches) the usage adds up to the units and
amounts the answers charged.
"""

from __future__ import annotations

import http.client
import random
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, eq, itemgetter
from pathlib import Path
from typing import Any, cast

import orjson

from micropay.bench.charges import engine_thread_cpu_s
from micropay.bench.http import free_port, machine_cpu_ticks, start_server, steal_pct, stop_server
from micropay.bench.report import Reporter
from micropay.engine import Engine
from micropay.errors import ApiError, MicropayError
from micropay.ledger.limits import BATCH_SIZE_MAX
from micropay.models import metering, metering_batch, payments
from micropay.models.metering import EventRequest, EventResult, PlanRequest, UsageEvent
from micropay.models.payments import MerchantRequest, PayerRequest, TopupRequest
from micropay.models.rules import period_key
from micropay.runtime import serving_gc
from micropay.settlement.rails import Rails
from micropay.store import SQLiteStore

LEDGER = "USD"
MERCHANT = "bench-merchant"
PLANS: dict[str, dict[str, object]] = {
    "calls": {"model": "per_unit", "unit_price": "0.0004"},
    "storage": {
        "model": "graduated",
        "tiers": [{"up_to": 1000, "unit_price": "0.05", "flat": "25"}, {"up_to": None, "unit_price": "0.01"}],
    },
    "bundles": {"model": "package", "package_size": 100, "package_price": "0.7"},
}
FUNDS = 10**10
"""Each payer's wallet, in cents: no event of the benchmark is declined for want of funds."""
IN_FLIGHT_MAX = 4
"""Batches kept queued in front of the engine."""
QUANTITY_MAX = 100


def payer_id(index: int) -> str:
    return f"payer-{index:06d}"


def prepare(engine: Engine, payers: int) -> None:
    """The merchant, the funded payers and the plans (set-up, not measured)."""
    rails = Rails()
    engine.create_ledger(LEDGER, 2)
    engine.call(payments.create_merchant(MerchantRequest(MERCHANT, LEDGER, fee_percent_bps=100), rails))
    for start in range(0, payers, 4096):
        futures: list[Future[Any]] = []
        for index in range(start, min(payers, start + 4096)):
            payer = payer_id(index)
            futures.append(engine.submit(payments.create_payer(PayerRequest(payer, LEDGER, "prepay"), rails)))
            futures.append(engine.submit(payments.topup(TopupRequest(f"fund-{payer}", payer, FUNDS, "card"), rails)))
        for future in futures:
            future.result()
    for plan_id, pricing in PLANS.items():
        engine.call(metering.create_plan(PlanRequest(plan_id, MERCHANT, plan_id, dict(pricing))))


def make_events(count: int, payers: int, rng: random.Random) -> list[EventRequest]:
    plans = list(PLANS)
    return [
        EventRequest(
            f"{rng.getrandbits(64):016x}",
            payer_id(rng.randrange(payers)),
            plans[rng.randrange(len(plans))],
            rng.randrange(1, QUANTITY_MAX + 1),
        )
        for _ in range(count)
    ]


@dataclass(slots=True)
class Tally:
    """What a run's answers said, in totals: events refused, charged and declined, and the
    quantity and amount charged (made by C-level passes, so that counting a batch's answers
    holds the interpreter lock for a fraction of a millisecond, and the answers can go)."""

    refused: int = 0
    charged: int = 0
    declined: int = 0
    quantity: int = 0
    amount: int = 0

    def add(self, results: Sequence[EventResult]) -> None:
        if set(map(type, results)) != {tuple}:  # some refused: the run fails, the rest need not be counted
            self.refused += sum(map(isinstance, results, repeat(ApiError)))
            return
        events = list(map(itemgetter(0), cast("Sequence[tuple[UsageEvent, bool]]", results)))
        statuses = list(map(attrgetter("status"), events))
        count = statuses.count("charged")
        self.charged += count
        self.declined += len(events) - count
        quantities: Iterable[int] = map(attrgetter("quantity"), events)
        if count < len(events):
            quantities = compress(quantities, map(eq, statuses, repeat("charged")))
        self.quantity += sum(quantities)
        self.amount += sum(map(attrgetter("amount"), events))  # a declined event's is 0


def check_books(engine: Engine, tally: Tally | None = None) -> int:
    """The ledger invariants hold, and every payer's usage of every plan this month costs
    exactly floor(price(quantity)) (and, given a tally of every event of the month, the usage
    adds up to the quantity and amount its events were charged). Answers the number of usage
    records checked."""
    engine.verify()
    month = period_key("month", engine.now_ns())
    checked = quantity = amount = 0
    for plan_id in PLANS:
        plan_body = engine.document(metering.PLAN, plan_id)
        if plan_body is None:
            raise MicropayError(f"plan {plan_id} is missing")
        rates = metering.decode_plan(plan_body).rates()
        for document_id, body in engine.store.list_documents(
            metering.USAGE, metering.usage_prefix(plan_id, month), 10**7
        ):
            if not document_id.startswith(metering.usage_prefix(plan_id, month)):
                break
            usage = metering.decode_usage(body)
            if usage.amount != rates.price_floor(usage.quantity):
                raise MicropayError(f"usage {document_id}: {usage.amount} is not the price of {usage.quantity}")
            quantity += usage.quantity
            amount += usage.amount
            checked += 1
    if tally is not None and (quantity, amount) != (tally.quantity, tally.amount):
        raise MicropayError(
            f"usage records add up to {quantity:,} units and {amount:,} cents; "
            f"the answers charged {tally.quantity:,} units and {tally.amount:,} cents"
        )
    return checked


def run_batches(engine: Engine, events: Sequence[EventRequest], batch_size: int) -> tuple[float, Tally]:
    """Submit ``events`` in batches (a few queued at once); seconds until all are durable, and
    the tally of the answers.

    Each batch's answers are counted as they come and let go, as a client would. Kept for a
    tally after the run, 300,000 of them made the collector scan them again and again and the
    process fault in fresh memory for them: about a tenth of the run's time, measured."""
    tally = Tally()
    in_flight: deque[Future[list[EventResult]]] = deque()
    with serving_gc():
        started = time.perf_counter()
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            in_flight.append(engine.submit(metering_batch.record_events(batch), len(batch)))
            if len(in_flight) >= IN_FLIGHT_MAX:
                tally.add(in_flight.popleft().result())
        while in_flight:
            tally.add(in_flight.popleft().result())
        elapsed = time.perf_counter() - started
    return elapsed, tally


def run_one_by_one(engine: Engine, events: Sequence[EventRequest], seconds_max: float) -> tuple[int, float]:
    """The reference path: one operation (and charge) per event, queued a batch's worth at a
    time, for at most ``seconds_max``. Answers events done and seconds taken."""
    done = 0
    started = time.perf_counter()
    for start in range(0, len(events), BATCH_SIZE_MAX):
        futures = [engine.submit(metering.record_event(event)) for event in events[start : start + BATCH_SIZE_MAX]]
        for future in futures:
            future.result()
        done += len(futures)
        if time.perf_counter() - started >= seconds_max:
            break
    return done, time.perf_counter() - started


# ----------------------------------------------------------------- over HTTP
def _event_json(event: EventRequest) -> dict[str, object]:
    return {"id": event.id, "payer_id": event.payer_id, "plan_id": event.plan_id, "quantity": event.quantity}


@dataclass(slots=True)
class _Client:
    events: int = 0
    refused: int = 0
    latencies_s: list[float] = field(default_factory=list)
    error: str = ""


def _client(port: int, key: str, bodies: deque[bytes], deadline: float, out: _Client) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        while time.perf_counter() < deadline:
            try:
                body = bodies.popleft()
            except IndexError:
                return
            started = time.perf_counter()
            connection.request("POST", "/v1/usage_events/batch", body, headers)
            response = connection.getresponse()
            answer = response.read()
            out.latencies_s.append(time.perf_counter() - started)
            if response.status != 200:
                out.error = f"batch answered {response.status}: {answer[:300]!r}"
                return
            for result in orjson.loads(answer)["results"]:
                if result["status"] is None:
                    out.refused += 1
                else:
                    out.events += 1
    finally:
        connection.close()


def run_http(
    directory: Path, payers: int, rng: random.Random, duration_s: float, connections: int, batch_size: int
) -> tuple[int, float, list[float]]:
    """Set up a database, serve it, and post batches for ``duration_s``: events done, seconds
    taken and request latencies."""
    with Engine(SQLiteStore(directory / "bench.db")) as engine:
        prepare(engine, payers)
    port = free_port()
    server, key = start_server(directory, port)
    try:
        # Enough distinct bodies for the run, made before it (the client shares the machine).
        wanted = max(8, int(duration_s * 40))
        bodies: deque[bytes] = deque(
            orjson.dumps({"events": [_event_json(event) for event in make_events(batch_size, payers, rng)]})
            for _ in range(wanted)
        )
        clients = [_Client() for _ in range(connections)]
        started = time.perf_counter()
        deadline = started + duration_s
        threads = [
            threading.Thread(target=_client, args=(port, key, bodies, deadline, client), daemon=True)
            for client in clients
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        for client in clients:
            if client.error:
                raise MicropayError(client.error)
            if client.refused:
                raise MicropayError(f"{client.refused} benchmark events were refused over HTTP")
        latencies = sorted(latency for client in clients for latency in client.latencies_s)
        return sum(client.events for client in clients), elapsed, latencies
    finally:
        stop_server(server)
        with Engine(SQLiteStore(directory / "bench.db")) as engine:
            check_books(engine)


def bench_metering(
    report: Reporter,
    *,
    events: int = 500_000,
    payers: int = 1000,
    batch_size: int = BATCH_SIZE_MAX,
    one_by_one_seconds: float = 3.0,
    http_seconds: float = 10.0,
    http_connections: int = 2,
    seed: int = 42,
    directory: str | None = None,
) -> None:
    rng = random.Random(seed)
    report.note(
        f"workload: {events:,} usage events (1-{QUANTITY_MAX} units) over {payers:,} prepay payers and "
        f"{len(PLANS)} plans, batches of {batch_size}"
    )
    with tempfile.TemporaryDirectory(dir=directory, prefix="micropay-bench-metering-") as tmp:
        with Engine(SQLiteStore(Path(tmp) / "batched.db"), batch_window_s=0) as engine:
            prepare(engine, payers)
            workload = make_events(events, payers, rng)
            before = (engine.stats.batches, engine.stats.apply_s, engine.stats.write_s)
            engine_cpu_s, ticks = engine_thread_cpu_s(), machine_cpu_ticks()
            elapsed, tally = run_batches(engine, workload, batch_size)
            engine_cpu_s, steal = engine_thread_cpu_s() - engine_cpu_s, steal_pct(ticks, machine_cpu_ticks())
            batches = engine.stats.batches - before[0]
            apply_s, write_s = engine.stats.apply_s - before[1], engine.stats.write_s - before[2]
            if tally.refused:
                raise MicropayError(f"{tally.refused} benchmark events were refused")
            checked = check_books(engine, tally)
            report.figure("events_per_s", events / elapsed, "1/s")
            report.figure("elapsed_s", elapsed, "s")
            report.figure("batches", batches, "1")
            report.figure("apply_us_per_event", apply_s / events * 1e6, "us")
            report.figure("write_us_per_event", write_s / events * 1e6, "us")
            report.figure("engine_cpu_us_per_event", engine_cpu_s / events * 1e6, "us")
            if steal is not None:
                report.figure("cpu_steal_pct", steal, "%")
            report.note(
                f"{tally.charged:,} charged, {tally.declined:,} declined; "
                f"{checked:,} payer-plan usages add up to floor(price(total))"
            )
            if one_by_one_seconds > 0:
                reference = make_events(min(events, 200_000), payers, rng)
                done, seconds = run_one_by_one(engine, reference, one_by_one_seconds)
                check_books(engine)
                report.figure("one_by_one_events_per_s", done / seconds, "1/s")
        if http_seconds > 0:
            http_dir = Path(tmp) / "http"
            http_dir.mkdir()
            done, seconds, latencies = run_http(http_dir, payers, rng, http_seconds, http_connections, batch_size)
            report.figure("http_events_per_s", done / seconds, "1/s")
            if latencies:
                report.figure("http_batch_p50_ms", statistics.median(latencies) * 1000, "ms")
