"""Vouchers (redeemed once, expiring), promo expiry, and time passes."""

from __future__ import annotations

from models_testkit import NS, Clock, World, refused

from micropay.errors import NotFound, PaymentDeclined, Refused
from micropay.models import chart, promo
from micropay.models.passes import buy_pass, get_pass
from micropay.models.payments import ChargeRequest, charge


def test_redeeming_a_voucher_grants_promo_credit_funded_by_the_platform(world: World, clock: Clock) -> None:
    world.payer("p1")
    voucher = world.voucher("WELCOME-5", 500, expires_in_s=3_600)

    redeemed = world.redeem("p1", "WELCOME-5")

    assert (redeemed.redeemed_by, redeemed.redeemed_at_ns) == ("p1", clock.now_ns)
    assert world.promo("p1") == 500
    assert world.balance(chart.promo_funding_account("USD")) == -500
    assert world.grants_remaining("p1") == {voucher.id: 500}


def test_a_voucher_redeems_once_and_again_only_as_a_replay_for_the_same_payer(world: World) -> None:
    world.payer("p1")
    world.payer("p2")
    world.voucher("WELCOME-5", 500, expires_in_s=3_600)
    first = world.redeem("p1", "WELCOME-5")

    with world.moves_nothing():
        again, replayed = world.call(promo.redeem_voucher("p1", "WELCOME-5"))
    assert (again, replayed) == (first, True)

    refused(world, promo.redeem_voucher("p2", "WELCOME-5"), "voucher_already_redeemed", Refused)
    assert (world.promo("p1"), world.promo("p2")) == (500, 0)


def test_a_voucher_expires_at_its_expiry_instant(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.voucher("LATE-CODE", 500, expires_in_s=60)
    clock.advance(60)

    refused(world, promo.redeem_voucher("p1", "LATE-CODE"), "voucher_expired", Refused)


def test_a_voucher_redeemed_a_nanosecond_before_expiry_counts(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.voucher("JUST-INTIME", 500, expires_in_s=60)
    clock.advance(ns=60 * NS - 1)

    assert world.redeem("p1", "JUST-INTIME").redeemed_by == "p1"


def test_an_unknown_voucher_code_is_not_found(world: World) -> None:
    world.payer("p1")
    world.voucher("REAL-CODE", 500, expires_in_s=60)

    refused(world, promo.redeem_voucher("p1", "FAKE-CODE"), "voucher_not_found", NotFound)


def test_the_voucher_code_itself_is_not_stored(world: World) -> None:
    voucher = world.voucher("SECRET-CODE-123", 500, expires_in_s=60)

    assert "SECRET-CODE-123" not in repr(voucher)
    assert voucher.code_hash == promo.code_hash("SECRET-CODE-123")


def test_promo_expiry_moves_only_unspent_expired_credit_to_the_reversal_account(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.merchant("m1")
    short = world.voucher("SHORT-100", 100, expires_in_s=60)
    long = world.voucher("LONG-0200", 200, expires_in_s=3_600)
    world.redeem("p1", "SHORT-100")
    world.redeem("p1", "LONG-0200")
    world.charge("c1", "p1", "m1", 30)  # from the short one
    clock.advance(60)

    moved = world.expire_promo("p1")

    assert moved == 70
    assert world.promo("p1") == 200
    assert world.balance(chart.promo_expired_account("USD")) == 70
    assert world.grants_remaining("p1") == {long.id: 200}
    assert short.id not in world.grants_remaining("p1")
    with world.moves_nothing():
        assert world.expire_promo("p1") == 0


def test_expired_promo_credit_is_not_spendable_even_before_the_sweep(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.voucher("SHORT-100", 100, expires_in_s=60)
    world.redeem("p1", "SHORT-100")
    world.fund("p1", 10)
    clock.advance(60)

    refused(world, charge(ChargeRequest("c1", "p1", "m1", 50)), "insufficient_funds", PaymentDeclined)
    assert world.charge("c2", "p1", "m1", 10).sources.promo == 0


def test_a_pass_is_paid_as_one_charge_and_is_active_for_its_duration(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.merchant("m1", bps=1_000)
    world.fund("p1", 1_000)
    bought_at = clock.now_ns

    day_pass = world.buy_pass("day1", "p1", "m1", price=300, duration_s=86_400)

    assert (day_pass.valid_from_ns, day_pass.valid_until_ns) == (bought_at, bought_at + 86_400 * NS)
    assert world.wallet("p1") == 700
    assert (world.earnings("m1"), world.fees()) == (270, 30)
    record = world.read_charge(day_pass.charge_id)
    assert (record.kind, record.amount) == ("pass", 300)
    assert day_pass.active(clock.now_ns)
    clock.advance(ns=86_400 * NS - 1)
    assert world.read_pass("day1").active(clock.now_ns)
    clock.advance(ns=1)
    assert not world.read_pass("day1").active(clock.now_ns)
    assert not day_pass.active(bought_at - 1)


def test_a_pass_the_payer_cannot_afford_is_not_issued(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 100)

    refused(world, buy_pass("day1", "p1", "m1", 300, 86_400), "insufficient_funds", PaymentDeclined)
    refused(world, buy_pass("day1", "p1", "m1", 300, 0), "invalid_duration", Refused)

    refused(world, lambda ctx: get_pass(ctx, "day1"), "pass_not_found", NotFound)
