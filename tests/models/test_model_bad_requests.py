"""Requests the models must refuse with a code, moving nothing and leaving the engine running
(an invariant failure would stop the engine for every caller)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from models_testkit import World, refused

from micropay.engine import BatchContext
from micropay.errors import ApiError, PaymentDeclined
from micropay.ledger import TransferRequest
from micropay.ledger.limits import AMOUNT_MAX
from micropay.models import chart, payments, promo
from micropay.models.passes import buy_pass
from micropay.models.payments import ChargeRequest, MerchantRequest, PayerRequest, RefundRequest, TopupRequest
from micropay.models.records import SpendCap

Op = Callable[[BatchContext], Any]


def _setup(world: World) -> None:
    world.payer("p1", "hybrid", credit_limit=1_000)
    world.merchant("m1")
    world.fund("p1", 1_000)
    world.charge("c0", "p1", "m1", 100)


def _requests(world: World) -> dict[str, tuple[Op, str]]:
    rails = world.rails
    later = world.clock.now_ns + 3_600 * 1_000_000_000
    return {
        "charge of zero": (payments.charge(ChargeRequest("c1", "p1", "m1", 0)), "amount_must_be_positive"),
        "negative charge": (payments.charge(ChargeRequest("c1", "p1", "m1", -5)), "amount_must_be_positive"),
        "huge charge": (payments.charge(ChargeRequest("c1", "p1", "m1", AMOUNT_MAX + 1)), "amount_exceeds_maximum"),
        "topup of zero": (payments.topup(TopupRequest("t1", "p1", 0, "card"), rails), "amount_must_be_positive"),
        "negative topup": (payments.topup(TopupRequest("t1", "p1", -1, "bank"), rails), "amount_must_be_positive"),
        "huge topup": (
            payments.topup(TopupRequest("t1", "p1", AMOUNT_MAX + 1, "card"), rails),
            "amount_exceeds_maximum",
        ),
        "negative refund": (payments.refund(RefundRequest("r1", "c0", -1)), "amount_must_be_positive"),
        "free pass": (buy_pass("x1", "p1", "m1", 0, 60), "amount_must_be_positive"),
        "voucher of zero": (promo.create_voucher("ZERO-CODE", "USD", 0, later, rails), "amount_must_be_positive"),
        "unknown mode": (payments.create_payer(PayerRequest("p2", "USD", "barter"), rails), "invalid_mode"),
        "weekly cap": (
            payments.create_payer(PayerRequest("p2", "USD", "prepay", 0, (SpendCap("week", 10),)), rails),
            "invalid_spend_caps",
        ),
        "negative cap": (
            payments.create_payer(PayerRequest("p2", "USD", "prepay", 0, (SpendCap("day", -1),)), rails),
            "invalid_spend_caps",
        ),
        "weekly cap update": (payments.update_payer("p1", spend_caps=(SpendCap("week", 10),)), "invalid_spend_caps"),
        "unknown status": (payments.update_payer("p1", status="frozen"), "invalid_status"),
        "prepay credit": (
            payments.create_payer(PayerRequest("p2", "USD", "prepay", credit_limit=10), rails),
            "credit_limit_not_allowed",
        ),
        "fee over 100%": (payments.create_merchant(MerchantRequest("m2", "USD", 10_001), rails), "invalid_fee"),
        "negative fixed fee": (
            payments.create_merchant(MerchantRequest("m2", "USD", 0, -1), rails),
            "invalid_fee",
        ),
        "unknown ledger": (payments.create_payer(PayerRequest("p2", "XXX", "prepay"), rails), "ledger_not_found"),
        "short code": (promo.create_voucher("abc", "USD", 5, later, rails), "invalid_code"),
    }


CASES = [
    "charge of zero",
    "negative charge",
    "huge charge",
    "topup of zero",
    "negative topup",
    "huge topup",
    "negative refund",
    "free pass",
    "voucher of zero",
    "unknown mode",
    "weekly cap",
    "negative cap",
    "weekly cap update",
    "unknown status",
    "prepay credit",
    "fee over 100%",
    "negative fixed fee",
    "unknown ledger",
    "short code",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_request_is_refused_with_a_code_and_the_engine_keeps_running(world: World, case: str) -> None:
    _setup(world)
    operation, code = _requests(world)[case]

    refused(world, operation, code, ApiError)

    assert world.engine.failure is None
    assert world.charge("c-after", "p1", "m1", 10).amount == 10  # still serving


def test_a_model_transfer_declined_mid_chain_is_a_decline_not_an_engine_failure(world: World) -> None:
    """``move`` names the leg that failed even when an earlier leg answers ``linked_event_failed``."""
    world.payer("p1")
    world.fund("p1", 100)
    legs = [
        TransferRequest("probe:1", chart.bank_account("USD"), chart.fees_account("USD"), 5, "USD"),
        TransferRequest("probe:2", chart.wallet_account("p1", "USD"), chart.fees_account("USD"), 101, "USD"),
    ]

    refused(world, lambda ctx: payments.move(ctx, legs, "insufficient_funds"), "insufficient_funds", PaymentDeclined)
    assert world.engine.failure is None
