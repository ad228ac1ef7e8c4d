"""Spending caps per UTC day and month: crossed never, reset at the period boundary."""

from __future__ import annotations

from collections.abc import Callable

from models_testkit import NS, Clock, World, refused, utc_ns

from micropay.engine import BatchContext
from micropay.errors import PaymentDeclined
from micropay.models import payments
from micropay.models.payments import ChargeRequest, Outcome
from micropay.models.records import Charge, SpendCap


def _charge(charge_id: str, amount: int) -> Callable[[BatchContext], Outcome[Charge]]:
    return payments.charge(ChargeRequest(charge_id, "p1", "m1", amount))


def test_a_daily_cap_admits_charges_up_to_it_and_declines_past_it(world: World) -> None:
    world.payer("p1", caps=(SpendCap("day", 1_000),))
    world.merchant("m1")
    world.fund("p1", 5_000)

    world.charge("c1", "p1", "m1", 600)
    world.charge("c2", "p1", "m1", 400)  # exactly the cap
    refused(world, _charge("c3", 1), "spend_cap_exceeded", PaymentDeclined)

    assert world.read_cap_usage("p1").amount("2026-03-10") == 1_000


def test_the_daily_cap_resets_at_utc_midnight(world: World, clock: Clock) -> None:
    world.payer("p1", caps=(SpendCap("day", 1_000),))
    world.merchant("m1")
    world.fund("p1", 5_000)
    clock.set(utc_ns(2026, 3, 10, 23, 59, 59))
    world.charge("c1", "p1", "m1", 1_000)
    clock.advance(ns=NS - 1)  # 23:59:59.999999999
    refused(world, _charge("c2", 1), "spend_cap_exceeded", PaymentDeclined)

    clock.advance(ns=1)  # 00:00 on the 11th

    world.charge("c3", "p1", "m1", 1_000)
    assert world.read_cap_usage("p1").used == (("2026-03-11", 1_000),)


def test_the_monthly_cap_holds_across_days_and_resets_on_the_first_of_the_month(world: World, clock: Clock) -> None:
    world.payer("p1", caps=(SpendCap("month", 1_500),))
    world.merchant("m1")
    world.fund("p1", 5_000)
    world.charge("c1", "p1", "m1", 1_000)
    clock.set(utc_ns(2026, 3, 31, 23, 0))
    world.charge("c2", "p1", "m1", 500)
    refused(world, _charge("c3", 1), "spend_cap_exceeded", PaymentDeclined)

    clock.set(utc_ns(2026, 4, 1))

    world.charge("c4", "p1", "m1", 1_500)
    assert world.read_cap_usage("p1").amount("2026-04") == 1_500


def test_day_and_month_caps_both_apply(world: World, clock: Clock) -> None:
    world.payer("p1", caps=(SpendCap("day", 400), SpendCap("month", 1_000)))
    world.merchant("m1")
    world.fund("p1", 5_000)
    for day in (10, 11):
        clock.set(utc_ns(2026, 3, day, 9))
        world.charge(f"c{day}", "p1", "m1", 400)
    refused(world, _charge("c-day", 1), "spend_cap_exceeded", PaymentDeclined)  # the day's 400 is spent

    clock.set(utc_ns(2026, 3, 12, 9))
    world.charge("c12", "p1", "m1", 200)
    refused(world, _charge("c-month", 1), "spend_cap_exceeded", PaymentDeclined)  # the month's 1000 is spent
    assert world.wallet("p1") == 4_000


def test_caps_count_charges_from_every_source(world: World) -> None:
    world.payer("p1", "hybrid", credit_limit=1_000, caps=(SpendCap("day", 500),))
    world.merchant("m1")
    world.fund("p1", 100)
    world.voucher("PROMO-50", 50, expires_in_s=3_600)
    world.redeem("p1", "PROMO-50")

    world.charge("c1", "p1", "m1", 500)  # promo 50, wallet 100, tab 350

    refused(world, _charge("c2", 1), "spend_cap_exceeded", PaymentDeclined)
    assert world.tab("p1") == -350


def test_raising_a_cap_takes_effect_for_the_next_charge(world: World) -> None:
    world.payer("p1", caps=(SpendCap("day", 100),))
    world.merchant("m1")
    world.fund("p1", 1_000)
    world.charge("c1", "p1", "m1", 100)
    refused(world, _charge("c2", 50), "spend_cap_exceeded", PaymentDeclined)

    world.call(payments.update_payer("p1", spend_caps=(SpendCap("day", 150),)))

    world.charge("c2", "p1", "m1", 50)
    refused(world, _charge("c3", 1), "spend_cap_exceeded", PaymentDeclined)
