"""Every create is idempotent by its id: a replay answers the first record and moves nothing;
the same id with a different body is ``exists_with_different_fields``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from models_testkit import Clock, World, refused

from micropay.engine import BatchContext
from micropay.errors import Conflict
from micropay.models import payments, promo
from micropay.models.passes import buy_pass
from micropay.models.payments import ChargeRequest, MerchantRequest, PayerRequest, RefundRequest, TopupRequest
from micropay.models.records import SpendCap

Op = Callable[[BatchContext], Any]


def _setup(world: World) -> None:
    world.payer("p1")
    world.merchant("m1", bps=300, fixed=2)
    world.fund("p1", 10_000)
    world.charge("c0", "p1", "m1", 1_000)


def _cases(world: World) -> dict[str, tuple[Op, Op]]:
    """Per kind of create: (the operation, the same id with another body)."""
    rails = world.rails
    expires = world.clock.now_ns + 3_600 * 1_000_000_000
    return {
        "payer": (
            payments.create_payer(PayerRequest("p2", "USD", "hybrid", 500, (SpendCap("day", 900),)), rails),
            payments.create_payer(PayerRequest("p2", "USD", "hybrid", 600, (SpendCap("day", 900),)), rails),
        ),
        "merchant": (
            payments.create_merchant(MerchantRequest("m2", "USD", 250, 1), rails),
            payments.create_merchant(MerchantRequest("m2", "USD", 251, 1), rails),
        ),
        "charge": (
            payments.charge(ChargeRequest("c1", "p1", "m1", 700, "an article")),
            payments.charge(ChargeRequest("c1", "p1", "m1", 701, "an article")),
        ),
        "refund": (
            payments.refund(RefundRequest("r1", "c0", 300)),
            payments.refund(RefundRequest("r1", "c0", 200)),
        ),
        "topup": (
            payments.topup(TopupRequest("t1", "p1", 2_000, "card"), rails),
            payments.topup(TopupRequest("t1", "p1", 2_000, "bank"), rails),
        ),
        "voucher": (
            promo.create_voucher("GIFT-CODE", "USD", 500, expires, rails),
            promo.create_voucher("GIFT-CODE", "USD", 501, expires, rails),
        ),
        "pass": (
            buy_pass("pass1", "p1", "m1", 400, 3_600),
            buy_pass("pass1", "p1", "m1", 400, 7_200),
        ),
    }


KINDS = ["payer", "merchant", "charge", "refund", "topup", "voucher", "pass"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_replayed_create_answers_the_first_record_and_moves_nothing_twice(
    world: World, clock: Clock, kind: str
) -> None:
    _setup(world)
    create, _ = _cases(world)[kind]
    first, first_replayed = world.call(create)
    clock.advance(5)  # a replay later still answers the record as first made

    with world.moves_nothing():
        again, replayed = world.call(create)

    assert (first_replayed, replayed) == (False, True)
    assert again == first


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_id_with_a_different_body_is_exists_with_different_fields(world: World, kind: str) -> None:
    _setup(world)
    create, different = _cases(world)[kind]
    first, _ = world.call(create)

    refused(world, different, "exists_with_different_fields", Conflict)

    again, replayed = world.call(create)
    assert (again, replayed) == (first, True)


def test_a_refund_replayed_without_an_amount_matches_the_first(world: World) -> None:
    _setup(world)
    first = world.refund("r1", "c0", 300)

    with world.moves_nothing():
        assert world.call(payments.refund(RefundRequest("r1", "c0"))) == (first, True)


def test_a_failed_card_topup_replays_as_failed_and_never_credits(world: World) -> None:
    world.payer("p1")
    failed = world.topup("t1", "p1", 1_000, fail=True)

    with world.moves_nothing():
        assert world.call(payments.topup(TopupRequest("t1", "p1", 1_000, "card"), world.rails)) == (failed, True)
