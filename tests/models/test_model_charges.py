"""Charges: the platform fee, where the money comes from in each payer mode, and declines."""

from __future__ import annotations

import pytest
from models_testkit import World, refused

from micropay.errors import NotFound, PaymentDeclined, Refused
from micropay.models import payments
from micropay.models.payments import ChargeRequest
from micropay.models.records import SpendCap
from micropay.models.rules import Sources, platform_fee


@pytest.mark.parametrize(
    ("amount", "bps", "fixed", "fee"),
    [
        (700, 500, 1, 36),  # 1 + 700 * 500 // 10000 = 1 + 35
        (10_000, 290, 30, 320),  # 30 + 290
        (99, 250, 0, 2),  # 99 * 250 // 10000 = 2.475 floored
        (1, 10_000, 0, 1),  # 100 % of one cent
        (30, 0, 50, 30),  # fixed part alone is more than the charge: capped at the amount
        (5, 0, 0, 0),  # no fee configured
    ],
)
def test_platform_fee_is_fixed_plus_bps_floored_and_never_above_the_amount(
    amount: int, bps: int, fixed: int, fee: int
) -> None:
    assert platform_fee(amount, bps, fixed) == fee


def test_charge_splits_the_platform_fee_from_the_merchant_at_charge_time(world: World) -> None:
    world.payer("p1")
    world.merchant("m1", bps=500, fixed=1)
    world.fund("p1", 2_000)

    charge = world.charge("c1", "p1", "m1", 700)

    assert (charge.platform_fee, charge.merchant_amount, charge.status) == (36, 664, "succeeded")
    assert world.wallet("p1") == 1_300
    assert world.earnings("m1") == 664
    assert world.fees() == 36


def test_a_fee_as_large_as_the_charge_leaves_the_merchant_nothing(world: World) -> None:
    world.payer("p1")
    world.merchant("m1", fixed=50)
    world.fund("p1", 100)

    charge = world.charge("c1", "p1", "m1", 30)

    assert (charge.platform_fee, charge.merchant_amount) == (30, 0)
    assert (world.wallet("p1"), world.earnings("m1"), world.fees()) == (70, 0, 30)


def test_prepay_spends_promo_credit_before_the_wallet(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 1_000)
    world.voucher("PROMO-A", 300, expires_in_s=3_600)
    world.redeem("p1", "PROMO-A")

    first = world.charge("c1", "p1", "m1", 200)
    second = world.charge("c2", "p1", "m1", 250)

    assert first.sources == Sources(promo=200, wallet=0, tab=0)
    assert second.sources == Sources(promo=100, wallet=150, tab=0)
    assert (world.promo("p1"), world.wallet("p1"), world.earnings("m1")) == (0, 850, 450)


def test_prepay_spends_the_soonest_expiring_grant_first(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    late = world.voucher("LATE-100", 100, expires_in_s=7_200)
    soon = world.voucher("SOON-050", 50, expires_in_s=3_600)
    world.redeem("p1", "LATE-100")  # redeemed first, but expires last
    world.redeem("p1", "SOON-050")

    charge = world.charge("c1", "p1", "m1", 80)

    assert charge.promo_taken == ((soon.id, 50), (late.id, 30))
    assert world.grants_remaining("p1") == {late.id: 70, soon.id: 0}
    assert world.promo("p1") == 70


def test_prepay_declines_insufficient_funds_when_promo_and_wallet_fall_short(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 100)
    world.voucher("PROMO-A", 50, expires_in_s=3_600)
    world.redeem("p1", "PROMO-A")

    refused(world, payments.charge(ChargeRequest("c1", "p1", "m1", 151)), "insufficient_funds", PaymentDeclined)

    assert world.charge("c2", "p1", "m1", 150).sources == Sources(promo=50, wallet=100, tab=0)


def test_postpay_adds_each_charge_to_the_tab_within_the_credit_limit(world: World) -> None:
    world.payer("p1", "postpay", credit_limit=1_000)
    world.merchant("m1", bps=1_000)

    world.charge("c1", "p1", "m1", 600)
    refused(world, payments.charge(ChargeRequest("c2", "p1", "m1", 401)), "credit_limit_exceeded", PaymentDeclined)
    last = world.charge("c3", "p1", "m1", 400)

    assert last.sources == Sources(promo=0, wallet=0, tab=400)
    assert world.tab("p1") == -1_000
    assert (world.earnings("m1"), world.fees()) == (900, 100)


def test_postpay_charges_go_to_the_tab_even_with_money_in_the_wallet(world: World) -> None:
    world.payer("p1", "postpay", credit_limit=500)
    world.merchant("m1")
    world.fund("p1", 1_000)

    assert world.charge("c1", "p1", "m1", 300).sources == Sources(0, 0, 300)
    assert (world.wallet("p1"), world.tab("p1")) == (1_000, -300)


def test_hybrid_spends_promo_and_wallet_first_and_only_the_rest_on_the_tab(world: World) -> None:
    world.payer("p1", "hybrid", credit_limit=500)
    world.merchant("m1")
    world.fund("p1", 100)
    world.voucher("PROMO-A", 50, expires_in_s=3_600)
    world.redeem("p1", "PROMO-A")

    charge = world.charge("c1", "p1", "m1", 400)

    assert charge.sources == Sources(promo=50, wallet=100, tab=250)
    assert (world.promo("p1"), world.wallet("p1"), world.tab("p1")) == (0, 0, -250)


def test_hybrid_pays_from_the_wallet_alone_while_it_suffices(world: World) -> None:
    world.payer("p1", "hybrid", credit_limit=500)
    world.merchant("m1")
    world.fund("p1", 100)

    assert world.charge("c1", "p1", "m1", 100).sources == Sources(0, 100, 0)
    assert world.tab("p1") == 0


def test_hybrid_declines_credit_limit_exceeded_past_wallet_plus_credit_limit(world: World) -> None:
    world.payer("p1", "hybrid", credit_limit=500)
    world.merchant("m1")
    world.fund("p1", 100)

    refused(world, payments.charge(ChargeRequest("c1", "p1", "m1", 601)), "credit_limit_exceeded", PaymentDeclined)

    assert world.charge("c2", "p1", "m1", 600).sources == Sources(0, 100, 500)


def _declining_world(world: World, code: str) -> ChargeRequest:
    """Set up a payer with money in every sub-balance whose next charge of 500 declines ``code``."""
    world.merchant("m1", bps=100, fixed=5)
    if code == "insufficient_funds":
        world.payer("p1")
        world.fund("p1", 459)  # with the promo credit: 499
    elif code == "credit_limit_exceeded":
        world.payer("p1", "hybrid", credit_limit=300)
        world.fund("p1", 150)
        world.charge("c0", "p1", "m1", 10)
    elif code == "spend_cap_exceeded":
        world.payer("p1", "hybrid", credit_limit=5_000, caps=(SpendCap("day", 600),))
        world.fund("p1", 1_000)
        world.charge("c0", "p1", "m1", 101)
    else:
        world.payer("p1", "hybrid", credit_limit=5_000)
        world.fund("p1", 1_000)
        world.charge("c0", "p1", "m1", 10)
        world.suspend("p1")
    world.voucher("PROMO-A", 40, expires_in_s=3_600)
    world.redeem("p1", "PROMO-A")
    return ChargeRequest("c1", "p1", "m1", 500)


@pytest.mark.parametrize(
    "code", ["insufficient_funds", "credit_limit_exceeded", "spend_cap_exceeded", "payer_suspended"]
)
def test_every_decline_code_moves_nothing_and_writes_no_charge(world: World, code: str) -> None:
    request = _declining_world(world, code)
    promo_before = world.read_promo("p1")
    usage_before = world.read_cap_usage("p1")

    refused(world, payments.charge(request), code, PaymentDeclined)

    assert world.engine.document(payments.CHARGE, "c1") is None
    assert world.read_promo("p1") == promo_before
    assert world.read_cap_usage("p1") == usage_before


def test_a_declined_charge_id_may_be_retried_once_the_payer_can_pay(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 100)
    refused(world, payments.charge(ChargeRequest("c1", "p1", "m1", 300)), "insufficient_funds", PaymentDeclined)

    world.fund("p1", 200)

    assert world.charge("c1", "p1", "m1", 300).amount == 300
    assert world.wallet("p1") == 0


def test_charging_an_unknown_payer_or_merchant_is_not_found(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 100)

    refused(world, payments.charge(ChargeRequest("c1", "nobody", "m1", 10)), "payer_not_found", NotFound)
    refused(world, payments.charge(ChargeRequest("c1", "p1", "nobody", 10)), "merchant_not_found", NotFound)


def test_a_payer_and_merchant_on_different_ledgers_cannot_trade(world: World) -> None:
    world.ledger("EUR", 2)
    world.payer("p1")
    world.merchant("m-eur", ledger="EUR")
    world.fund("p1", 100)

    refused(world, payments.charge(ChargeRequest("c1", "p1", "m-eur", 10)), "ledger_mismatch", Refused)


def test_a_new_payer_is_active_with_empty_wallet_promo_and_tab(world: World) -> None:
    payer = world.payer("p1", "postpay", credit_limit=700, caps=(SpendCap("month", 5_000),))

    assert (payer.status, payer.mode, payer.credit_limit) == ("active", "postpay", 700)
    assert (world.wallet("p1"), world.promo("p1"), world.tab("p1")) == (0, 0, 0)
    tab = world.engine.account("payer:p1:tab:USD")
    assert tab is not None and tab.credit_limit == 700
    assert world.read_payer("p1") == payer


def test_a_credit_limit_cannot_drop_below_what_the_tab_owes(world: World) -> None:
    world.payer("p1", "postpay", credit_limit=1_000)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 600)

    refused(world, payments.update_payer("p1", credit_limit=599), "credit_limit_below_usage", Refused)

    assert world.call(payments.update_payer("p1", credit_limit=600)).credit_limit == 600
    refused(world, payments.charge(ChargeRequest("c2", "p1", "m1", 1)), "credit_limit_exceeded", PaymentDeclined)


def test_a_prepay_payer_has_no_credit_limit(world: World) -> None:
    world.payer("p1")

    refused(world, payments.update_payer("p1", credit_limit=100), "credit_limit_not_allowed", Refused)


def test_reactivating_a_suspended_payer_lets_it_charge_again(world: World) -> None:
    world.payer("p1")
    world.merchant("m1")
    world.fund("p1", 100)
    world.suspend("p1")

    payer = world.call(payments.update_payer("p1", status="active"))

    assert (payer.status, payer.suspended_reason) == ("active", "")
    assert world.charge("c1", "p1", "m1", 100).amount == 100
