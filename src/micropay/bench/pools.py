"""``micropay bench pools``: one month of a large collaborative pool, distributed.

Set-up (not timed as the figure): publishers with a site and content each, members who joined
(paid through the ordinary join), and a month of reads loaded through ``record_reads`` (the
same documents the one-read path writes, in one operation per group of members). Then the set-up
is copied once per run, an engine opened on the copy, and the real distribution timed: listing
the period's members, the ``distribute`` operation (split, one linked chain of transfers, the
distribution and earnings documents) and its durable commit.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from micropay.bench.report import Reporter
from micropay.engine import BatchContext, Engine
from micropay.errors import MicropayError
from micropay.models import chart, payments
from micropay.models import pools as P
from micropay.models.rules import period_key
from micropay.settlement.rails import Rails
from micropay.store import SQLiteStore

LEDGER = "USD"
POOL_ID = "bench-pool"
PRICE = 999
SPLIT = (("owner", 7000), ("host", 1500), ("referrer", 500), ("platform", 1000))
CONTENT_PER_PUBLISHER = 10
FAVOURITES = 20
"""Publishers a member reads most: members read a few outlets, not the whole network."""
START_NS = 1_773_576_000 * 1_000_000_000
"""2026-03-15T12:00:00Z: the bench's clock; reads fall in March 1-15."""
MINUTE_NS = 60 * 1_000_000_000
READS_PER_OPERATION = 4096
IN_FLIGHT_MAX = 4
"""Operations the loader keeps queued, so the engine never waits for the next one."""


def _clock() -> Callable[[], int]:
    """A clock standing at ``START_NS`` and moving with real time (timestamps stay unique)."""
    origin = time.monotonic_ns()
    return lambda: START_NS + (time.monotonic_ns() - origin)


def _wait(futures: Sequence[Future[Any]]) -> None:
    for future in futures:
        future.result()


def make_reads(members: int, publishers: int, reads: int, seed: int) -> list[P.ReadRequest]:
    """About ``reads`` reads, grouped by member: each member reads mostly its favourite
    publishers' content, usually on the publisher's own site, sometimes syndicated elsewhere, about
    half the time through a referrer, and now and then the same article again within minutes."""
    rng = random.Random(seed)
    month_start = START_NS - 14 * 86_400 * 1_000_000_000 - 12 * 3600 * 1_000_000_000
    span = START_NS - month_start - 3600 * 1_000_000_000
    requests: list[P.ReadRequest] = []
    per_member, extra = divmod(reads, members)
    for member in range(members):
        payer_id = f"payer-{member}"
        favourites = [rng.randrange(publishers) for _ in range(FAVOURITES)]
        count = per_member + (1 if member < extra else 0)
        step = max(2 * span // max(count, 1), 2)
        at = month_start
        left = count
        while left:
            publisher = rng.choice(favourites) if rng.random() < 0.9 else rng.randrange(publishers)
            content = f"art-{publisher}-{rng.randrange(CONTENT_PER_PUBLISHER)}"
            host = f"site-{publisher}" if rng.random() < 0.8 else f"site-{rng.randrange(publishers)}"
            referrer = f"site-{rng.randrange(publishers)}" if rng.random() < 0.5 else ""
            # Now and then the same article again a few minutes later: a repeat.
            times = 2 if left > 1 and rng.random() < 0.05 else 1
            for _ in range(times):
                at = min(at + rng.randrange(1, step), START_NS)
                read_id = f"read-{len(requests)}"
                requests.append(P.ReadRequest(read_id, POOL_ID, payer_id, content, host, referrer, at))
            left -= times
    return requests


def build(path: Path, members: int, publishers: int, reads: list[P.ReadRequest], report: Reporter) -> None:
    """Create the world in ``path``: publishers, sites, content, the pool, members, reads."""
    rails = Rails()
    with Engine(SQLiteStore(path), clock_ns=_clock(), batch_window_s=0.002) as engine:
        engine.create_ledger(LEDGER, 2)
        engine.call(P.create_pool(P.PoolRequest(POOL_ID, LEDGER, PRICE, SPLIT), rails))
        started = time.perf_counter()
        futures: list[Future[Any]] = []
        for publisher in range(publishers):
            publisher_id = f"pub-{publisher}"
            futures.append(engine.submit(P.create_publisher(publisher_id, LEDGER, rails)))
            futures.append(engine.submit(P.create_site(f"site-{publisher}", publisher_id)))
            futures.extend(
                engine.submit(P.create_content(f"art-{publisher}-{n}", publisher_id))
                for n in range(CONTENT_PER_PUBLISHER)
            )
        _wait(futures)
        futures = []
        for member in range(members):
            payer_id = f"payer-{member}"
            futures.append(
                engine.submit(payments.create_payer(payments.PayerRequest(payer_id, LEDGER, "prepay"), rails))
            )
            topup = payments.TopupRequest(f"topup-{member}", payer_id, 5 * PRICE, "card")
            futures.append(engine.submit(payments.topup(topup, rails)))
            futures.append(engine.submit(P.join_pool(POOL_ID, payer_id)))
        _wait(futures)
        report.figure("setup_parties_s", time.perf_counter() - started, "s")

        started = time.perf_counter()
        in_flight: deque[Future[list[P.ReadResult]]] = deque()
        refused = 0
        for start in range(0, len(reads), READS_PER_OPERATION):
            part = reads[start : start + READS_PER_OPERATION]
            in_flight.append(engine.submit(P.record_reads(part), len(part)))
            if len(in_flight) >= IN_FLIGHT_MAX:
                refused += sum(isinstance(result, Exception) for result in in_flight.popleft().result())
        while in_flight:
            refused += sum(isinstance(result, Exception) for result in in_flight.popleft().result())
        load_s = time.perf_counter() - started
        if refused:
            raise MicropayError(f"{refused} benchmark reads were refused")
        report.figure("reads_load_s", load_s, "s")
        report.figure("reads_load_per_s", len(reads) / load_s, "1/s")
        engine.verify()


def distribute_once(path: Path) -> tuple[float, float, P.Distribution, Engine]:
    """Open an engine on ``path`` and time the real distribution, durable: wall and CPU seconds
    (the process's; on a shared machine the CPU time is the steadier figure). Returns the engine open."""
    engine = Engine(SQLiteStore(path), clock_ns=_clock(), batch_window_s=0)
    period = engine.call(P.current_period)
    gc.collect()
    started, cpu_started = time.perf_counter(), time.process_time()
    distribution, _ = P.run_distribution(engine, POOL_ID, period)
    return time.perf_counter() - started, time.process_time() - cpu_started, distribution, engine


def _check(engine: Engine, distribution: P.Distribution, members: int) -> int:
    """The books after the distribution: lines add up, the pool holds what is carried."""
    engine.verify()
    if sum(line.amount for line in distribution.lines) != distribution.total:
        raise MicropayError("distribution lines do not add up to the total")
    pool = engine.account(chart.pool_account(POOL_ID))
    if pool is None or pool.balance != distribution.carried_out or distribution.collected != members * PRICE:
        raise MicropayError("pool balance does not match the distribution")

    def count_parts(ctx: BatchContext) -> int:
        parts = 0
        for line in {line.recipient_id for line in distribution.lines} - {P.PLATFORM_RECIPIENT}:
            body = ctx.get_document(P.EARNINGS, P.earnings_key(line, distribution.period, POOL_ID))
            parts += 0 if body is None else len(P.decode_earnings(body).lines)
        return parts

    return engine.call(count_parts)


def bench_pools(
    report: Reporter,
    *,
    members: int = 10_000,
    publishers: int = 1_000,
    reads: int = 1_000_000,
    runs: int = 3,
    seed: int = 42,
    directory: str | None = None,
) -> None:
    report.note(
        f"workload: {members:,} members, {publishers:,} publishers ({publishers * CONTENT_PER_PUBLISHER:,} articles),"
        f" {reads:,} reads in one month; distribution timed over {runs} runs on copies"
    )
    requests = make_reads(members, publishers, reads, seed)
    with tempfile.TemporaryDirectory(dir=directory, prefix="micropay-bench-pools-") as tmp:
        base = Path(tmp) / "base.db"
        build(base, members, publishers, requests, report)
        del requests
        gc.collect()
        timings: list[float] = []
        cpu_timings: list[float] = []
        for run in range(runs):
            copy = Path(tmp) / f"run-{run}.db"
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{base}{suffix}").exists():
                    shutil.copyfile(f"{base}{suffix}", f"{copy}{suffix}")
            elapsed, cpu, distribution, engine = distribute_once(copy)
            try:
                parts = _check(engine, distribution, members)
            finally:
                engine.close()
            timings.append(elapsed)
            cpu_timings.append(cpu)
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{copy}{suffix}").unlink(missing_ok=True)
        report.figure("distribution_s", statistics.median(timings), "s")
        report.figure("distribution_min_s", min(timings), "s")
        report.figure("distribution_max_s", max(timings), "s")
        report.figure("distribution_cpu_s", statistics.median(cpu_timings), "s")
        report.figure("lines", len(distribution.lines), "1")
        report.figure("recipients", len({line.recipient_id for line in distribution.lines}), "1")
        report.figure("earnings_parts", parts, "1")
        report.figure("members_paid", distribution.members_paid, "1")
        report.figure("total", distribution.total, "minor units")
    report.note(f"pid {os.getpid()}: done (period {period_key('month', START_NS)})")
