"""Usage events rated and charged through the engine, one operation per event (the reference
path): worked examples per pricing model, fractions carrying, the telescoping property with
real money, idempotency, late and out-of-order events, closing a period with its minimum, and
declines that charge nothing and do not count."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering_testkit import PER_UNIT, Meter
from models_testkit import DAY_NS, NS, Clock, World, refused, utc_ns

from micropay.errors import Conflict, NotFound, Refused
from micropay.models import metering
from micropay.models.metering import EventRequest, PlanRequest
from micropay.models.records import SpendCap

GRADUATED = {
    "model": "graduated",
    "tiers": [
        {"up_to": 100, "unit_price": "0.5", "flat": "10"},
        {"up_to": 1000, "unit_price": "0.25", "flat": "5"},
        {"up_to": None, "unit_price": "0.1"},
    ],
}
MARCH = "2026-03"
FEBRUARY = "2026-02"


def amounts(meter: Meter, payer_id: str, plan_id: str, quantities: list[int]) -> list[int]:
    return [meter.event(payer_id, plan_id, quantity).amount for quantity in quantities]


@pytest.fixture
def alice(world: World) -> str:
    """A prepay payer with 100.00 in the wallet, and a merchant without fees."""
    world.merchant("acme")
    world.payer("alice")
    world.fund("alice", 10_000)
    return "alice"


# ----------------------------------------------------------------- worked examples
def test_per_unit_fractions_carry_into_whole_cents(world: World, meter: Meter, alice: str) -> None:
    meter.plan("calls", "acme", PER_UNIT)  # 0.0004 cent per call
    # Cumulative 1000, 2000, 3000, 5000, 5001 calls: 0.4, 0.8, 1.2, 2.0, 2.0004 cents.
    assert amounts(meter, alice, "calls", [1_000, 1_000, 1_000, 2_000, 1]) == [0, 0, 1, 1, 0]
    usage = meter.usage(alice, "calls", MARCH)
    assert (usage.quantity, usage.amount) == (5_001, 2)
    assert world.wallet(alice) == 10_000 - 2
    assert world.earnings("acme") == 2


def test_a_free_event_is_charged_zero_and_counts(meter: Meter, alice: str) -> None:
    meter.plan("calls", "acme", PER_UNIT)
    event = meter.event(alice, "calls", 10)
    assert (event.status, event.amount, event.decline_code, event.charge_id) == ("charged", 0, "", "")
    assert meter.usage(alice, "calls", MARCH).quantity == 10


def test_graduated_plan_with_flat_fees(world: World, meter: Meter, alice: str) -> None:
    meter.plan("tiers", "acme", GRADUATED)
    # Hand-computed in test_metering_pricing: 10.5, 60, 65.25, 290, 291 cumulative.
    assert amounts(meter, alice, "tiers", [1, 99, 1, 899, 10]) == [10, 50, 5, 225, 1]
    assert world.wallet(alice) == 10_000 - 291
    assert meter.usage(alice, "tiers", MARCH).amount == 291


def test_package_plan_rounds_up(world: World, meter: Meter, alice: str) -> None:
    meter.plan("packs", "acme", {"model": "package", "package_size": 1000, "package_price": "250"})
    assert amounts(meter, alice, "packs", [1, 999, 1, 1_500]) == [250, 0, 250, 250]
    assert world.wallet(alice) == 10_000 - 750


def test_each_event_charge_pays_the_platform_fee(world: World, meter: Meter) -> None:
    world.merchant("feeco", bps=1_000, fixed=1)  # 10 % + 1 cent per charge
    world.payer("bob")
    world.fund("bob", 1_000)
    meter.plan("p", "feeco", {"model": "per_unit", "unit_price": "30"})
    event = meter.event("bob", "p", 2)  # 60 cents: fee 1 + 6
    assert event.amount == 60 and event.charge_id == f"usage:{event.id}"
    assert meter.charge_amount(event.charge_id) == 60
    assert world.fees() == 7 and world.earnings("feeco") == 53
    assert world.wallet("bob") == 1_000 - 60


def test_postpay_events_go_on_the_tab_and_promo_is_spent_first(world: World, meter: Meter) -> None:
    world.merchant("acme")
    world.payer("pat", "postpay", credit_limit=1_000)
    world.payer("hugo", "hybrid", credit_limit=1_000)
    world.fund("hugo", 30)
    world.voucher("WELCOME", 20, expires_in_s=86_400)
    world.redeem("hugo", "WELCOME")
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "1"})
    assert meter.event("pat", "p", 40).amount == 40
    assert world.tab("pat") == -40
    assert meter.event("hugo", "p", 70).amount == 70  # 20 promo, 30 wallet, 20 tab
    assert (world.promo("hugo"), world.wallet("hugo"), world.tab("hugo")) == (0, 0, -20)
    assert sum(meter.accrued("hugo").values()) == 20


# ----------------------------------------------------------------- the telescoping property, with money
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    unit_price=st.sampled_from(["0.0004", "0.04", "0.333", "1.5", "7"]),
    parts=st.lists(st.integers(1, 5_000), min_size=1, max_size=12),
    data=st.data(),
)
def test_any_split_into_events_charges_floor_of_the_price_of_the_total(
    world: World, meter: Meter, unit_price: str, parts: list[int], data: st.DataObject
) -> None:
    serial = meter.next_id()
    payer, plan = f"payer-{serial}", f"plan-{serial}"
    world.merchant(f"m-{serial}")
    world.payer(payer)
    world.fund(payer, 1_000_000)
    meter.plan(plan, f"m-{serial}", {"model": "per_unit", "unit_price": unit_price})
    order = data.draw(st.permutations(parts))
    charged = amounts(meter, payer, plan, list(order))
    expected = math.floor(sum(parts) * Fraction(unit_price))
    assert sum(charged) == expected
    assert meter.usage(payer, plan, MARCH).amount == expected
    assert world.wallet(payer) == 1_000_000 - expected
    assert world.earnings(f"m-{serial}") == expected


# ----------------------------------------------------------------- idempotency
def test_a_replay_charges_nothing_and_answers_the_first_result(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.5"})
    first, replayed = meter.record(EventRequest("e-1", alice, "p", 3, world.clock.now_ns))
    assert (first.amount, replayed) == (1, False)  # 1.5 -> 1
    world.clock.advance(60)
    with world.moves_nothing():
        again, replayed = meter.record(EventRequest("e-1", alice, "p", 3, first.timestamp_ns))
        no_timestamp, _ = meter.record(EventRequest("e-1", alice, "p", 3))
    assert replayed and again == first == no_timestamp
    assert meter.usage(alice, "p", MARCH).quantity == 3
    # The next event still carries the fraction left by the first (1.5 + 1.5 = 3).
    assert meter.event(alice, "p", 3).amount == 2


@pytest.mark.parametrize(
    "changed",
    [
        {"quantity": 4},
        {"payer_id": "someone-else"},
        {"plan_id": "other"},
        {"timestamp_ns": utc_ns(2026, 3, 1)},
        {"metadata": (("k", "v"),)},
    ],
)
def test_the_same_id_with_another_body_is_a_conflict(
    world: World, meter: Meter, alice: str, changed: dict[str, object]
) -> None:
    meter.plan("p", "acme", PER_UNIT)
    request = EventRequest("e-1", alice, "p", 3, world.clock.now_ns)
    meter.record(request)
    fields = {
        "id": request.id,
        "payer_id": request.payer_id,
        "plan_id": request.plan_id,
        "quantity": request.quantity,
        "timestamp_ns": request.timestamp_ns,
        **changed,
    }
    refused(world, metering.record_event(EventRequest(**fields)), "exists_with_different_fields", Conflict)  # type: ignore[arg-type]


def test_a_declined_event_replays_as_declined(world: World, meter: Meter) -> None:
    world.merchant("acme")
    world.payer("broke")
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "5"})
    declined = meter.event("broke", "p", 1, event_id="e-1")
    assert (declined.status, declined.amount, declined.decline_code) == ("declined", 0, "insufficient_funds")
    world.fund("broke", 100)
    with world.moves_nothing():
        assert meter.event("broke", "p", 1, event_id="e-1") == declined
    assert meter.event("broke", "p", 1, event_id="e-2").amount == 5


def test_events_and_replays_survive_a_restart(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.5"})
    first = meter.event(alice, "p", 3, event_id="e-1")
    world.reopen()
    with world.moves_nothing():
        assert meter.event(alice, "p", 3, event_id="e-1") == first
    assert meter.event(alice, "p", 1).amount == 1  # 1.5 + 0.5: the carry survived too
    assert meter.read_event("e-1") == first


# ----------------------------------------------------------------- time: late, out of order, closed
def test_out_of_order_events_in_the_open_period(world: World, meter: Meter, alice: str, clock: Clock) -> None:
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.5"})
    clock.set(utc_ns(2026, 3, 25))
    late = meter.event(alice, "p", 1, at_ns=utc_ns(2026, 3, 20))
    early = meter.event(alice, "p", 1, at_ns=utc_ns(2026, 3, 5))
    assert (late.period, early.period) == (MARCH, MARCH)
    assert (late.amount, early.amount) == (0, 1)  # 0.5, then 1.0 cumulative in arrival order
    assert meter.usage(alice, "p", MARCH).quantity == 2


def test_a_late_event_counts_in_its_own_month_until_that_month_closes(
    world: World, meter: Meter, alice: str, clock: Clock
) -> None:
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.5"})
    february = meter.event(alice, "p", 3, at_ns=utc_ns(2026, 2, 27, 23, 59, 59))
    march = meter.event(alice, "p", 3)
    assert (february.period, february.amount, march.period, march.amount) == (FEBRUARY, 1, MARCH, 1)
    assert meter.usage(alice, "p", FEBRUARY).quantity == 3
    closed = meter.close("p", FEBRUARY)
    assert FEBRUARY in closed.plan.closed_periods
    refused(world, metering.record_event(meter.request(alice, "p", 1, at_ns=utc_ns(2026, 2, 28))), "period_closed")
    assert meter.event(alice, "p", 1, at_ns=utc_ns(2026, 3, 1)).amount == 1  # March stays open
    # A replay of a February event still answers, closed or not.
    assert meter.event(alice, "p", 3, event_id=february.id, at_ns=february.timestamp_ns) == february


def test_events_from_the_future_are_refused_past_the_skew(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", PER_UNIT)
    now = world.clock.now_ns
    assert meter.event(alice, "p", 1, at_ns=now + 299 * NS).status == "charged"
    refused(world, metering.record_event(meter.request(alice, "p", 1, at_ns=now + 301 * NS)), "timestamp_in_future")
    refused(world, metering.record_event(meter.request(alice, "p", 1, at_ns=-1)), "invalid_timestamp")


def test_closing_the_current_or_a_malformed_period_is_refused(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", PER_UNIT)
    refused(world, metering.close_period("p", MARCH), "period_not_over")
    refused(world, metering.close_period("p", "2026-04"), "period_not_over")
    for bad in ("2026-3", "2026-13", "26-03", "2026/02", "1969-12", "\uff12\uff10\uff12\uff16-02"):
        refused(world, metering.close_period("p", bad), "invalid_period")
    refused(world, metering.close_period("nope", FEBRUARY), "plan_not_found", NotFound)


# ----------------------------------------------------------------- the period minimum
def test_minimum_true_up_at_close(world: World, meter: Meter, clock: Clock) -> None:
    world.merchant("acme")
    for payer in ("small", "big", "none", "broke"):
        world.payer(payer)
    world.fund("small", 1_000)
    world.fund("big", 10_000)
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.5"}, minimum="500")
    clock.set(utc_ns(2026, 2, 10))
    assert meter.event("small", "p", 7).amount == 3  # 3.5
    assert meter.event("big", "p", 2_000).amount == 1_000
    assert meter.event("broke", "p", 1).amount == 0  # 0.5: free so far, but it counts
    assert meter.event("none", "p", 10).status == "declined"  # no usage at all
    clock.set(utc_ns(2026, 3, 2))
    result = meter.close("p", FEBRUARY)
    by_payer = {usage.payer_id: usage for usage in result.usages}
    assert set(by_payer) == {"small", "big", "broke"}
    assert (by_payer["small"].amount, by_payer["small"].minimum_charged) == (500, 497)
    assert (by_payer["big"].amount, by_payer["big"].minimum_charged) == (1_000, 0)
    assert by_payer["broke"].minimum_decline_code == "insufficient_funds"
    assert by_payer["broke"].amount == 0
    assert result.minimum_charged == 497 and [u.payer_id for u in result.declined] == ["broke"]
    assert world.wallet("small") == 1_000 - 500
    assert world.earnings("acme") == 500 + 1_000
    # Closing again charges nobody twice, and retries the declined true-up once it can pay.
    with world.moves_nothing():
        meter.close("p", FEBRUARY)
    world.fund("broke", 600)
    again = {usage.payer_id: usage for usage in meter.close("p", FEBRUARY).usages}
    assert (again["broke"].amount, again["broke"].minimum_charged, again["broke"].minimum_decline_code) == (
        500,
        500,
        "",
    )
    assert again["small"].minimum_charged == 497
    assert world.wallet("broke") == 100
    assert meter.usage("small", "p", FEBRUARY).amount == 500


def test_true_up_works_for_the_longest_ids(world: World, meter: Meter, clock: Clock) -> None:
    payer, plan = "p" * 64, "q" * 64
    world.merchant("acme")
    world.payer(payer)
    world.fund(payer, 1_000)
    meter.plan(plan, "acme", {"model": "per_unit", "unit_price": "1"}, minimum="10")
    meter.event(payer, plan, 1, event_id="e" * 64, at_ns=clock.now_ns - 30 * DAY_NS)
    result = meter.close(plan, FEBRUARY)
    assert result.errors == () and result.usages[0].minimum_charged == 9


def test_true_up_needs_a_closed_period(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", PER_UNIT, minimum="5")
    refused(world, metering.true_up("p", FEBRUARY, alice), "period_open")


# ----------------------------------------------------------------- declines
def test_declined_events_charge_nothing_and_do_not_count(world: World, meter: Meter) -> None:
    world.merchant("acme")
    world.payer("pia")
    world.fund("pia", 10)
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.75"})
    first = meter.event("pia", "p", 8)  # 6.0
    with world.moves_nothing():
        declined = meter.event("pia", "p", 8)  # would be 6 more; only 4 left
    assert (first.amount, declined.status, declined.amount, declined.decline_code) == (
        6,
        "declined",
        0,
        "insufficient_funds",
    )
    assert declined.charge_id == ""
    assert meter.usage("pia", "p", MARCH).quantity == 8  # the declined 8 do not count
    assert meter.event("pia", "p", 5).amount == 3  # 13 units: 9.75 -> 9, so 3 more
    assert meter.usage("pia", "p", MARCH).quantity == 13
    assert world.wallet("pia") == 1


def test_spend_cap_declines_events_past_it(world: World, meter: Meter) -> None:
    world.merchant("acme")
    world.payer("cap", caps=(SpendCap("day", 100),))
    world.fund("cap", 1_000)
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "1"})
    assert meter.event("cap", "p", 60).amount == 60
    over = meter.event("cap", "p", 50)
    assert (over.status, over.decline_code, over.amount) == ("declined", "spend_cap_exceeded", 0)
    assert meter.event("cap", "p", 40).amount == 40  # exactly to the cap
    assert world.read_cap_usage("cap").used[0][1] == 100
    assert meter.usage("cap", "p", MARCH).quantity == 100


def test_credit_limit_declines_postpay_events(world: World, meter: Meter) -> None:
    world.merchant("acme")
    world.payer("pat", "postpay", credit_limit=50)
    meter.plan("p", "acme", {"model": "per_unit", "unit_price": "1"})
    assert meter.event("pat", "p", 50).amount == 50
    assert meter.event("pat", "p", 1).decline_code == "credit_limit_exceeded"
    assert world.tab("pat") == -50


def test_a_suspended_payer_is_declined_even_for_free_units(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", PER_UNIT)
    world.suspend(alice)
    with world.moves_nothing():
        event = meter.event(alice, "p", 1)
    assert (event.status, event.decline_code, event.amount) == ("declined", "payer_suspended", 0)
    assert meter.usage(alice, "p", MARCH).quantity == 0


# ----------------------------------------------------------------- refusals (nothing recorded)
def test_bad_events_are_refused_and_move_nothing(world: World, meter: Meter, alice: str) -> None:
    meter.plan("p", "acme", PER_UNIT)
    meter.plan("small", "acme", {"model": "graduated", "tiers": [{"up_to": 10, "unit_price": "1"}]})
    world.ledger("EUR", 2)
    world.payer("euro", ledger="EUR")
    cases = [
        (EventRequest("x1", alice, "p", 0), "invalid_quantity", Refused),
        (EventRequest("x2", alice, "p", -5), "invalid_quantity", Refused),
        (EventRequest("x3", alice, "p", 10**12 + 1), "invalid_quantity", Refused),
        (EventRequest("x4", alice, "nope", 1), "plan_not_found", NotFound),
        (EventRequest("x5", "nobody", "p", 1), "payer_not_found", NotFound),
        (EventRequest("x6", "euro", "p", 1), "ledger_mismatch", Refused),
        (EventRequest("x7", alice, "small", 11), "quantity_over_maximum", Refused),
    ]
    for request, code, kind in cases:
        refused(world, metering.record_event(request), code, kind)
        assert world.engine.document(metering.USAGE_EVENT, request.id) is None
    assert meter.event(alice, "small", 10).amount == 10
    refused(world, metering.record_event(EventRequest("x8", alice, "small", 1)), "quantity_over_maximum")


def test_the_largest_quantities_and_amounts(world: World, meter: Meter, alice: str) -> None:
    meter.plan("dear", "acme", {"model": "per_unit", "unit_price": "1000000000000"})
    refused(world, metering.record_event(EventRequest("big", alice, "dear", 10_000)), "amount_exceeds_maximum")
    meter.plan("cheap", "acme", {"model": "per_unit", "unit_price": "0.000000000001"})
    event = meter.event(alice, "cheap", 10**12)
    assert event.amount == 1
    refused(world, metering.record_event(EventRequest("more", alice, "cheap", 1)), "quantity_over_maximum")


# ----------------------------------------------------------------- plans
def test_plan_create_replays_and_conflicts(world: World, meter: Meter) -> None:
    world.merchant("acme")
    plan = meter.plan("p", "acme", {"model": "per_unit", "unit_price": "0.0400"}, minimum="10.0")
    assert plan.pricing == {"model": "per_unit", "unit_price": "0.04"} and plan.minimum == "10"
    assert plan.ledger == "USD"
    same, replayed = world.call(
        metering.create_plan(PlanRequest("p", "acme", "api_calls", {"model": "per_unit", "unit_price": "0.04"}, "10"))
    )
    assert replayed and same == plan
    for pricing, minimum in ((PER_UNIT, "10"), ({"model": "per_unit", "unit_price": "0.04"}, None)):
        refused(
            world,
            metering.create_plan(PlanRequest("p", "acme", "api_calls", pricing, minimum)),
            "exists_with_different_fields",
            Conflict,
        )
    refused(world, metering.create_plan(PlanRequest("q", "nobody", "m", PER_UNIT)), "merchant_not_found", NotFound)
    refused(world, metering.create_plan(PlanRequest("q", "acme", "", PER_UNIT)), "invalid_metric")
    refused(world, metering.create_plan(PlanRequest("q", "acme", "m" * 65, PER_UNIT)), "invalid_metric")
    refused(world, metering.create_plan(PlanRequest("q", "acme", "m", {"model": "x"})), "invalid_pricing")


def test_usage_is_per_payer_plan_and_period(world: World, meter: Meter, alice: str) -> None:
    world.payer("bob")
    world.fund("bob", 1_000)
    meter.plan("p1", "acme", {"model": "per_unit", "unit_price": "1"})
    meter.plan("p2", "acme", {"model": "per_unit", "unit_price": "2"})
    for payer, plan, quantity in itertools.product((alice, "bob"), ("p1", "p2"), (1, 2)):
        meter.event(payer, plan, quantity)
    assert (meter.usage(alice, "p1", MARCH).quantity, meter.usage(alice, "p2", MARCH).amount) == (3, 6)
    assert meter.usage("bob", "p2", MARCH).amount == 6
    assert meter.usage("bob", "p2", FEBRUARY).quantity == 0
