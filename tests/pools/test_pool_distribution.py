"""Distributions: hand-computed results, carry and share, closing, atomicity, earnings."""

from __future__ import annotations

import pytest
from pools_testkit import PERIOD, PoolWorld, line_map, refused, utc_ns

from micropay.errors import Conflict, PaymentDeclined, Refused
from micropay.ledger import TransferRequest
from micropay.models import chart
from micropay.models import pools as P


def _smoke_reads(world: PoolWorld) -> None:
    """r0 reads pubA's article on pubB's site via pubC's, and pubB's article on its own site twice
    (the second a repeat); r1 reads pubC's article on pubA's site; r2 reads nothing."""
    for payer_id in ("r0", "r1", "r2"):
        world.member(payer_id, funds=5000)
    world.read("r0", "art-pubA", "site-pubB", "site-pubC")
    world.read("r0", "art-pubB", "site-pubB")
    assert not world.read("r0", "art-pubB", "site-pubB", at_ns=world.clock.now_ns + 1).counted
    world.read("r1", "art-pubC", "site-pubA")


def test_hand_computed_distribution(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    distribution = trio.distribute()
    # r0's 1000 over two reads (weights /20000): art-pubA: owner pubA 7000 -> 350, host pubB 1500 -> 75,
    # referrer pubC 500 -> 25, platform 1000 -> 50; art-pubB (no referrer): owner pubB 7500 -> 375,
    # host pubB 75, platform 50. r1's 1000 on one read: owner pubC 750, host pubA 150, platform 100.
    assert line_map(distribution) == {
        ("platform", "platform"): 200,
        ("pubA", "host"): 150,
        ("pubA", "owner"): 350,
        ("pubB", "host"): 150,
        ("pubB", "owner"): 375,
        ("pubC", "owner"): 750,
        ("pubC", "referrer"): 25,
    }
    assert (distribution.total, distribution.collected, distribution.carried_in, distribution.carried_out) == (
        2000,
        3000,
        0,
        1000,
    )
    assert (distribution.members, distribution.members_paid) == (3, 2)
    assert (trio.earned("pubA"), trio.earned("pubB"), trio.earned("pubC")) == (500, 525, 775)
    assert trio.fees() == 200 and trio.pool_balance() == 1000
    assert trio.get_pool().carried == 1000 and PERIOD in trio.get_pool().distributed_periods
    stored = trio.call(lambda ctx: P.get_distribution(ctx, "pool1", PERIOD))
    assert stored == distribution


def test_prime_fee_split_three_ways(world: PoolWorld) -> None:
    """A fee of 101 read once each at three publishers, all to owners: 101 / 3 = 33 rem 2."""
    split = (("owner", 10_000), ("host", 0), ("referrer", 0), ("platform", 0))
    for publisher_id in ("pubA", "pubB", "pubC"):
        world.publisher(publisher_id)
    world.pool(price=101, split=split)
    world.member("r1")
    for publisher_id in ("pubC", "pubA", "pubB"):
        world.read("r1", f"art-{publisher_id}", f"site-{publisher_id}")
    distribution = world.distribute()
    assert line_map(distribution) == {("pubA", "owner"): 34, ("pubB", "owner"): 34, ("pubC", "owner"): 33}
    assert distribution.total == 101 and world.pool_balance() == 0


def test_publishers_see_their_per_member_breakdown(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    trio.distribute()
    pub_a = trio.earnings("pubA")
    assert pub_a.total == 500 == trio.earned("pubA")
    assert sorted((line.payer_id, line.role, line.amount) for line in pub_a.lines) == [
        ("r0", "owner", 350),
        ("r1", "host", 150),
    ]
    pub_b = trio.earnings("pubB")
    assert sorted((line.payer_id, line.role, line.amount) for line in pub_b.lines) == [
        ("r0", "host", 150),
        ("r0", "owner", 375),
    ]
    assert trio.engine.document(P.EARNINGS, P.earnings_key("platform", PERIOD, "pool1")) is None


def test_unread_fees_carry_to_the_next_distribution(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    trio.distribute()  # carries r2's 1000
    trio.clock.set(utc_ns(2026, 4, 5))
    trio.join("pool1", "r1")
    trio.read("r1", "art-pubA", "site-pubA")
    april = trio.distribute("2026-04")
    # r1's 1000: owner pubA 750 (owner + referrer share), host pubA 150, platform 100; the carried
    # 1000 is shared over those lines in proportion: each doubles.
    assert line_map(april) == {("pubA", "owner"): 1500, ("pubA", "host"): 300, ("platform", "platform"): 200}
    assert (april.total, april.carried_in, april.carried_out) == (2000, 1000, 0)
    network = [line for line in trio.earnings("pubA", "2026-04").lines if line.payer_id == ""]
    assert sorted((line.role, line.amount) for line in network) == [("host", 150), ("owner", 750)]
    assert trio.pool_balance() == 0 and trio.get_pool().carried == 0


def test_unread_fees_shared_at_once(trio: PoolWorld) -> None:
    trio.pool("shared", unread="share")
    trio.member("r1", "shared")
    trio.member("r2", "shared")
    trio.read("r1", "art-pubA", "site-pubB", pool_id="shared")
    distribution = trio.distribute(pool_id="shared")
    assert line_map(distribution) == {("pubA", "owner"): 1500, ("pubB", "host"): 300, ("platform", "platform"): 200}
    assert (distribution.total, distribution.carried_out) == (2000, 0)
    assert trio.pool_balance("shared") == 0


def test_nobody_read_anything_carries_everything(trio: PoolWorld) -> None:
    trio.member("r1")
    trio.member("r2")
    with_nothing = trio.distribute()
    assert (with_nothing.total, with_nothing.lines, with_nothing.carried_out) == (0, (), 2000)
    assert trio.pool_balance() == 2000 and trio.get_pool().carried == 2000
    trio.clock.set(utc_ns(2026, 4, 1))
    empty = trio.distribute("2026-04")  # no members at all: still carried on
    assert (empty.total, empty.carried_in, empty.carried_out, empty.members) == (0, 2000, 2000, 0)


def test_distributing_twice_is_a_conflict(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    trio.distribute()
    members = P.list_period_members(trio.engine.store, "pool1", PERIOD)
    assert members == ["r0", "r1", "r2"]
    refused(trio, P.distribute("pool1", PERIOD, members), "already_distributed", Conflict)


def test_a_named_distribution_replays(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    first, replayed = P.run_distribution(trio.engine, "pool1", PERIOD, "march")
    assert first.id == "march" and not replayed
    with trio.moves_nothing():
        assert P.run_distribution(trio.engine, "pool1", PERIOD, "march") == (first, True)
    refused(trio, P.distribute("pool1", PERIOD, [], "other"), "already_distributed", Conflict)
    refused(trio, P.distribute("pool1", PERIOD, []), "already_distributed", Conflict)
    assert P.public_distribution_id("pool1", PERIOD) == "pool1_2026-03"


def test_bad_periods(trio: PoolWorld) -> None:
    refused(trio, P.distribute("pool1", "2026-04", []), "period_not_started", Refused)
    for period in ("2026-13", "2026-3", "March", "2026-03-01"):
        refused(trio, P.distribute("pool1", period, []), "invalid_period", Refused)
    refused(trio, P.distribute("nope", PERIOD, []), "pool_not_found")


def test_the_member_list_must_be_complete(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    trio.payer("outsider")
    refused(trio, P.distribute("pool1", PERIOD, ["r0", "r1"]), "members_changed", Refused)
    refused(trio, P.distribute("pool1", PERIOD, ["r0", "r1", "outsider"]), "members_changed", Refused)
    assert PERIOD not in trio.get_pool().distributed_periods


def test_run_distribution_lists_again_when_a_join_raced(trio: PoolWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    _smoke_reads(trio)
    real = P.list_period_members
    calls: list[int] = []

    def stale_then_real(store: object, pool_id: str, period: str, page: int = 1000) -> list[str]:
        calls.append(1)
        return ["r0", "r1"] if len(calls) == 1 else real(store, pool_id, period, page)  # type: ignore[arg-type]

    monkeypatch.setattr(P, "list_period_members", stale_then_real)
    assert trio.distribute().members == 3 and len(calls) == 2


def test_member_order_does_not_matter(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    first, _ = trio.call(P.distribute("pool1", PERIOD, ["r2", "r0", "r1", "r0"]))
    assert line_map(first)[("pubC", "owner")] == 750


def test_distribution_is_atomic(trio: PoolWorld) -> None:
    """One linked chain: when one leg cannot apply, no leg applies and the period stays open."""
    _smoke_reads(trio)
    # Take 1500 of the pool's 3000 out behind its back: the first legs would fit, the later not.
    drain = TransferRequest("drain", chart.pool_account("pool1"), chart.bank_account("USD"), 1500, "USD")
    trio.call(lambda ctx: ctx.create_transfers([drain]))
    members = P.list_period_members(trio.engine.store, "pool1", PERIOD)
    refused(trio, P.distribute("pool1", PERIOD, members), "insufficient_funds", PaymentDeclined)
    assert trio.earned("pubA") == trio.earned("pubB") == trio.earned("pubC") == trio.fees() == 0
    assert PERIOD not in trio.get_pool().distributed_periods
    assert trio.engine.document(P.DISTRIBUTION, P.distribution_key("pool1", PERIOD)) is None
    assert trio.engine.document(P.EARNINGS, P.earnings_key("pubA", PERIOD, "pool1")) is None
    refill = TransferRequest("refill", chart.bank_account("USD"), chart.pool_account("pool1"), 1500, "USD")
    trio.call(lambda ctx: ctx.create_transfers([refill]))
    assert trio.distribute().total == 2000 and trio.earned("pubC") == 775


def test_distribution_survives_a_restart(trio: PoolWorld) -> None:
    _smoke_reads(trio)
    distribution = trio.distribute()
    trio.engine.close()
    from micropay.engine import Engine
    from micropay.store import SQLiteStore

    trio.engine = Engine(SQLiteStore(trio.path), clock_ns=trio.clock, batch_window_s=0)
    assert trio.call(lambda ctx: P.get_distribution(ctx, "pool1", PERIOD)) == distribution
    assert trio.earned("pubC") == 775 and trio.get_pool().carried == 1000
    members = P.list_period_members(trio.engine.store, "pool1", PERIOD)
    refused(trio, P.distribute("pool1", PERIOD, members), "already_distributed", Conflict)


def test_a_publisher_named_like_the_platform_cannot_take_its_fee(trio: PoolWorld) -> None:
    """Lines are paid by role: the platform line goes to the fee account, publishers to theirs."""
    _smoke_reads(trio)
    trio.distribute()
    transfer = trio.engine.transfer(P.transfer_id("distribution_fee", "pool1", PERIOD))
    assert transfer is not None and transfer.credit_account_id == chart.fees_account("USD")
    assert transfer.amount == 200
