"""``micropay bench charges``: durable charges per second.

In process: one engine on a fresh SQLite file (WAL, synchronous=FULL). First the charges in
batches, as ``POST /v1/charges/batch`` makes them: ``charge_many`` operations of up to 2,000
charges, a few queued at once (the headline ``charges_per_s``, as ``bench metering`` rates its
events in batches). Then concurrent single charges: ``threads`` threads each submitting its
share one charge at a time and keeping up to ``in_flight`` unanswered, through the charge
batcher, which coalesces them into ``charge_many`` operations (``charges_per_s_coalesced``), and
one engine operation per charge (``charges_per_s_one_op_each``). Every charge must succeed, the
ledger must verify, and the money must add up.

Over HTTP: a real ``micropay serve`` process, ``connections`` keep-alive clients each sending
single ``POST /v1/charges`` for ``duration_s`` (``http_charges_per_s``, p50/p99 latency), then
two clients sending ``POST /v1/charges/batch`` of 1000 charges (``http_batch_charges_per_s``).

Where the time goes is reported from the engine's counters for each in-process part:
``apply_us_per_charge`` (business rules and ledger, in memory, one thread),
``write_us_per_charge`` (the store) and ``engine_cpu_us_per_charge`` (the engine thread's CPU
time); the coalesced part's figures end in ``_coalesced``.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson

from micropay.bench.http import (
    _call,
    free_port,
    front_arguments,
    machine_cpu_ticks,
    start_server,
    steal_pct,
    stop_server,
)
from micropay.bench.report import Reporter
from micropay.engine import Engine
from micropay.errors import MicropayError
from micropay.models import chart, payments
from micropay.models.charge_batcher import ChargeBatcher
from micropay.models.payments import (
    CHARGES_PER_OPERATION_MAX,
    ChargeRequest,
    ChargeResult,
    MerchantRequest,
    Outcome,
    PayerRequest,
    TopupRequest,
)
from micropay.models.records import Charge
from micropay.runtime import serving_gc
from micropay.settlement.rails import Rails
from micropay.store import SQLiteStore

LEDGER = "USD"
FEE_BPS = 250
FUNDING = 10**12
"""What each payer's wallet is topped up with: no charge of the run can be declined."""
AMOUNT_MAX = 500
OPERATIONS_IN_FLIGHT_MAX = 3
"""``charge_many`` operations queued at once in the batch part: the engine always has the next."""
LOOPBACK = "127.0.0.1"
RESPONSE_BYTES_MAX = 1 << 20


# ----------------------------------------------------------------- in process
def _setup(engine: Engine, rails: Rails, payers: int, merchants: int) -> None:
    engine.create_ledger(LEDGER, 2)
    futures: list[Future[Any]] = []
    for i in range(payers):
        futures.append(engine.submit(payments.create_payer(PayerRequest(f"payer-{i}", LEDGER, "prepay"), rails)))
    for i in range(merchants):
        request = MerchantRequest(f"merchant-{i}", LEDGER, fee_percent_bps=FEE_BPS)
        futures.append(engine.submit(payments.create_merchant(request, rails)))
    for future in futures:
        future.result()
    topups = [
        engine.submit(payments.topup(TopupRequest(f"fund-{i}", f"payer-{i}", FUNDING, "card"), rails))
        for i in range(payers)
    ]
    for future in topups:
        future.result()


def make_charges(count: int, payers: int, merchants: int, seed: int, prefix: str) -> list[ChargeRequest]:
    rng = random.Random(seed)
    return [
        ChargeRequest(
            f"{prefix}{i:09d}",
            f"payer-{rng.randrange(payers)}",
            f"merchant-{rng.randrange(merchants)}",
            rng.randrange(1, AMOUNT_MAX),
        )
        for i in range(count)
    ]


Submit = Callable[[ChargeRequest], "Future[Outcome[Charge]]"]


def _drive(submit: Submit, work: list[ChargeRequest], threads: int, in_flight: int) -> tuple[float, int]:
    """Submit ``work`` from ``threads`` threads, each keeping up to ``in_flight`` charges
    unanswered; answers the seconds taken and how many charges failed."""
    failures = [0] * threads
    slices = [work[i::threads] for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        waiting: deque[Future[Outcome[Charge]]] = deque()
        failed = 0
        start.wait()
        for request in slices[index]:
            waiting.append(submit(request))
            if len(waiting) >= in_flight:
                failed += waiting.popleft().exception() is not None
        while waiting:
            failed += waiting.popleft().exception() is not None
        failures[index] = failed

    workers = [threading.Thread(target=worker, args=(i,), name=f"bench-charges-{i}") for i in range(threads)]
    for thread in workers:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in workers:
        thread.join()
    return time.perf_counter() - started, sum(failures)


def _one_operation(engine: Engine, request: ChargeRequest) -> Future[Outcome[Charge]]:
    return engine.submit(payments.charge(request))


def _drive_batches(engine: Engine, work: list[ChargeRequest], size: int) -> tuple[float, int]:
    """Submit ``work`` as ``charge_many`` operations of ``size`` from this thread, a few queued at
    once; answers the seconds taken and how many charges failed."""
    waiting: deque[Future[list[ChargeResult]]] = deque()
    failed = 0
    started = time.perf_counter()
    for start in range(0, len(work), size):
        part = work[start : start + size]
        waiting.append(engine.submit(payments.charge_many(part), len(part)))
        if len(waiting) >= OPERATIONS_IN_FLIGHT_MAX:
            failed += sum(isinstance(result, Exception) for result in waiting.popleft().result())
    while waiting:
        failed += sum(isinstance(result, Exception) for result in waiting.popleft().result())
    return time.perf_counter() - started, failed


class _EngineMeter:
    """The engine's counters and its thread's CPU time over one part of the run."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        stats = engine.stats
        self._batches, self._apply_s, self._write_s = stats.batches, stats.apply_s, stats.write_s
        self._engine_cpu_s, self._process_cpu_s = engine_thread_cpu_s(), time.process_time()
        self._ticks = machine_cpu_ticks()

    def report(self, report: Reporter, charges: int, suffix: str = "") -> None:
        engine_cpu_s = engine_thread_cpu_s() - self._engine_cpu_s
        process_cpu_s = time.process_time() - self._process_cpu_s
        stats = self._engine.stats
        report.figure(f"batches{suffix}", stats.batches - self._batches, "1")
        report.figure(f"apply_us_per_charge{suffix}", (stats.apply_s - self._apply_s) / charges * 1e6, "us")
        report.figure(f"write_us_per_charge{suffix}", (stats.write_s - self._write_s) / charges * 1e6, "us")
        report.figure(f"engine_cpu_us_per_charge{suffix}", engine_cpu_s / charges * 1e6, "us")
        report.figure(f"process_cpu_us_per_charge{suffix}", process_cpu_s / charges * 1e6, "us")
        steal = steal_pct(self._ticks, machine_cpu_ticks())
        if steal is not None:  # the share of the machine the host gave other guests meanwhile
            report.figure(f"cpu_steal_pct{suffix}", steal, "%")


def engine_thread_cpu_s() -> float:
    """CPU seconds the engine thread has used (it runs every batch: rules, ledger, store): the
    figure least disturbed by other work on a shared machine."""
    for thread in threading.enumerate():
        if thread.name == "micropay-engine" and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    raise MicropayError("no engine thread")


def _check_books(engine: Engine, payers: int, charged: int) -> None:
    """The ledger verifies, and the payers' wallets lost exactly what was charged."""
    engine.verify()
    spent = sum(FUNDING - _balance(engine, chart.wallet_account(f"payer-{i}", LEDGER)) for i in range(payers))
    if spent != charged:
        raise MicropayError(f"wallets lost {spent}, the charges total {charged}")


def _balance(engine: Engine, account_id: str) -> int:
    account = engine.account(account_id)
    if account is None:
        raise MicropayError(f"account {account_id} is missing")
    return account.balance


def run_in_process(
    report: Reporter,
    directory: Path,
    *,
    charges: int,
    payers: int,
    merchants: int,
    threads: int,
    in_flight: int,
    one_op_charges: int,
    coalesced_charges: int | None = None,
) -> None:
    """The three in-process parts on one engine (``coalesced_charges`` defaults to ``charges``)."""
    coalesced_charges = charges if coalesced_charges is None else coalesced_charges
    rails = Rails()
    engine = Engine(SQLiteStore(directory / "charges.db"))
    try:
        _setup(engine, rails, payers, merchants)
        batched = make_charges(charges, payers, merchants, seed=1, prefix="b")
        coalesced = make_charges(coalesced_charges, payers, merchants, seed=3, prefix="c")
        alone = make_charges(one_op_charges, payers, merchants, seed=2, prefix="s")
        with serving_gc():
            meter = _EngineMeter(engine)
            elapsed, failed = _drive_batches(engine, batched, CHARGES_PER_OPERATION_MAX)
            if failed:
                raise MicropayError(f"{failed} benchmark charges failed")
            report.figure("charges_per_s", charges / elapsed, "1/s")
            report.figure("elapsed_s", elapsed, "s")
            meter.report(report, charges)

            if coalesced_charges:
                batcher = ChargeBatcher(engine)
                meter = _EngineMeter(engine)
                elapsed, failed = _drive(batcher.submit, coalesced, threads, in_flight)
                if failed:
                    raise MicropayError(f"{failed} benchmark charges failed")
                report.figure("charges_per_s_coalesced", coalesced_charges / elapsed, "1/s")
                report.figure("operations_coalesced", batcher.operations, "1")
                meter.report(report, coalesced_charges, "_coalesced")

            if one_op_charges:
                elapsed, failed = _drive(
                    lambda request: engine.submit(payments.charge(request)), alone, threads, in_flight
                )
                if failed:
                    raise MicropayError(f"{failed} benchmark charges failed")
                report.figure("charges_per_s_one_op_each", one_op_charges / elapsed, "1/s")
        _check_books(engine, payers, sum(request.amount for request in (*batched, *coalesced, *alone)))
    finally:
        engine.close()


# ----------------------------------------------------------------- over HTTP
def _setup_http(port: int, key: str, payers: int, merchants: int) -> None:
    calls: list[tuple[str, dict[str, Any]]] = [("/v1/ledgers", {"code": LEDGER, "scale": 2})]
    calls += [("/v1/payers", {"id": f"payer-{i}", "ledger": LEDGER, "mode": "prepay"}) for i in range(payers)]
    calls += [
        ("/v1/merchants", {"id": f"merchant-{i}", "ledger": LEDGER, "fee": {"percent_bps": FEE_BPS, "fixed": 0}})
        for i in range(merchants)
    ]
    calls += [
        (f"/v1/payers/payer-{i}/topups", {"id": f"fund-{i}", "amount": FUNDING, "rail": "card"}) for i in range(payers)
    ]
    for path, body in calls:
        status, answer = _call(port, key, "POST", path, body)
        if status not in (200, 201):
            raise MicropayError(f"POST {path} answered {status}: {answer}")


class _ChargeClient(asyncio.Protocol):
    """One keep-alive connection sending single charges until the deadline, one at a time."""

    def __init__(
        self, requests: Callable[[], bytes], deadline: float, done: asyncio.Future[None], *, batch: bool = False
    ) -> None:
        self.batch = batch
        self.charges_ok = 0
        self._requests = requests
        self._deadline = deadline
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._started = 0.0
        self.latencies_s: list[float] = []
        self.statuses: dict[int, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if self._transport is None:
            return
        if time.perf_counter() >= self._deadline:
            self._transport.close()
            return
        self._started = time.perf_counter()
        self._transport.write(self._requests())

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buffer[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else len(head)])
        if length > RESPONSE_BYTES_MAX:
            raise MicropayError("response over the bound")
        if len(buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies_s.append(time.perf_counter() - self._started)
        if status == 200 and self.batch:
            answer = orjson.loads(bytes(buffer[end + 4 : end + 4 + length]))
            self.charges_ok += sum(1 for item in answer["results"] if item["result"] == "ok")
        elif status == 201:
            self.charges_ok += 1
        del buffer[: end + 4 + length]
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._done.done():
            self._done.set_result(None)


def _request_maker(
    key: str, index: int, payers: int, merchants: int, seed: int, batch_size: int = 0
) -> Callable[[], bytes]:
    """Single charges (``batch_size`` 0) or batches of ``batch_size`` for ``POST /v1/charges/batch``."""
    rng = random.Random(seed * 1000 + index)
    path = "/v1/charges/batch" if batch_size else "/v1/charges"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()
    sequence = 0

    def one() -> dict[str, object]:
        nonlocal sequence
        sequence += 1
        return {
            "id": f"h{seed}-{index}-{sequence}",
            "payer_id": f"payer-{rng.randrange(payers)}",
            "merchant_id": f"merchant-{rng.randrange(merchants)}",
            "amount": rng.randrange(1, AMOUNT_MAX),
        }

    def make() -> bytes:
        body = orjson.dumps({"charges": [one() for _ in range(batch_size)]} if batch_size else one())
        return b"%s%d\r\n\r\n%s" % (head, len(body), body)

    return make


async def _load(
    port: int, key: str, connections: int, duration_s: float, payers: int, merchants: int, batch_size: int = 0
) -> tuple[float, list[_ChargeClient]]:
    loop = asyncio.get_running_loop()
    deadline = time.perf_counter() + duration_s
    clients: list[_ChargeClient] = []
    waits: list[asyncio.Future[None]] = []
    started = time.perf_counter()
    for index in range(connections):
        done: asyncio.Future[None] = loop.create_future()
        make = _request_maker(key, index, payers, merchants, int(started) + batch_size, batch_size)
        client = _ChargeClient(make, deadline, done, batch=batch_size > 0)
        clients.append(client)
        waits.append(done)
        await loop.create_connection(lambda client=client: client, LOOPBACK, port)  # type: ignore[misc]
    await asyncio.gather(*waits)
    return time.perf_counter() - started, clients


def _statuses(clients: list[_ChargeClient]) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for client in clients:
        for status, count in client.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return statuses


def run_http(
    report: Reporter,
    directory: Path,
    *,
    connections: int,
    duration_s: float,
    payers: int,
    merchants: int,
    batch_connections: int = 2,
    batch_size: int = 1000,
    front_processes: int = 1,
) -> None:
    port = free_port()
    server, key = start_server(directory, port, front_arguments(front_processes))
    report.figure("http_front_processes", front_processes, "1")
    try:
        _setup_http(port, key, payers, merchants)
        elapsed, clients = asyncio.run(_load(port, key, connections, duration_s, payers, merchants))
        batch_elapsed, batch_clients = 0.0, list[_ChargeClient]()
        if batch_connections:
            batch_elapsed, batch_clients = asyncio.run(
                _load(port, key, batch_connections, duration_s, payers, merchants, batch_size)
            )
    finally:
        stop_server(server)
    statuses = _statuses(clients)
    report.note(f"single charges, statuses: {statuses}")
    created = sum(client.charges_ok for client in clients)
    if created != sum(statuses.values()):
        raise MicropayError(f"some HTTP charges failed: {statuses}")
    latencies = sorted(latency for client in clients for latency in client.latencies_s)
    report.figure("http_charges_per_s", created / elapsed, "1/s")
    if latencies:
        report.figure("http_p50_ms", latencies[len(latencies) // 2] * 1e3, "ms")
        report.figure("http_p99_ms", latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, "ms")
    if batch_clients:
        statuses = _statuses(batch_clients)
        report.note(f"batches of {batch_size}, statuses: {statuses}")
        made = sum(client.charges_ok for client in batch_clients)
        if statuses.get(200, 0) != sum(statuses.values()) or made != statuses.get(200, 0) * batch_size:
            raise MicropayError(f"some HTTP batch charges failed: {statuses}, {made} made")
        report.figure("http_batch_charges_per_s", made / batch_elapsed, "1/s")


def bench_charges(
    report: Reporter,
    *,
    charges: int = 200_000,
    payers: int = 1000,
    merchants: int = 100,
    threads: int = 8,
    in_flight: int = 512,
    one_op_charges: int = 50_000,
    coalesced_charges: int | None = None,
    http: bool = True,
    connections: int = 64,
    duration_s: float = 10.0,
    http_payers: int = 100,
    directory: str | None = None,
    front_processes: int = 1,
) -> None:
    coalesced_charges = charges if coalesced_charges is None else coalesced_charges
    report.note(
        f"in process: {charges:,} charges in operations of up to {CHARGES_PER_OPERATION_MAX:,}; then"
        f" {coalesced_charges:,} single charges through the batcher and {one_op_charges:,} one operation each,"
        f" by {threads} threads; {payers:,} prepay payers, {merchants} merchants, fee {FEE_BPS} bps"
    )
    with tempfile.TemporaryDirectory(dir=directory, prefix="micropay-bench-charges-") as tmp:
        run_in_process(
            report,
            Path(tmp),
            charges=charges,
            payers=payers,
            merchants=merchants,
            threads=threads,
            in_flight=in_flight,
            one_op_charges=one_op_charges,
            coalesced_charges=coalesced_charges,
        )
    if http:
        report.note(
            f"over HTTP: {connections} connections sending single charges for {duration_s:g} s,"
            f" the server with {front_processes} front process(es)"
        )
        with tempfile.TemporaryDirectory(dir=directory, prefix="micropay-bench-charges-http-") as tmp:
            run_http(
                report,
                Path(tmp),
                connections=connections,
                duration_s=duration_s,
                payers=http_payers,
                merchants=min(merchants, http_payers),
                front_processes=front_processes,
            )
