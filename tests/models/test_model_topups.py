"""Top-ups (cash-in) through the simulated card and bank rails."""

from __future__ import annotations

import pytest
from models_testkit import BANK_DELAY_S, BANK_FEE_CENTS, Clock, World, card_fee, refused

from micropay.errors import NotFound, PaymentDeclined
from micropay.models import payments
from micropay.models.payments import TopupRequest
from micropay.settlement.rails import SimulatedCardRail


@pytest.mark.parametrize(("amount", "fee"), [(2_000, 88), (1_000, 59), (1_001, 60), (100, 33)])
def test_card_fee_is_thirty_cents_plus_2_9_percent_rounded_up(amount: int, fee: int) -> None:
    assert card_fee(amount) == fee  # the hand-computed table the top-ups below are checked against
    assert SimulatedCardRail().fee(amount, 2) == fee


@pytest.mark.parametrize("amount", [2_000, 1_001, 100])
def test_card_topup_credits_the_full_amount_and_books_the_fee_as_platform_expense(world: World, amount: int) -> None:
    world.payer("p1")

    topup = world.topup("t1", "p1", amount)

    fee = card_fee(amount)
    assert (topup.status, topup.fee, topup.rail) == ("succeeded", fee, "card")
    assert world.wallet("p1") == amount
    assert world.rail_fees() == -fee  # an expense: debited
    assert world.bank() == -(amount - fee)  # cash at the bank, net of the fee
    assert world.clearing("card") == 0


def test_a_topup_smaller_than_the_card_fee_still_leaves_the_clearing_account_at_zero(world: World) -> None:
    world.payer("p1")

    topup = world.topup("t1", "p1", 10)

    assert topup.fee == card_fee(10) == 31
    assert world.wallet("p1") == 10
    assert world.rail_fees() == -31
    assert world.clearing("card") == 0
    assert world.bank() == 21  # the bank paid out 0.21 more than it took in


def test_a_simulated_card_failure_credits_nothing(world: World) -> None:
    world.payer("p1")

    with world.moves_nothing():
        topup = world.topup("t1", "p1", 1_000, fail=True)

    assert (topup.status, topup.failure_code, topup.fee) == ("failed", "card_declined", 0)
    assert world.read_topup("t1") == topup


def test_a_bank_topup_is_pending_until_settled_after_the_delay(world: World, clock: Clock) -> None:
    world.payer("p1")

    with world.moves_nothing():
        topup = world.topup("t1", "p1", 5_000, rail="bank")
    assert topup.status == "pending"
    assert topup.settles_at_ns == clock.now_ns + BANK_DELAY_S * 1_000_000_000

    clock.advance(BANK_DELAY_S - 1)
    with world.moves_nothing():
        assert world.call(payments.settle_topups(["t1"], world.rails)) == []
    assert world.read_topup("t1").status == "pending"

    clock.advance(1)
    (settled,) = world.call(payments.settle_topups(["t1"], world.rails))

    assert (settled.status, settled.fee) == ("succeeded", BANK_FEE_CENTS)
    assert world.read_topup("t1") == settled
    assert world.wallet("p1") == 5_000
    assert world.rail_fees() == -BANK_FEE_CENTS
    assert world.bank() == -(5_000 - BANK_FEE_CENTS)
    assert world.clearing("bank") == 0


def test_settling_a_bank_topup_twice_credits_it_once(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.topup("t1", "p1", 5_000, rail="bank")
    clock.advance(BANK_DELAY_S)
    world.call(payments.settle_topups(["t1"], world.rails))

    with world.moves_nothing():
        assert world.call(payments.settle_topups(["t1", "unknown"], world.rails)) == []
    assert world.wallet("p1") == 5_000


def test_a_bank_topup_that_fails_at_settlement_credits_nothing(world: World, clock: Clock) -> None:
    world.payer("p1")
    world.topup("t1", "p1", 5_000, rail="bank", fail=True)
    clock.advance(BANK_DELAY_S)

    with world.moves_nothing():
        (settled,) = world.call(payments.settle_topups(["t1"], world.rails))

    assert (settled.status, settled.failure_code) == ("failed", "bank_transfer_failed")
    assert world.wallet("p1") == 0


def test_a_suspended_payer_cannot_top_up(world: World) -> None:
    world.payer("p1")
    world.suspend("p1")

    refused(
        world, payments.topup(TopupRequest("t1", "p1", 1_000, "card"), world.rails), "payer_suspended", PaymentDeclined
    )


def test_an_unknown_rail_or_payer_is_not_found(world: World) -> None:
    world.payer("p1")

    refused(world, payments.topup(TopupRequest("t1", "p1", 1_000, "pigeon"), world.rails), "rail_not_found", NotFound)
    refused(
        world, payments.topup(TopupRequest("t1", "nobody", 1_000, "card"), world.rails), "payer_not_found", NotFound
    )


def test_card_fee_scales_with_the_ledger_minor_unit(world: World) -> None:
    world.ledger("USD6", 6)  # micro-dollars
    world.payer("p6", ledger="USD6")

    topup = world.topup("t1", "p6", 1_000_000)  # one dollar

    assert topup.fee == 300_000 + 29_000
    assert world.wallet("p6", "USD6") == 1_000_000
    assert world.clearing("card", "USD6") == 0
