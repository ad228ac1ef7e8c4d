"""``charge_many`` (many charges in one operation: each payer's room read once and carried from
charge to charge, the payers' and merchants' records written once) against the same charges
made one operation each: the same answers, the same records, the same balances, for random
mixes of payers of every mode, promo grants, caps, suspended and unknown payers, replays,
conflicting replays and refusals.

Both paths decide with the one set of collection rules (``models.collection``); the metering
batch path is checked against its one-by-one path the same way in ``tests/metering``."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_testkit import DAY_NS, USD, Clock, World

from micropay.errors import ApiError
from micropay.models import chart, payments
from micropay.models.payments import ChargeRequest, ChargeResult, MerchantRequest
from micropay.models.records import SpendCap, decode_merchant_holds
from micropay.models.tab import read_accrual

PAYERS = ["pre", "cap", "post", "hyb", "sus", "poor"]
MERCHANTS = ["m0", "m1"]


def build(path: Path, clock: Clock) -> World:
    world = World(path, clock)
    world.ledger(USD, 2)
    world.merchant("m0", bps=500, fixed=1)
    world.call(payments.create_merchant(MerchantRequest("m1", USD, payout_hold_days=3), world.rails))
    world.payer("pre")
    world.fund("pre", 600)
    world.voucher("SOON", 70, expires_in_s=3_600)
    world.voucher("LATER", 90, expires_in_s=7_200)
    world.redeem("pre", "LATER")
    world.redeem("pre", "SOON")
    world.payer("cap", caps=(SpendCap("day", 250), SpendCap("month", 400)))
    world.fund("cap", 5_000)
    world.payer("post", "postpay", credit_limit=300)
    world.payer("hyb", "hybrid", credit_limit=150)
    world.fund("hyb", 100)
    world.voucher("HYBRID", 40, expires_in_s=3_600)
    world.redeem("hyb", "HYBRID")
    world.payer("sus")
    world.fund("sus", 1_000)
    world.suspend("sus")
    world.payer("poor")
    world.fund("poor", 40)
    return world


def view(result: ChargeResult | BaseException) -> tuple[Any, ...]:
    if isinstance(result, ApiError):
        return ("error", type(result).__name__, result.code)
    if isinstance(result, BaseException):
        return ("raised", type(result).__name__, str(result))
    record, replayed = result
    return ("charge", replayed, record)


def state_of(world: World) -> dict[str, Any]:
    return {
        "balances": world.snapshot(),
        "payers": {
            payer: (
                world.read_cap_usage(payer),
                world.read_promo(payer),
                world.call(lambda ctx, payer=payer: read_accrual(ctx, payer)),
                world.read_payer(payer),
            )
            for payer in PAYERS
        },
        "holds": {
            merchant: None if body is None else decode_merchant_holds(body)
            for merchant in MERCHANTS
            for body in [world.engine.document(payments.MERCHANT_HOLDS, merchant)]
        },
    }


charge_requests = st.builds(
    ChargeRequest,
    id=st.sampled_from([f"c{i}" for i in range(40)]),
    payer_id=st.sampled_from(PAYERS * 4 + ["ghost"]),
    merchant_id=st.sampled_from(MERCHANTS * 6 + ["nobody"]),
    amount=st.integers(1, 160).map(lambda a: a if a <= 150 else (0, -5, 10**20, 260, 301)[a % 5]),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(charge_requests, min_size=5, max_size=60), later_s=st.sampled_from([0, 5_000]))
def test_charge_many_answers_and_books_what_one_operation_per_charge_does(
    requests: list[ChargeRequest], later_s: int
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="micropay-charge-many-"))
    clock = Clock()
    worlds: list[World] = []
    try:
        alone = build(directory / "alone.db", clock)
        worlds.append(alone)
        grouped = build(directory / "grouped.db", clock)
        worlds.append(grouped)
        clock.advance(later_s)  # past the sooner grant's expiry, or not
        one_by_one: list[tuple[Any, ...]] = []
        for request in requests:
            try:
                one_by_one.append(view(alone.call(payments.charge(request))))
            except ApiError as error:
                one_by_one.append(view(error))
        together = [view(result) for result in grouped.call(payments.charge_many(requests))]
        assert together == one_by_one
        assert state_of(grouped) == state_of(alone)
        for charge_id in {request.id for request in requests}:
            assert grouped.engine.document(payments.CHARGE, charge_id) == alone.engine.document(
                payments.CHARGE, charge_id
            )
        for world in (alone, grouped):
            world.check_books()
    finally:
        for world in worlds:
            world.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_one_operation_spends_the_soonest_grant_first_across_its_charges(world: World) -> None:
    world.merchant("m1")
    world.payer("p1")
    world.fund("p1", 100)
    world.voucher("LATE", 50, expires_in_s=2 * DAY_NS // 10**9)
    world.voucher("SOON", 30, expires_in_s=3_600)
    world.redeem("p1", "LATE")
    world.redeem("p1", "SOON")
    requests = [ChargeRequest(f"c{i}", "p1", "m1", 20) for i in range(5)]
    results = world.call(payments.charge_many(requests))
    taken = [result[0].promo_taken for result in results if not isinstance(result, Exception)]
    soon, late = (grant.id for grant in sorted(world.read_promo("p1").grants, key=lambda g: g.expires_at_ns))
    assert taken == [((soon, 20),), ((soon, 10), (late, 10)), ((late, 20),), ((late, 20),), ()]
    assert world.promo("p1") == 0 and world.wallet("p1") == 100 - 20
    assert world.grants_remaining("p1") == {soon: 0, late: 0}
    assert world.balance(chart.merchant_account("m1")) == 100
