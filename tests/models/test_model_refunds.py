"""Refunds: back to where the money came from, paid part first, promo last, never past the charge."""

from __future__ import annotations

from models_testkit import Clock, World, refused

from micropay.errors import NotFound, Refused
from micropay.models import payments
from micropay.models.payments import RefundRequest
from micropay.models.rules import Sources


def test_a_full_refund_returns_a_wallet_charge_to_the_wallet_and_the_platform_keeps_its_fee(world: World) -> None:
    world.payer("p1")
    world.merchant("m1", bps=1_000)
    world.fund("p1", 1_000)
    world.charge("c1", "p1", "m1", 400)  # fee 40, merchant 360

    refund = world.refund("r1", "c1")

    assert (refund.amount, refund.returned, refund.status) == (400, Sources(0, 400, 0), "succeeded")
    assert world.wallet("p1") == 1_000
    assert world.earnings("m1") == -40  # the merchant returns the full amount
    assert world.fees() == 40
    assert world.read_charge("c1").refunded == Sources(0, 400, 0)
    assert world.read_charge("c1").refund_ids == ("r1",)


def test_a_partial_refund_returns_the_paid_part_before_the_promo_part(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 1_000)
    voucher = world.voucher("PROMO-A", 100, expires_in_s=3_600)
    world.redeem("p1", "PROMO-A")
    world.charge("c1", "p1", "m1", 300)  # promo 100, wallet 200

    first = world.refund("r1", "c1", 150)
    assert first.returned == Sources(promo=0, wallet=150, tab=0)
    assert (world.wallet("p1"), world.promo("p1")) == (950, 0)

    second = world.refund("r2", "c1", 100)
    assert second.returned == Sources(promo=50, wallet=50, tab=0)
    assert (world.wallet("p1"), world.promo("p1")) == (1_000, 50)
    assert world.grants_remaining("p1") == {voucher.id: 50}


def test_a_hybrid_refund_returns_wallet_then_tab_then_promo(world: World) -> None:
    world.payer("p1", "hybrid", credit_limit=1_000)
    world.merchant("m1")
    world.fund("p1", 100)
    world.voucher("PROMO-A", 50, expires_in_s=3_600)
    world.redeem("p1", "PROMO-A")
    world.charge("c1", "p1", "m1", 450)  # promo 50, wallet 100, tab 300

    returned = [world.refund(f"r{i}", "c1", amount).returned for i, amount in enumerate((80, 100, 250), start=1)]

    assert returned == [Sources(0, 80, 0), Sources(0, 20, 80), Sources(30, 0, 220)]
    assert (world.promo("p1"), world.wallet("p1"), world.tab("p1")) == (30, 100, 0)


def test_promo_credit_refunded_goes_back_to_the_grants_it_was_taken_from(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    soon = world.voucher("SOON-040", 40, expires_in_s=600)
    late = world.voucher("LATE-100", 100, expires_in_s=3_600)
    world.redeem("p1", "SOON-040")
    world.redeem("p1", "LATE-100")
    world.charge("c1", "p1", "m1", 70)  # soon 40, late 30

    world.refund("r1", "c1", 20)  # the last taken comes back first
    assert world.grants_remaining("p1") == {soon.id: 0, late.id: 90}

    world.refund("r2", "c1")
    assert world.grants_remaining("p1") == {soon.id: 40, late.id: 100}
    assert world.promo("p1") == 140


def test_refunds_never_exceed_what_was_charged(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 1_000)
    world.charge("c1", "p1", "m1", 700)
    world.refund("r1", "c1", 200)

    refused(world, payments.refund(RefundRequest("r2", "c1", 501)), "refund_exceeds_charge", Refused)

    assert world.refund("r3", "c1").amount == 500  # the rest, by default
    refused(world, payments.refund(RefundRequest("r4", "c1", 1)), "refund_exceeds_charge", Refused)
    refused(world, payments.refund(RefundRequest("r5", "c1")), "refund_exceeds_charge", Refused)
    assert world.read_charge("c1").amount_refunded == 700
    assert world.wallet("p1") == 1_000


def test_refunding_an_unknown_charge_is_not_found(world: World) -> None:
    refused(world, payments.refund(RefundRequest("r1", "nope")), "charge_not_found", NotFound)


def test_a_merchant_may_refund_more_than_it_currently_holds(world: World) -> None:
    world.payer("p1")
    world.merchant("m1", bps=5_000)
    world.fund("p1", 100)
    world.charge("c1", "p1", "m1", 100)  # merchant nets 50

    world.refund("r1", "c1")

    assert world.earnings("m1") == -50
    assert world.wallet("p1") == 100


def test_promo_refunded_after_its_grant_expired_is_swept_to_the_reversal_account(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.merchant("m1")
    voucher = world.voucher("PROMO-A", 100, expires_in_s=60)
    world.redeem("p1", "PROMO-A")
    world.charge("c1", "p1", "m1", 60)
    clock.advance(61)
    assert world.expire_promo("p1") == 40
    assert world.grants_remaining("p1") == {}

    world.refund("r1", "c1")

    assert world.promo("p1") == 60
    assert world.grants_remaining("p1") == {voucher.id: 60}  # back, but already expired: not spendable
    assert world.expire_promo("p1") == 60
    assert world.promo("p1") == 0
    assert world.balance("platform:promo_expired:USD") == 100
