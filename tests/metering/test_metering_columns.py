"""The column path of a metering batch (``metering_columns``): it rates a batch only when every
event is certain to be charged as the batch path would charge it, and then answers, records and
books exactly what the batch path does; on any doubt it moves and writes nothing and leaves the
batch to that path."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering_testkit import Meter
from models_testkit import DAY_NS, USD, Clock, World, utc_ns

from micropay.errors import ApiError
from micropay.models import metering, metering_batch, payments
from micropay.models.metering import EventRequest, EventResult
from micropay.models.metering_columns import rate_columns
from micropay.models.payments import MerchantRequest
from micropay.models.records import SpendCap, decode_merchant_holds

NOW = utc_ns(2026, 3, 10, 12)
PLANS: dict[str, tuple[str, dict[str, Any]]] = {
    "unit": ("m0", {"model": "per_unit", "unit_price": "0.37"}),
    "tier": (
        "m1",
        {
            "model": "graduated",
            "tiers": [{"up_to": 50, "unit_price": "1.5", "flat": "3"}, {"up_to": None, "unit_price": "0.2"}],
        },
    ),
    "pack": ("m0", {"model": "package", "package_size": 10, "package_price": "7"}),
    "free": ("m1", {"model": "per_unit", "unit_price": "0.001"}),
}
WALLETS = [f"p{i}" for i in range(8)]
PAYERS = [*WALLETS, "cap", "poor"]


def build(path: Path, clock: Clock) -> World:
    world = World(path, clock)
    world.ledger(USD, 2)
    world.merchant("m0", bps=2_500, fixed=1)
    world.call(payments.create_merchant(MerchantRequest("m1", USD, payout_hold_days=3), world.rails))
    for payer in WALLETS:
        world.payer(payer)
        world.fund(payer, 100_000)
    world.payer("cap", caps=(SpendCap("day", 50_000),))
    world.fund("cap", 100_000)
    world.payer("poor")
    world.fund("poor", 30)
    meter = Meter(world)
    for plan_id, (merchant_id, pricing) in PLANS.items():
        meter.plan(plan_id, merchant_id, pricing, metric=plan_id)
    clock.set(NOW)
    world.call(metering.close_period("unit", "2026-02"))
    return world


def view(result: EventResult) -> tuple[Any, ...]:
    if isinstance(result, ApiError):
        return ("error", type(result).__name__, result.code)
    return ("event", result[1], result[0])


def state_of(world: World, ids: set[str]) -> dict[str, Any]:
    meter = Meter(world)
    engine = world.engine
    return {
        "balances": world.snapshot(),
        "usage": {
            (payer, plan, period): meter.usage(payer, plan, period)
            for payer in PAYERS
            for plan in PLANS
            for period in ("2026-02", "2026-03")
        },
        "events": {event_id: engine.document(metering.USAGE_EVENT, event_id) for event_id in sorted(ids)},
        "charges": {
            event_id: engine.document(payments.CHARGE, metering.usage_charge_id(event_id)) for event_id in sorted(ids)
        },
        "buckets": engine.store.list_documents(metering.USAGE_EVENT_BY_PAYER, None, 10_000),
        "holds": [
            None if body is None else decode_merchant_holds(body)
            for body in (engine.document(payments.MERCHANT_HOLDS, merchant) for merchant in ("m0", "m1"))
        ],
        "cap": world.read_cap_usage("cap"),
    }


def used_columns(world: World, requests: list[EventRequest]) -> bool:
    """Whether the column path takes ``requests`` now (tried in an operation that is undone)."""

    return world.peek(lambda ctx: rate_columns(ctx, requests) is not None)


event_requests = st.builds(
    EventRequest,
    id=st.sampled_from([f"e{i}" for i in range(80)]),
    payer_id=st.sampled_from(WALLETS * 3 + ["cap", "poor", "ghost"]),
    plan_id=st.sampled_from(["unit", "tier", "pack", "free"] * 6 + ["nope"]),
    quantity=st.integers(1, 130).map(lambda q: q if q <= 125 else (0, -3, 10**12 + 1, 400, 150)[q % 5]),
    timestamp_ns=st.sampled_from([None] * 12 + [NOW - 3 * DAY_NS, utc_ns(2026, 2, 20), NOW + 10**12]),
)


plain_requests = st.builds(
    EventRequest,
    id=st.sampled_from([f"e{i}" for i in range(80)]),
    payer_id=st.sampled_from(WALLETS),
    plan_id=st.sampled_from(["unit", "tier", "pack", "unit", "tier", "pack", "free"]),
    quantity=st.integers(1, 125),
    timestamp_ns=st.sampled_from([None] * 6 + [NOW - 3 * DAY_NS]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.one_of(
        st.lists(plain_requests, min_size=24, max_size=80, unique_by=lambda event: event.id),
        st.lists(event_requests, min_size=8, max_size=80),
    ),
    cuts=st.lists(st.integers(24, 70), max_size=2),
)
def test_the_column_path_answers_records_and_books_what_the_batch_path_does(
    events: list[EventRequest], cuts: list[int]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="micropay-metering-columns-"))
    clock = Clock(NOW)
    worlds: list[World] = []
    try:
        by_columns = build(directory / "columns.db", clock)
        worlds.append(by_columns)
        batch_path = build(directory / "batch.db", clock)
        worlds.append(batch_path)
        bounds = sorted({0, len(events), *(cut for cut in cuts if cut < len(events))})
        for start, stop in itertools.pairwise(bounds):
            batch = events[start:stop]
            together = [view(r) for r in by_columns.call(metering_batch.record_events(batch))]
            apart = [view(r) for r in batch_path.call(metering_batch.record_events(batch, by_columns=False))]
            assert together == apart
        ids = {event.id for event in events}
        assert state_of(by_columns, ids) == state_of(batch_path, ids)
        for world in worlds:
            world.check_books()
    finally:
        for world in worlds:
            world.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def meters(tmp_path: Path) -> Any:
    world = build(tmp_path / "m.db", Clock(NOW))
    yield world
    world.check_books()
    world.close()


def plain(count: int, payer: str = "p0", plan: str = "unit", prefix: str = "e") -> list[EventRequest]:
    return [EventRequest(f"{prefix}{i}", payer, plan, 1 + i % 7) for i in range(count)]


def wide(m0_plan: str = "unit") -> list[EventRequest]:
    """A batch the column path takes: each payer pays both merchants, nine transfers (m0 takes
    a fee), enough for the ledger's fast path (a batch moving fewer than eight goes the batch
    path's way)."""
    return [
        *plain(3, "p0", m0_plan),
        *plain(3, "p0", "tier", "a"),
        *plain(3, "p1", m0_plan, "f"),
        *plain(3, "p1", "tier", "b"),
        *plain(3, "p2", "pack", "g"),
        *plain(3, "p2", "tier", "c"),
    ]


def test_plain_batches_of_wallet_payers_go_by_columns(meters: World) -> None:
    requests = wide()
    assert used_columns(meters, requests)
    results = meters.call(metering_batch.record_events(requests))
    assert all(not isinstance(r, ApiError) and r[0].status == "charged" for r in results)
    # One charge per payer and merchant, named after its first paying event: e0 costs nothing
    # yet (0.37 floors to 0), e1 pays m0's, a0 m1's.
    p0 = [r[0] for r in results if not isinstance(r, ApiError) and r[0].payer_id == "p0"]
    assert [event.charge_id for event in p0] == ["", "usage:e1", "usage:e1", "usage:a0", "usage:a0", "usage:a0"]


def test_events_with_timestamps_of_one_month_go_by_columns(meters: World) -> None:
    assert used_columns(meters, [*wide(), EventRequest("x", "p0", "tier", 1, NOW - 3 * DAY_NS)])
    february = utc_ns(2026, 2, 20)  # still open for the plans of wide("pack")
    assert used_columns(meters, [request._replace(timestamp_ns=february) for request in wide("pack")])


@pytest.mark.parametrize(
    ("case", "requests"),
    [
        ("fewer than eight events", plain(7)),
        ("fewer than eight transfers to make", plain(20)),
        ("an id twice", [*wide(), EventRequest("e0", "p0", "unit", 1)]),
        ("an unknown payer", [*wide(), EventRequest("x", "ghost", "unit", 1)]),
        ("an unknown plan", [*wide(), EventRequest("x", "p0", "nope", 1)]),
        ("a quantity of zero", [*wide(), EventRequest("x", "p0", "unit", 0)]),
        ("a timestamp too far ahead", [*wide(), EventRequest("x", "p0", "unit", 1, NOW + DAY_NS)]),
        ("a closed period", [*wide(), EventRequest("x", "p0", "unit", 1, utc_ns(2026, 2, 20))]),
        # February is closed for "unit" alone.
        ("events of two months", [*wide("pack"), EventRequest("x", "p0", "tier", 1, utc_ns(2026, 2, 20))]),
        ("a payer with a cap", [*wide(), *plain(8, "cap", prefix="k")]),
        ("a wallet short of the batch's sum", [*wide(), *plain(8, "poor", "tier", "k")]),
    ],
)
def test_the_column_path_leaves_doubtful_batches_alone(meters: World, case: str, requests: list[EventRequest]) -> None:
    before = meters.snapshot()
    assert not used_columns(meters, requests), case
    assert meters.snapshot() == before


def test_a_batch_replaying_an_event_leaves_the_column_path(meters: World) -> None:
    Meter(meters).record(plain(10)[3])
    requests = plain(10)
    assert not used_columns(meters, requests)
    results = meters.call(metering_batch.record_events(requests))
    assert [r[1] for r in results if not isinstance(r, ApiError)] == [False] * 3 + [True] + [False] * 6
