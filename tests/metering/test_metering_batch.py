"""The batch path (``record_events``: a batch's events rated in one operation, each (payer, plan,
period) charged once) against the reference path (``record_event``: one operation and one
charge per event): the same per-event results, the same usage, the same balances and the same
payer records, for random mixes of payers of every mode, caps, promo, plans, replays, duplicate
ids in one batch, declines and refusals."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering_testkit import Meter, result_view
from models_testkit import DAY_NS, NS, USD, Clock, World, utc_ns

from micropay.errors import ApiError
from micropay.ledger.limits import BATCH_SIZE_MAX
from micropay.models import chart, metering, metering_batch, payments
from micropay.models.metering import EventRequest, UsageEvent
from micropay.models.payments import MerchantRequest
from micropay.models.records import SpendCap, decode_merchant_holds

NOW = utc_ns(2026, 3, 10, 12)
PLANS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "unit": ("m0", {"model": "per_unit", "unit_price": "0.37"}, None),
    "tier": (
        "m1",
        {
            "model": "graduated",
            "tiers": [{"up_to": 50, "unit_price": "1.5", "flat": "3"}, {"up_to": None, "unit_price": "0.2"}],
        },
        "100",
    ),
    "pack": ("m0", {"model": "package", "package_size": 10, "package_price": "7"}, None),
    "tiny": ("m1", {"model": "graduated", "tiers": [{"up_to": 200, "unit_price": "0.01"}]}, None),
    "euro": ("meur", {"model": "per_unit", "unit_price": "1"}, None),
}
PAYERS = ["pre", "cap", "post", "hyb", "sus", "poor", "eur"]
TIMESTAMPS = [
    None,
    NOW - 5 * DAY_NS,  # earlier in March
    utc_ns(2026, 2, 20),  # February: closed for "unit", open for the others
    NOW + 200 * NS,  # slightly ahead, within the skew
    NOW + 400 * NS,  # too far ahead
    -1,
]


def build(path: Path, clock: Clock) -> World:
    """The same little economy in every world."""
    world = World(path, clock)
    world.ledger(USD, 2)
    world.ledger("EUR", 2)
    world.merchant("m0", bps=500, fixed=1)
    world.call(payments.create_merchant(MerchantRequest("m1", USD, payout_hold_days=3), world.rails))
    world.merchant("meur", ledger="EUR")
    world.payer("pre")
    world.fund("pre", 600)
    world.payer("cap", caps=(SpendCap("day", 250), SpendCap("month", 400)))
    world.fund("cap", 5_000)
    world.payer("post", "postpay", credit_limit=300)
    world.payer("hyb", "hybrid", credit_limit=150)
    world.fund("hyb", 100)
    world.voucher("VOUCHER1", 80, expires_in_s=3_600)
    world.voucher("VOUCHER2", 50, expires_in_s=7_200)
    world.redeem("hyb", "VOUCHER1")
    world.redeem("hyb", "VOUCHER2")
    world.payer("sus")
    world.fund("sus", 1_000)
    world.suspend("sus")
    world.payer("poor")
    world.fund("poor", 40)
    world.payer("eur", ledger="EUR")
    world.fund("eur", 100)
    meter = Meter(world)
    for plan_id, (merchant_id, pricing, minimum) in PLANS.items():
        meter.plan(plan_id, merchant_id, pricing, minimum=minimum)
    clock.set(NOW)
    world.call(metering.close_period("unit", "2026-02"))
    return world


class Twins:
    """Two identical worlds on one clock: one fed event by event, the other in batches."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="micropay-metering-"))
        self.clock = Clock(NOW)
        self.reference = build(self.directory / "reference.db", self.clock)
        self.batched = build(self.directory / "batched.db", self.clock)

    def close(self) -> None:
        for world in (self.reference, self.batched):
            world.check_books()
            world.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture
def twins() -> Iterator[Twins]:
    pair = Twins()
    yield pair
    pair.close()


def run_both(twins: Twins, batches: list[list[EventRequest]]) -> tuple[list[Any], list[Any]]:
    reference = Meter(twins.reference)
    batched = Meter(twins.batched)
    one_by_one = [result_view(r) for batch in batches for r in reference.one_by_one(batch)]
    grouped = [result_view(r) for batch in batches for r in batched.batch(batch)]
    return one_by_one, grouped


def state_of(world: World) -> dict[str, Any]:
    """Everything the two paths must agree on (charges differ: per event vs per group)."""
    meter = Meter(world)
    usages = {
        (payer, plan, period): meter.usage(payer, plan, period)
        for payer in PAYERS
        for plan in PLANS
        for period in ("2026-02", "2026-03")
    }
    payers = {}
    for payer in PAYERS:
        ledger = "EUR" if payer == "eur" else USD
        payers[payer] = (
            world.read_cap_usage(payer),
            world.read_promo(payer, ledger),
            meter.accrued(payer),
            world.read_payer(payer),
        )
    holds = {merchant: world.engine.document(payments.MERCHANT_HOLDS, merchant) for merchant in ("m0", "m1")}
    return {
        "balances": world.snapshot(),
        "usages": usages,
        "payers": payers,
        "holds": {m: None if body is None else decode_merchant_holds(body) for m, body in holds.items()},
    }


def events_of(world: World, ids: set[str]) -> dict[str, UsageEvent | None]:
    found: dict[str, UsageEvent | None] = {}
    for event_id in sorted(ids):
        body = world.engine.document(metering.USAGE_EVENT, event_id)
        found[event_id] = None if body is None else metering.decode_event(body)
    return found


def assert_same(twins: Twins, batches: list[list[EventRequest]]) -> list[Any]:
    one_by_one, grouped = run_both(twins, batches)
    assert grouped == one_by_one
    assert state_of(twins.batched) == state_of(twins.reference)
    ids = {request.id for batch in batches for request in batch}
    reference_events = events_of(twins.reference, ids)
    batched_events = events_of(twins.batched, ids)
    for event_id, event in reference_events.items():
        other = batched_events[event_id]
        if event is None or other is None:
            assert event is other, event_id
            continue
        assert other.charge_id.startswith("usage:") == event.charge_id.startswith("usage:")
        assert other == event._replace(charge_id=other.charge_id)
    return one_by_one


# ----------------------------------------------------------------- random mixes
def _mostly(common: list[Any], rare: list[Any]) -> st.SearchStrategy[Any]:
    """One of ``common`` most of the time, one of ``rare`` now and then."""
    return st.sampled_from(common * 6 + rare)


event_requests = st.builds(
    EventRequest,
    id=st.sampled_from([f"e{i}" for i in range(60)]),
    payer_id=_mostly(PAYERS[:4], [*PAYERS[4:], "ghost"]),
    plan_id=_mostly(["unit", "tier", "pack"], ["tiny", "euro", "nope"]),
    quantity=st.integers(1, 130).map(lambda q: q if q <= 120 else (0, -3, 10**12 + 1, 400, 150)[q % 5]),
    timestamp_ns=_mostly([None], TIMESTAMPS[1:]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(event_requests, min_size=30, max_size=120),
    cuts=st.lists(st.integers(1, 80), max_size=4),
)
def test_the_batch_path_answers_and_books_what_the_one_by_one_path_does(
    events: list[EventRequest], cuts: list[int]
) -> None:
    twins = Twins()
    try:
        bounds = sorted({0, len(events), *(cut for cut in cuts if cut < len(events))})
        batches = [events[start:stop] for start, stop in itertools.pairwise(bounds)]
        assert_same(twins, batches)
    finally:
        twins.close()


# ----------------------------------------------------------------- chosen cases
def test_money_running_out_mid_batch(twins: Twins) -> None:
    # "poor" has 40 cents; "tier" costs 4.5 for the first unit (3 flat + 1.5), 1.5 each up to 50.
    requests = [EventRequest(f"e{i}", "poor", "tier", quantity) for i, quantity in enumerate([1, 20, 10, 1, 30, 2])]
    views = assert_same(twins, [requests])
    assert [view[8] for view in views] == ["charged", "charged", "declined", "charged", "declined", "charged"]
    # 1 unit: 4 (4.5); 21 units: 34.5 -> 34, charge 30; 31 units: 49.5 -> 15 more: over the 6 left;
    # 22 units: 36 -> 2 more; 52 units: 81.4 -> over; 24 units: 39 -> 3 more.
    assert [view[9] for view in views] == [4, 30, 0, 2, 0, 3]
    assert twins.batched.wallet("poor") == 1


def test_one_payer_several_plans_and_a_replay_in_the_same_batch(twins: Twins) -> None:
    requests = [
        EventRequest("a", "hyb", "unit", 100),
        EventRequest("b", "hyb", "tier", 60),
        EventRequest("a", "hyb", "unit", 100),  # replay inside the batch
        EventRequest("a", "hyb", "unit", 101),  # conflict inside the batch
        EventRequest("c", "hyb", "pack", 35),
        EventRequest("d", "hyb", "unit", 200),
    ]
    views = assert_same(twins, [requests])
    assert views[2][:2] == ("event", True)
    assert views[3] == ("error", "Conflict", "exists_with_different_fields")
    batched = Meter(twins.batched)
    # One charge per payer and merchant in the batch, named after its first paying event:
    # "unit" and "pack" are m0's, "tier" is m1's.
    assert [batched.read_event(e).charge_id for e in "abcd"] == ["usage:a", "usage:b", "usage:a", "usage:a"]
    accounts = [account("hyb", USD) for account in (chart.promo_account, chart.wallet_account, chart.tab_account)]
    listed = payments.owner_charge_ids(twins.batched.engine, accounts, paid_from=True, starting_after=None, limit=10)
    assert listed == (["usage:b", "usage:a"], False)  # newest first
    charge = twins.batched.read_charge("usage:a")
    assert charge.description == "api_calls" and charge.kind == "usage"
    assert charge.amount == sum(view[9] for view in views if view[2] in "acd" and not view[1])


def test_replays_across_the_two_paths(twins: Twins) -> None:
    world = twins.batched
    meter = Meter(world)
    first, _ = meter.record(EventRequest("one", "pre", "unit", 10))
    [replayed] = meter.batch([EventRequest("one", "pre", "unit", 10)])
    assert replayed == (first, True)
    [event_result] = meter.batch([EventRequest("two", "pre", "unit", 10)])
    assert not isinstance(event_result, ApiError)
    with world.moves_nothing():
        assert meter.record(EventRequest("two", "pre", "unit", 10)) == (event_result[0], True)


def test_a_failed_grouped_booking_falls_back_to_one_operation_per_event(
    twins: Twins, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [EventRequest(f"e{i}", payer, "unit", 50) for i, payer in enumerate(["pre", "poor", "pre", "ghost"])]

    def fail(self: object) -> None:
        raise metering_batch.GroupedChargeFailed("simulated")

    monkeypatch.setattr(metering_batch._Batch, "book", fail)
    views = assert_same(twins, [requests])
    assert views[3] == ("error", "NotFound", "payer_not_found")
    assert twins.batched.engine.failure is None


def test_the_largest_batch(twins: Twins) -> None:
    world = twins.batched
    world.fund("pre", 10_000)
    requests = [EventRequest(f"e{i}", "pre", "unit", 1) for i in range(BATCH_SIZE_MAX)]
    results = Meter(world).batch(requests)
    assert all(not isinstance(r, ApiError) and r[0].status == "charged" for r in results)
    assert sum(r[0].amount for r in results if not isinstance(r, ApiError)) == BATCH_SIZE_MAX * 37 // 100
    assert Meter(world).batch([]) == []


@settings(max_examples=30, deadline=None)
@given(
    parts=st.lists(st.integers(1, 3_000), min_size=1, max_size=60),
    cuts=st.lists(st.integers(1, 60), max_size=6),
    data=st.data(),
)
def test_any_split_into_batches_charges_floor_of_the_price_of_the_total(
    parts: list[int], cuts: list[int], data: st.DataObject
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="micropay-metering-"))
    world = World(directory / "m.db", Clock())
    try:
        world.ledger(USD, 2)
        world.merchant("m")
        world.payer("p")
        world.fund("p", 10_000_000)
        meter = Meter(world)
        meter.plan("tier", "m", PLANS["tier"][1])
        order = data.draw(st.permutations(parts))
        requests = [EventRequest(f"e{i}", "p", "tier", quantity) for i, quantity in enumerate(order)]
        bounds = sorted({0, len(requests), *(cut for cut in cuts if cut < len(requests))})
        paid = 0
        for start, stop in itertools.pairwise(bounds):
            for result in meter.batch(requests[start:stop]):
                assert not isinstance(result, ApiError)
                paid += result[0].amount
        total = sum(parts)
        # 3 + 1.5 per unit up to 50, 0.2 per unit beyond: in tenths of a cent.
        tenths = 30 + 15 * min(total, 50) + 2 * max(total - 50, 0)
        assert paid == tenths // 10 == meter.usage("p", "tier", "2026-03").amount
        assert world.wallet("p") == 10_000_000 - paid
        world.check_books()
    finally:
        world.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_payers_events_list_by_the_moment_they_were_recorded(twins: Twins) -> None:
    world = twins.batched
    meter = Meter(world)
    meter.batch([EventRequest(f"b{i}", "pre" if i % 3 else "post", "unit", 1) for i in range(7)])
    meter.record(EventRequest("s1", "pre", "unit", 1))
    meter.record(EventRequest("s0", "pre", "unit", 1))
    world.clock.advance(1)
    meter.batch([EventRequest("a9", "pre", "unit", 1), EventRequest("a8", "pre", "unit", 1)])
    # By the moment recorded; recorded at one moment (one engine batch, here the same clock
    # reading): by operation, in id order of each operation's first event; in order within one.
    expected = ["b1", "b2", "b4", "b5", "s0", "s1", "a9", "a8"]
    engine = world.engine
    assert metering.list_payer_events(engine, "pre", None, 100) == (expected, False)
    pages: list[str] = []
    cursor = None
    while True:
        ids, has_more = metering.list_payer_events(engine, "pre", cursor, 3, page=2)
        pages += ids
        if not has_more:
            break
        cursor = ids[-1]
    assert pages == expected
    assert metering.list_payer_events(engine, "post", None, 10) == (["b0", "b3", "b6"], False)
    assert metering.list_payer_events(engine, "pre", "b0", 10) == ([], False)  # not this payer's
    assert metering.list_payer_events(engine, "pre", "nope", 10) == ([], False)
    assert metering.list_payer_events(engine, "ghost", None, 10) == ([], False)


def test_bulk_document_reads_see_this_batch_then_the_store(twins: Twins) -> None:
    world = twins.batched
    world.call(lambda ctx: ctx.put_document("probe", "a", b"1"))
    world.reopen()  # nothing in memory: "a" comes from the store

    def run(ctx: Any) -> dict[str, bytes]:
        ctx.put_document("probe", "b", b"2")
        found: dict[str, bytes] = ctx.get_documents("probe", ["a", "b", "c", "a"])
        ctx.put_document("probe", "a", b"3")
        return {**found, **{f"again-{k}": v for k, v in ctx.get_documents("probe", ["a", "c"]).items()}}

    assert world.call(run) == {"a": b"1", "b": b"2", "again-a": b"3"}
    assert world.engine.store.read_documents("probe", ["a", "b", "zz"] * 5000) == {"a": b"3", "b": b"2"}
