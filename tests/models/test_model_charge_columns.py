"""The column path of ``charge_many`` (``models.charge_columns``): it makes an operation's
charges only when each is certain to succeed as it would alone, and then answers, records and
books exactly what the charge-by-charge path does; on any doubt it moves and writes nothing and
leaves the operation to that path."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_testkit import USD, Clock, World

from micropay.engine import BatchContext
from micropay.ledger import TransferRequest
from micropay.models import chart, payments
from micropay.models.charge_columns import ColumnCharges, charge_columns
from micropay.models.payments import ChargeRequest, ChargeResult, MerchantRequest
from micropay.models.records import SpendCap, decode_charge, decode_merchant_holds, encode_charge, new_charges
from micropay.models.rules import platform_fee, platform_fees
from micropay.models.tab import read_accrual

PAYERS = ["p0", "p1", "p2", "cap", "post", "hyb", "grant", "euro"]
MERCHANTS = ["m0", "m1", "m2"]


def build(path: Path, clock: Clock) -> World:
    world = World(path, clock)
    world.ledger(USD, 2)
    world.merchant("m0", bps=500, fixed=1)
    world.merchant("m1")
    world.call(payments.create_merchant(MerchantRequest("m2", USD, 250, 0, payout_hold_days=3), world.rails))
    for payer in ("p0", "p1", "p2"):
        world.payer(payer)
        world.fund(payer, 2_000)
    world.payer("cap", caps=(SpendCap("day", 900), SpendCap("month", 1_500)))
    world.fund("cap", 5_000)
    world.payer("post", "postpay", credit_limit=1_200)
    world.payer("hyb", "hybrid", credit_limit=300)
    world.fund("hyb", 800)
    world.ledger("EUR", 2)
    world.payer("euro", ledger="EUR")
    world.fund("euro", 1_000)
    world.payer("grant")
    world.fund("grant", 1_000)
    world.voucher("GIFT", 50, expires_in_s=3_600)
    world.redeem("grant", "GIFT")
    return world


def view(result: ChargeResult) -> tuple[Any, ...]:
    if isinstance(result, Exception):
        return ("refused", type(result).__name__, getattr(result, "code", str(result)))
    return ("charge", result[1], result[0])


def state_of(world: World) -> dict[str, Any]:
    return {
        "balances": world.snapshot(),
        "payers": {
            payer: (
                world.read_cap_usage(payer),
                world.read_promo(payer),
                world.call(lambda ctx, payer=payer: read_accrual(ctx, payer)),
            )
            for payer in PAYERS
        },
        "holds": [
            None if body is None else decode_merchant_holds(body)
            for body in (world.engine.document(payments.MERCHANT_HOLDS, merchant) for merchant in MERCHANTS)
        ],
    }


def used_columns(world: World, requests: list[ChargeRequest]) -> bool:
    """Whether the column path takes ``requests`` now (tried in an operation that is undone)."""

    def probe(ctx: BatchContext) -> bool:
        payers = {p: payments.get_payer(ctx, p) for p in {r.payer_id for r in requests} if p in PAYERS}
        merchants = {m: payments.get_merchant(ctx, m) for m in {r.merchant_id for r in requests} if m in MERCHANTS}
        return charge_columns(ctx, requests, payers, merchants, payments.CHARGE) is not None

    return world.peek(probe)


charge_requests = st.builds(
    ChargeRequest,
    id=st.sampled_from([f"c{i}" for i in range(60)]),
    payer_id=st.sampled_from(PAYERS[:3] * 8 + ["cap", "post", "hyb"] * 2 + ["grant"]),
    merchant_id=st.sampled_from(MERCHANTS),
    amount=st.integers(1, 120),
    description=st.sampled_from(["", "an article", 'quotes " and \\ slashes']),
    kind=st.sampled_from(["charge", "charge", "usage"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.lists(charge_requests, min_size=8, max_size=40, unique_by=lambda r: r.id),
    replayed=st.lists(charge_requests, min_size=0, max_size=3),
)
def test_the_column_path_answers_records_and_books_what_charge_by_charge_does(
    requests: list[ChargeRequest], replayed: list[ChargeRequest]
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="micropay-charge-columns-"))
    clock = Clock()
    worlds: list[World] = []
    try:
        by_columns = build(directory / "columns.db", clock)
        worlds.append(by_columns)
        one_by_one = build(directory / "one.db", clock)
        worlds.append(one_by_one)
        for world in (by_columns, one_by_one):  # charges made earlier: the operation may replay them
            for request in replayed:
                world.call(payments.charge_many([request]))
        columns_taken = used_columns(by_columns, requests)
        together = [view(r) for r in by_columns.call(payments.charge_many(requests))]
        apart = [view(r) for r in one_by_one.call(payments.charge_many(requests, by_columns=False))]
        assert together == apart
        assert state_of(by_columns) == state_of(one_by_one)
        for request in requests:
            assert by_columns.engine.document(payments.CHARGE, request.id) == one_by_one.engine.document(
                payments.CHARGE, request.id
            )
        if columns_taken:
            assert all(item[0] == "charge" and item[1] is False for item in together)
        for world in worlds:
            world.check_books()
    finally:
        for world in worlds:
            world.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def shop(tmp_path: Path, clock: Clock) -> Any:
    world = build(tmp_path / "shop.db", clock)
    yield world
    world.check_books()
    world.close()


def plain(
    count: int, payer: str = "p0", merchant: str = "m0", prefix: str = "c", amount: int = 10
) -> list[ChargeRequest]:
    return [ChargeRequest(f"{prefix}{i}", payer, merchant, amount + i) for i in range(count)]


def test_plain_charges_of_payers_who_can_pay_go_by_columns(shop: World) -> None:
    requests = plain(5) + plain(5, "post", "m1", "d") + plain(5, "cap", "m2", "e") + plain(5, "hyb", "m0", "f")
    assert used_columns(shop, requests)


@pytest.mark.parametrize(
    ("case", "requests"),
    [
        ("fewer than eight charges", plain(7)),
        ("an id twice", [*plain(8), ChargeRequest("c0", "p0", "m0", 10)]),
        ("an unknown payer", [*plain(8), ChargeRequest("x", "ghost", "m0", 10)]),
        ("an unknown merchant", [*plain(8), ChargeRequest("x", "p0", "nobody", 10)]),
        ("an amount of zero", [*plain(8), ChargeRequest("x", "p0", "m0", 0)]),
        ("a wallet short of the sum", [*plain(8, "p1"), ChargeRequest("x", "p1", "m0", 1990)]),
        ("promo credit to spend first", plain(8, "grant")),
        ("a cap the sum would cross", [*plain(8, "cap"), ChargeRequest("x", "cap", "m0", 800)]),
        ("a tab short of the sum", [*plain(8, "post"), ChargeRequest("x", "post", "m0", 1100)]),
        ("a hybrid payer whose wallet is short", [*plain(8, "hyb"), ChargeRequest("x", "hyb", "m0", 700)]),
        ("an id the ledger refuses", [*plain(8), ChargeRequest("x y", "p0", "m0", 10)]),
        ("a payer on another ledger", [*plain(8), ChargeRequest("x", "euro", "m0", 10)]),
    ],
)
def test_the_column_path_leaves_doubtful_operations_alone(
    shop: World, case: str, requests: list[ChargeRequest]
) -> None:
    before = shop.snapshot()
    assert not used_columns(shop, requests), case
    assert shop.snapshot() == before


def test_an_operation_replaying_a_charge_leaves_the_column_path(shop: World) -> None:
    shop.charge("c3", "post", "m1", 5)  # made from the tab: its payment leg is charge:c3:tab
    requests = plain(10)
    assert not used_columns(shop, requests)
    results = shop.call(payments.charge_many(requests))
    assert [r[1] for r in results if not isinstance(r, Exception)].count(True) == 0
    assert [type(r).__name__ for r in results if isinstance(r, Exception)] == ["Conflict"]


def test_the_platform_fees_of_an_operation_move_as_one_transfer_per_merchant(shop: World) -> None:
    requests = plain(6, "p0", "m0") + plain(4, "p1", "m2", "d", amount=100) + plain(3, "p2", "m1", "e")
    fees_before = shop.fees()
    results = shop.call(payments.charge_many(requests))
    records = [r[0] for r in results if not isinstance(r, Exception)]
    assert len(records) == len(requests)
    assert [r.platform_fee for r in records[:6]] == [1 + (10 + i) * 500 // 10_000 for i in range(6)]
    assert shop.fees() - fees_before == sum(r.platform_fee for r in records)
    m0_fees = shop.engine.transfer("charge:c0:fee")
    m2_fees = shop.engine.transfer("charge:d0:fee")
    assert m0_fees is not None and m0_fees.amount == sum(r.platform_fee for r in records[:6])
    assert m0_fees.debit_account_id == chart.merchant_account("m0")
    assert m2_fees is not None and m2_fees.amount == sum(r.platform_fee for r in records[6:10])
    assert shop.engine.transfer("charge:c1:fee") is None  # m1 charges no fee: no transfer at all
    assert shop.engine.transfer("charge:e0:fee") is None
    for record in records:
        assert shop.earnings(record.merchant_id) >= record.merchant_amount


def test_a_lone_charge_still_moves_its_own_fee(shop: World) -> None:
    record = shop.charge("solo", "p0", "m0", 100)
    fee = shop.engine.transfer("charge:solo:fee")
    assert fee is not None and fee.amount == record.platform_fee == 1 + 100 * 500 // 10_000


def test_charge_columns_moves_and_writes_nothing_when_it_answers_none(shop: World) -> None:
    requests = [*plain(8), ChargeRequest("x", "p0", "m0", 10**9)]

    def run(ctx: BatchContext) -> tuple[ColumnCharges | None, bool, bool]:
        payers = {"p0": payments.get_payer(ctx, "p0")}
        merchants = {"m0": payments.get_merchant(ctx, "m0")}
        made = charge_columns(ctx, requests, payers, merchants, payments.CHARGE)
        return made, ctx.transfer_exists("charge:c0:wallet"), bool(ctx.documents())

    before = shop.snapshot()
    assert shop.call(run) == (None, False, False)
    assert shop.snapshot() == before


def test_plain_transfer_columns_the_fast_path_cannot_take_apply_nothing(shop: World) -> None:
    wallet = chart.wallet_account("p0", USD)
    merchant = chart.merchant_account("m0")
    requests = [TransferRequest(f"t{i}", wallet, merchant, 300, USD) for i in range(8)]  # 2,400 > 2,000
    columns = tuple(zip(*requests, strict=True))
    assert shop.call(lambda ctx: ctx.create_plain_transfers(columns)) is False
    assert shop.wallet("p0") == 2_000
    cheaper = tuple(zip(*[r._replace(amount=10) for r in requests], strict=True))
    assert shop.call(lambda ctx: ctx.create_plain_transfers(cheaper)) is True
    assert shop.wallet("p0") == 2_000 - 80


@pytest.mark.parametrize("by_columns", [True, False])
def test_an_operation_of_a_whole_batch_of_charges_moves_more_legs_than_one_ledger_batch(
    shop: World, by_columns: bool
) -> None:
    # 8,190 payment legs and the fee legs of three merchants: more than one ledger batch holds.
    count = payments.CHARGES_PER_OPERATION_MAX
    shop.fund("p0", 100 * count)
    requests = [ChargeRequest(f"big{i}", "p0", MERCHANTS[i % 3], 100) for i in range(count)]
    results = shop.call(payments.charge_many(requests, by_columns=by_columns))
    assert all(not isinstance(result, Exception) and not result[1] for result in results)
    assert shop.wallet("p0") == 2_000
    fees = shop.engine.transfer("charge:big0:fee")
    assert fees is not None and fees.amount == sum(1 + 100 * 500 // 10_000 for i in range(0, count, 3))


def test_a_transfer_bearing_a_new_charges_leg_id_keeps_the_operation_off_the_column_path(shop: World) -> None:
    wallet, merchant = chart.wallet_account("p1", USD), chart.merchant_account("m1")
    [(code, _)] = shop.engine.create_transfers([TransferRequest("charge:c5:wallet", wallet, merchant, 7, USD)])
    assert code.value == "ok"
    assert not used_columns(shop, plain(10))


@given(
    charges=st.lists(
        st.tuples(st.integers(1, 10**9), st.integers(0, 10_000), st.integers(0, 1_000)), min_size=0, max_size=30
    )
)
def test_platform_fees_of_a_column_are_each_amounts_platform_fee(charges: list[tuple[int, int, int]]) -> None:
    amounts = [amount for amount, _, _ in charges]
    terms = [(bps, fixed) for _, bps, fixed in charges]
    assert platform_fees(amounts, terms) == [platform_fee(amount, bps, fixed) for amount, bps, fixed in charges]


@given(
    charges=st.lists(
        st.tuples(st.integers(1, 10**9), st.integers(0, 50), st.booleans(), st.text(max_size=8)),
        min_size=1,
        max_size=20,
    )
)
def test_new_charges_writes_what_encode_charge_writes_of_each_record(charges: list[tuple[int, int, bool, str]]) -> None:
    count = len(charges)
    amounts = [amount for amount, _, _, _ in charges]
    fees = [min(fee, amount) for amount, fee, _, _ in charges]
    parts = [(0, 0, amount) if on_tab else (0, amount, 0) for amount, _, on_tab, _ in charges]
    descriptions = [description for _, _, _, description in charges]
    ids = [f"c{i}" for i in range(count)]
    records, bodies = new_charges(
        ids, ["p"] * count, ["m"] * count, USD, amounts, fees, parts, descriptions, 7, ["charge"] * count
    )
    assert bodies == [encode_charge(record) for record in records]
    assert [decode_charge(body) for body in bodies] == records
    assert [(r.id, r.amount, r.platform_fee, r.merchant_amount) for r in records] == [
        (i, a, f, a - f) for i, a, f in zip(ids, amounts, fees, strict=True)
    ]
