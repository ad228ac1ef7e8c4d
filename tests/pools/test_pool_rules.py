"""Publishers, sites, content, pools, joins and reads: the rules before a distribution."""

from __future__ import annotations

import pytest
from pools_testkit import MINUTE_NS, NS, PERIOD, SPLIT, USD, PoolWorld, refused, utc_ns

from micropay.errors import Conflict, NotFound, PaymentDeclined, Refused
from micropay.ledger.limits import LEDGER_ID_LENGTH_MAX
from micropay.models import chart
from micropay.models import pools as P


# ----------------------------------------------------------------- publishers, sites, content
def test_publisher_opens_its_earnings_account(world: PoolWorld) -> None:
    publisher = world.publisher("pubA")
    assert (publisher.id, publisher.ledger) == ("pubA", USD)
    assert world.earned("pubA") == 0
    account = world.engine.account(chart.publisher_account("pubA"))
    assert account is not None and account.flags == 0


def test_creates_replay_and_conflict(world: PoolWorld) -> None:
    world.ledger("KRW", 0)
    first, replayed = world.call(P.create_publisher("pubA", USD, world.rails))
    assert not replayed
    again, replayed = world.call(P.create_publisher("pubA", USD, world.rails))
    assert replayed and again == first
    refused(world, P.create_publisher("pubA", "KRW", world.rails), "exists_with_different_fields", Conflict)

    world.publisher("pubB", site=False)
    site, _ = world.call(P.create_site("s1", "pubA"))
    assert world.call(P.create_site("s1", "pubA")) == (site, True)
    refused(world, P.create_site("s1", "pubB"), "exists_with_different_fields", Conflict)
    content, _ = world.call(P.create_content("c1", "pubA", (("title", "Hello"),)))
    assert isinstance(content, P.Content) and content.metadata == (("title", "Hello"),)
    assert world.call(P.create_content("c1", "pubA", (("title", "Hello"),))) == (content, True)
    refused(world, P.create_content("c1", "pubA"), "exists_with_different_fields", Conflict)


def test_site_and_content_need_a_publisher(world: PoolWorld) -> None:
    refused(world, P.create_site("s1", "nobody"), "publisher_not_found", NotFound)
    refused(world, P.create_content("c1", "nobody"), "publisher_not_found", NotFound)


def test_publisher_needs_a_ledger_and_may_not_be_called_platform(world: PoolWorld) -> None:
    refused(world, P.create_publisher("pubA", "EUR", world.rails), "ledger_not_found", NotFound)
    refused(world, P.create_publisher("platform", USD, world.rails), "publisher_id_reserved", Refused)


# ----------------------------------------------------------------- pools
def test_pool_opens_an_account_that_cannot_pay_out_more_than_it_holds(world: PoolWorld) -> None:
    pool = world.pool()
    assert pool.split_bps == SPLIT and pool.unread == "carry" and pool.read_window_s == 1800
    account = world.engine.account(chart.pool_account("pool1"))
    assert account is not None and account.flags == 1  # debits_must_not_exceed_credits


@pytest.mark.parametrize(
    ("split", "unread", "price", "window", "code"),
    [
        ((("owner", 7000), ("host", 1500), ("referrer", 500), ("platform", 999)), "carry", 1, 0, "invalid_split"),
        ((("owner", 10500), ("host", -500), ("referrer", 0), ("platform", 0)), "carry", 1, 0, "invalid_split"),
        ((("host", 7000), ("owner", 1500), ("referrer", 500), ("platform", 1000)), "carry", 1, 0, "invalid_split"),
        (SPLIT, "keep", 1, 0, "invalid_unread"),
        (SPLIT, "carry", 0, 0, "invalid_price"),
        (SPLIT, "carry", 10**15 + 1, 0, "amount_exceeds_maximum"),
        (SPLIT, "carry", 1, -1, "invalid_read_window"),
        (SPLIT, "carry", 1, 32 * 86400, "invalid_read_window"),
    ],
)
def test_bad_pools_are_refused(
    world: PoolWorld, split: tuple[tuple[str, int], ...], unread: str, price: int, window: int, code: str
) -> None:
    request = P.PoolRequest("bad", USD, price, split, unread, window)
    refused(world, P.create_pool(request, world.rails), code, Refused)


def test_pool_replay_and_conflict(world: PoolWorld) -> None:
    pool = world.pool(price=500)
    request = P.PoolRequest("pool1", USD, 500, SPLIT)
    assert world.call(P.create_pool(request, world.rails)) == (pool, True)
    other = P.PoolRequest("pool1", USD, 600, SPLIT)
    refused(world, P.create_pool(other, world.rails), "exists_with_different_fields", Conflict)


# ----------------------------------------------------------------- joins
def test_join_charges_the_price_into_the_pool_once_per_period(trio: PoolWorld) -> None:
    trio.payer("r1", 5000)
    membership, replayed = trio.call(P.join_pool("pool1", "r1"))
    assert not replayed and (membership.period, membership.fee, membership.payer_id) == (PERIOD, 1000, "r1")
    assert trio.wallet("r1") == 4000 and trio.pool_balance() == 1000
    with trio.moves_nothing():
        again, replayed = trio.call(P.join_pool("pool1", "r1"))
    assert replayed and again == membership
    summary = trio.call(lambda ctx: P.pool_period(ctx, "pool1", PERIOD))
    assert (summary.members, summary.collected) == (1, 1000)


def test_join_next_month_is_a_new_membership(trio: PoolWorld) -> None:
    trio.member("r1")
    trio.clock.set(utc_ns(2026, 4, 1))
    membership = trio.join("pool1", "r1")
    assert membership.period == "2026-04" and trio.wallet("r1") == 8000


def test_join_declines_move_nothing(trio: PoolWorld) -> None:
    trio.payer("poor", 999)
    refused(trio, P.join_pool("pool1", "poor"), "insufficient_funds", PaymentDeclined)
    refused(trio, P.join_pool("pool1", "nobody"), "payer_not_found", NotFound)
    refused(trio, P.join_pool("nopool", "poor"), "pool_not_found", NotFound)
    trio.call(payments_suspend("poor"))
    refused(trio, P.join_pool("pool1", "poor"), "payer_suspended", PaymentDeclined)
    assert trio.call(lambda ctx: P.pool_period(ctx, "pool1", PERIOD)).members == 0


def payments_suspend(payer_id: str):  # type: ignore[no-untyped-def]
    from micropay.models.payments import update_payer

    return update_payer(payer_id, status="suspended")


def test_join_refuses_another_ledger(trio: PoolWorld) -> None:
    trio.ledger("KRW", 0)
    trio.payer("won", 0, ledger="KRW")
    refused(trio, P.join_pool("pool1", "won"), "ledger_mismatch", Refused)


def test_longest_ids_still_make_valid_transfer_ids(world: PoolWorld) -> None:
    """Pool, payer and publisher ids of 64 characters: the join's and the distribution's transfer
    ids would pass the ledger's 128 characters, so they are shortened to a digest."""
    pool_id, payer_id, publisher_id = "p" * 64, "r" * 64, "b" * 64
    world.publisher(publisher_id)
    world.pool(pool_id)
    world.member(payer_id, pool_id)
    world.read(payer_id, f"art-{publisher_id}", f"site-{publisher_id}", pool_id=pool_id)
    distribution = world.distribute(pool_id=pool_id)
    assert distribution.total == 1000 and world.earned(publisher_id) == 900
    assert P.transfer_id("membership", pool_id, PERIOD, payer_id, room=7).count(":") == 1
    assert len(P.transfer_id("distribution", pool_id, PERIOD, publisher_id)) <= LEDGER_ID_LENGTH_MAX
    assert P.transfer_id("distribution", "p", PERIOD, "b") == f"distribution:p:{PERIOD}:b"
    assert len(P.public_distribution_id(pool_id, PERIOD)) <= 64


# ----------------------------------------------------------------- reads
def test_a_read_counts_for_its_item(trio: PoolWorld) -> None:
    trio.member("r1")
    read = trio.read("r1", "art-pubA", "site-pubB", "site-pubC")
    assert read.counted and read.reason == "" and read.period == PERIOD
    assert trio.counted("r1") == {"reads": 1, "owner": {"pubA": 1}, "host": {"pubB": 1}, "referrer": {"pubC": 1}}
    assert trio.get_read(read.id) == read


def test_reads_are_idempotent(trio: PoolWorld) -> None:
    trio.member("r1")
    request = trio.read_request("r1", "art-pubA", "site-pubB")
    read, replayed = trio.call(P.record_read(request))
    assert not replayed
    before = trio.documents(P.READ, P.MEMBER_READS, P.MEMBER_READ_LOG)
    trio.clock.advance(3600)  # past the window: a new read would count
    assert trio.call(P.record_read(request)) == (read, True)
    assert trio.documents(P.READ, P.MEMBER_READS, P.MEMBER_READ_LOG) == before
    assert trio.counted("r1") == {"reads": 1, "owner_alone": {"pubA": 1}, "host": {"pubB": 1}}
    changed = P.ReadRequest(request.id, "pool1", "r1", "art-pubC", "site-pubB", "", request.timestamp_ns)
    refused(trio, P.record_read(changed), "exists_with_different_fields", Conflict)


def test_repeat_reads_within_the_window_count_once(trio: PoolWorld) -> None:
    trio.member("r1")
    start = trio.clock.now_ns
    trio.clock.advance(2 * 3600)
    first = trio.read("r1", "art-pubA", "site-pubA", at_ns=start)
    repeat = trio.read("r1", "art-pubA", "site-pubB", at_ns=start + 10 * MINUTE_NS)
    other = trio.read("r1", "art-pubB", "site-pubA", at_ns=start + 10 * MINUTE_NS)
    assert first.counted and not repeat.counted and repeat.reason == "repeat" and other.counted
    # The window runs from the member's latest read of that content, counted or not: 10 + 25
    # minutes is still within 30 of the read at 10; 10 + 30 is not.
    still = trio.read("r1", "art-pubA", "site-pubA", at_ns=start + 35 * MINUTE_NS)
    again = trio.read("r1", "art-pubA", "site-pubA", at_ns=start + 65 * MINUTE_NS)
    assert not still.counted and again.counted
    assert trio.counted("r1") == {"reads": 3, "owner_alone": {"pubA": 2, "pubB": 1}, "host": {"pubA": 3}}


def test_window_zero_counts_every_read(trio: PoolWorld) -> None:
    trio.pool("pool0", window_s=0)
    trio.member("r1", "pool0")
    reads = [trio.read("r1", "art-pubA", "site-pubA", pool_id="pool0") for _ in range(3)]
    assert all(read.counted for read in reads)
    assert trio.counted("r1", pool_id="pool0") == {"reads": 3, "owner_alone": {"pubA": 3}, "host": {"pubA": 3}}


def test_a_late_read_turns_the_next_one_into_a_repeat(trio: PoolWorld) -> None:
    """Which reads count depends on the reads, not on the order they arrive in."""
    trio.member("r1")
    start = trio.clock.now_ns
    trio.clock.advance(3600)
    first = trio.read("r1", "art-pubA", "site-pubA", at_ns=start, read_id="t0")
    later = trio.read("r1", "art-pubA", "site-pubB", at_ns=start + 40 * MINUTE_NS, read_id="t40")
    assert first.counted and later.counted
    late = trio.read("r1", "art-pubA", "site-pubC", at_ns=start + 20 * MINUTE_NS, read_id="t20")
    assert not late.counted
    moved = trio.get_read("t40")
    assert not moved.counted and moved.reason == "repeat"
    assert trio.counted("r1") == {"reads": 1, "owner_alone": {"pubA": 1}, "host": {"pubA": 1}}
    # A read 30 minutes before all others counts, and the read at 0 (a full window later) still counts.
    earliest = trio.read("r1", "art-pubA", "site-pubC", at_ns=start - 30 * MINUTE_NS, read_id="tm30")
    assert earliest.counted and trio.get_read("t0").counted
    assert trio.counted("r1") == {"reads": 2, "owner_alone": {"pubA": 2}, "host": {"pubA": 1, "pubC": 1}}


def test_same_timestamp_orders_by_read_id(trio: PoolWorld) -> None:
    trio.member("r1")
    now = trio.clock.now_ns
    trio.read("r1", "art-pubA", "site-pubB", at_ns=now, read_id="b")
    trio.read("r1", "art-pubA", "site-pubC", at_ns=now, read_id="a")
    assert trio.get_read("a").counted and not trio.get_read("b").counted
    assert trio.counted("r1") == {"reads": 1, "owner_alone": {"pubA": 1}, "host": {"pubC": 1}}


def test_own_content_is_recorded_but_never_counts(trio: PoolWorld) -> None:
    # A payer whose id is a publisher's id reads that publisher's content: its own.
    trio.member("pubA")
    own = trio.read("pubA", "art-pubA", "site-pubB")
    other = trio.read("pubA", "art-pubB", "site-pubA")
    assert not own.counted and own.reason == "own_content" and other.counted
    assert trio.counted("pubA") == {"reads": 1, "owner_alone": {"pubB": 1}, "host": {"pubA": 1}}


def test_non_members_are_refused(trio: PoolWorld) -> None:
    trio.payer("r1")
    error = refused(trio, P.record_read(trio.read_request("r1", "art-pubA", "site-pubA")), "not_a_member", Refused)
    assert error.param == "payer_id"
    refused(trio, P.record_read(trio.read_request("ghost", "art-pubA", "site-pubA")), "not_a_member", Refused)
    assert trio.engine.document(P.READ, "rd1") is None


def test_reads_outside_the_membership_period_are_refused(trio: PoolWorld) -> None:
    trio.member("r1")
    before = trio.read_request("r1", "art-pubA", "site-pubA", at_ns=utc_ns(2026, 2, 28, 23, 59))
    error = refused(trio, P.record_read(before), "outside_membership_period", Refused)
    assert error.param == "timestamp" and "2026-02" in error.message
    future = trio.read_request("r1", "art-pubA", "site-pubA", at_ns=trio.clock.now_ns + 301 * NS)
    refused(trio, P.record_read(future), "timestamp_in_future", Refused)
    skew = trio.read("r1", "art-pubA", "site-pubA", at_ns=trio.clock.now_ns + 299 * NS)
    assert skew.counted


def test_reads_of_a_past_period_count_until_it_is_distributed(trio: PoolWorld) -> None:
    trio.member("r1")
    trio.clock.set(utc_ns(2026, 4, 2))
    late = trio.read("r1", "art-pubA", "site-pubA", at_ns=utc_ns(2026, 3, 31, 23))
    assert late.counted and late.period == PERIOD


def test_reads_need_known_content_and_sites(trio: PoolWorld) -> None:
    trio.member("r1")
    for request, code, param in (
        (trio.read_request("r1", "nope", "site-pubA"), "content_not_found", "content_id"),
        (trio.read_request("r1", "art-pubA", "nope"), "site_not_found", "host_site_id"),
        (trio.read_request("r1", "art-pubA", "site-pubA", "nope"), "site_not_found", "referrer_site_id"),
        (trio.read_request("r1", "art-pubA", "site-pubA", pool_id="nope"), "pool_not_found", "pool_id"),
    ):
        error = refused(trio, P.record_read(request), code, NotFound)
        assert error.param == param


def test_reads_of_publishers_on_another_ledger_are_refused(trio: PoolWorld) -> None:
    trio.ledger("KRW", 0)
    trio.publisher("won", ledger="KRW")
    trio.member("r1")
    refused(trio, P.record_read(trio.read_request("r1", "art-won", "site-pubA")), "ledger_mismatch", Refused)
    refused(trio, P.record_read(trio.read_request("r1", "art-pubA", "site-won")), "ledger_mismatch", Refused)
    refused(
        trio, P.record_read(trio.read_request("r1", "art-pubA", "site-pubA", "site-won")), "ledger_mismatch", Refused
    )


def test_joins_and_reads_after_distribution_answer_period_closed(trio: PoolWorld) -> None:
    trio.member("r1")
    trio.read("r1", "art-pubA", "site-pubA")
    trio.payer("r2")
    trio.distribute()
    refused(trio, P.join_pool("pool1", "r2"), "period_closed", Refused)
    refused(trio, P.join_pool("pool1", "r1"), "period_closed", Refused)
    error = refused(trio, P.record_read(trio.read_request("r1", "art-pubB", "site-pubA")), "period_closed", Refused)
    assert error.param == "timestamp"
    # Next month is open again.
    trio.clock.set(utc_ns(2026, 4, 1, 0, 0, 1))
    assert trio.join("pool1", "r2").period == "2026-04"


def test_bulk_reads_answer_each_read(trio: PoolWorld) -> None:
    trio.member("r1")
    requests = [
        trio.read_request("r1", "art-pubA", "site-pubA", read_id="x1"),
        trio.read_request("r1", "nope", "site-pubA", read_id="x2"),
        trio.read_request("r1", "art-pubA", "site-pubB", read_id="x3"),
        trio.read_request("r1", "art-pubA", "site-pubA", read_id="x1"),
        trio.read_request("ghost", "art-pubA", "site-pubA", read_id="x4"),
    ]
    results = trio.call(P.record_reads(requests))
    assert isinstance(results[0], tuple) and results[0][0].counted and not results[0][1]
    assert isinstance(results[1], NotFound) and results[1].code == "content_not_found"
    assert isinstance(results[2], tuple) and results[2][0].reason == "repeat"
    assert isinstance(results[3], tuple) and results[3][1] is True  # replay of x1 within the batch
    assert isinstance(results[4], Refused) and results[4].code == "not_a_member"
    assert trio.engine.document(P.READ, "x2") is None
    assert trio.counted("r1") == {"reads": 1, "owner_alone": {"pubA": 1}, "host": {"pubA": 1}}


def test_too_many_reads(trio: PoolWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(P, "MEMBER_READS_MAX", 2)
    trio.member("r1")
    trio.read("r1", "art-pubA", "site-pubA")
    trio.read("r1", "art-pubA", "site-pubB")  # a repeat: it counts towards the bound too
    refused(trio, P.record_read(trio.read_request("r1", "art-pubB", "site-pubA")), "too_many_reads", Refused)
    assert trio.counted("r1")["reads"] == 1
