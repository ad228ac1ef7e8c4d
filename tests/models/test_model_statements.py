"""Post-pay statements: closed at a period end, settled by one rail charge, past due suspends."""

from __future__ import annotations

from models_testkit import BANK_DELAY_S, MINUTE_NS, NS, Clock, World, card_fee, refused, utc_ns

from micropay.errors import PaymentDeclined, Refused
from micropay.models import payments, statements
from micropay.models.payments import ChargeRequest

APRIL = utc_ns(2026, 4, 1)
MAY = utc_ns(2026, 5, 1)


def _postpay(world: World, payer_id: str = "p1", credit_limit: int = 10_000) -> None:
    world.payer(payer_id, "postpay", credit_limit=credit_limit)


def test_closing_a_period_bills_exactly_the_tab_usage_before_its_end(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1", bps=1_000)
    world.charge("c1", "p1", "m1", 300)
    clock.set(APRIL - 30 * NS)  # 23:59:30 on the last day
    world.charge("c2", "p1", "m1", 200)
    clock.set(APRIL + 10 * NS)  # already the next period
    world.charge("c3", "p1", "m1", 100)

    (march,) = world.close_statements(["p1"], APRIL)

    assert (march.payer_id, march.amount_due, march.status, march.period_end_ns) == ("p1", 500, "open", APRIL)
    assert world.tab("p1") == -600  # closing moves no money
    clock.set(MAY)
    (april,) = world.close_statements(["p1"], MAY)
    assert april.amount_due == 100
    assert april.id != march.id


def test_a_period_end_inside_a_minute_bills_the_usage_before_that_minute(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    clock.set(APRIL - MINUTE_NS + NS)  # 23:59:01
    world.charge("c1", "p1", "m1", 70)
    clock.set(APRIL + 5 * NS)  # 00:00:05
    world.charge("c2", "p1", "m1", 30)
    clock.set(APRIL + 50 * NS)

    (statement,) = world.close_statements(["p1"], APRIL + 40 * NS)  # 00:00:40: minute 00:00 is not billed

    assert statement.amount_due == 70


def test_refunds_in_the_period_reduce_the_bill(world: World) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 300)
    world.charge("c2", "p1", "m1", 200)
    world.refund("r1", "c1", 120)

    world.clock.set(APRIL)

    (statement,) = world.close_statements(["p1"], APRIL)

    assert statement.amount_due == 380


def test_closing_the_same_period_again_answers_the_same_statements(world: World, clock: Clock) -> None:
    _postpay(world)
    _postpay(world, "p2")
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 300)
    world.charge("c2", "p2", "m1", 50)
    clock.set(APRIL + 3_600 * NS)
    first = world.close_statements(["p1", "p2"], APRIL)
    world.charge("c3", "p1", "m1", 10)  # usage after the period end changes nothing

    with world.moves_nothing():
        again = world.close_statements(["p1", "p2"], APRIL)

    assert again == first
    assert [s.amount_due for s in first] == [300, 50]


def test_payers_owing_nothing_get_no_statement(world: World, clock: Clock) -> None:
    _postpay(world, "idle")
    _postpay(world, "refunded")
    world.payer("prepaid")
    world.payer("hybrid-wallet", "hybrid", credit_limit=500)
    world.merchant("m1")
    world.fund("prepaid", 100)
    world.fund("hybrid-wallet", 100)
    world.charge("c1", "prepaid", "m1", 100)
    world.charge("c2", "hybrid-wallet", "m1", 100)  # all from the wallet
    world.charge("c3", "refunded", "m1", 100)
    world.refund("r3", "c3")
    clock.set(APRIL)

    assert world.close_statements(["idle", "refunded", "prepaid", "hybrid-wallet"], APRIL) == []


def test_a_hybrid_payer_is_billed_only_what_went_on_the_tab(world: World, clock: Clock) -> None:
    world.payer("p1", "hybrid", credit_limit=1_000)
    world.merchant("m1")
    world.fund("p1", 100)
    world.charge("c1", "p1", "m1", 250)
    clock.set(APRIL)

    (statement,) = world.close_statements(["p1"], APRIL)

    assert statement.amount_due == 150


def test_a_period_end_in_the_future_is_refused(world: World, clock: Clock) -> None:
    _postpay(world)

    refused(world, statements.close_statements(["p1"], clock.now_ns + 1), "period_end_in_future", Refused)


def test_settling_by_card_pays_the_statement_and_credits_the_tab(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (statement,) = world.close_statements(["p1"], APRIL)

    paid = world.settle_statement(statement.id)

    assert (paid.status, paid.paid_at_ns, paid.attempts) == ("paid", APRIL, 1)
    assert world.read_statement(statement.id) == paid
    assert world.tab("p1") == 0
    assert world.rail_fees() == -card_fee(500)
    assert world.bank() == -(500 - card_fee(500))
    assert world.clearing("card") == 0
    with world.moves_nothing():
        assert world.settle_statement(statement.id) == paid  # paying again collects nothing


def test_a_failed_settlement_makes_the_statement_past_due_and_suspends_the_payer(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (statement,) = world.close_statements(["p1"], APRIL)

    with world.moves_nothing():
        failed = world.settle_statement(statement.id, fail=True)

    assert (failed.status, failed.failure_code) == ("past_due", "card_declined")
    payer = world.read_payer("p1")
    assert (payer.status, payer.suspended_reason) == ("suspended", "past_due")
    refused(world, payments.charge(ChargeRequest("c2", "p1", "m1", 1)), "payer_suspended", PaymentDeclined)


def test_paying_a_past_due_statement_later_lifts_the_suspension(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (statement,) = world.close_statements(["p1"], APRIL)
    world.settle_statement(statement.id, fail=True)
    clock.advance(86_400)

    paid = world.settle_statement(statement.id)

    assert (paid.status, paid.attempts, paid.failure_code) == ("paid", 2, "")
    assert world.read_payer("p1").status == "active"
    assert world.tab("p1") == 0
    world.charge("c2", "p1", "m1", 1)


def test_the_suspension_lasts_until_every_past_due_statement_is_paid(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (march,) = world.close_statements(["p1"], APRIL)
    world.charge("c2", "p1", "m1", 200)
    clock.set(MAY)
    (april,) = world.close_statements(["p1"], MAY)
    world.settle_statement(march.id, fail=True)
    world.settle_statement(april.id, fail=True)

    world.settle_statement(march.id)
    assert world.read_payer("p1").status == "suspended"

    world.settle_statement(april.id)
    assert world.read_payer("p1").status == "active"
    assert world.tab("p1") == 0


def test_an_admin_suspended_payer_is_not_reactivated_by_paying(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (statement,) = world.close_statements(["p1"], APRIL)
    world.suspend("p1")

    world.settle_statement(statement.id, fail=True)
    assert world.read_payer("p1").suspended_reason == "admin"
    world.settle_statement(statement.id)

    payer = world.read_payer("p1")
    assert (payer.status, payer.suspended_reason) == ("suspended", "admin")


def test_an_admin_suspension_of_a_past_due_payer_survives_paying(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (statement,) = world.close_statements(["p1"], APRIL)
    world.settle_statement(statement.id, fail=True)

    world.suspend("p1")  # the admin now suspends the payer on purpose
    world.settle_statement(statement.id)

    payer = world.read_payer("p1")
    assert (payer.status, payer.suspended_reason) == ("suspended", "admin")


def test_a_bank_settlement_is_processing_until_the_rail_answers(world: World, clock: Clock) -> None:
    _postpay(world)
    world.merchant("m1")
    world.charge("c1", "p1", "m1", 500)
    clock.set(APRIL)
    (statement,) = world.close_statements(["p1"], APRIL)

    with world.moves_nothing():
        processing = world.settle_statement(statement.id, rail="bank")
        assert processing.status == "processing"
        assert world.settle_statement(statement.id) == processing  # no second collection meanwhile
        clock.advance(BANK_DELAY_S - 1)
        assert world.call(statements.settle_processing([statement.id], world.rails)) == []

    clock.advance(1)
    (paid,) = world.call(statements.settle_processing([statement.id], world.rails))

    assert paid.status == "paid"
    assert world.tab("p1") == 0
    assert world.clearing("bank") == 0
