"""Flag behaviours, idempotency, credit limits and malformed requests, through the engine."""

from __future__ import annotations

from typing import Any

import pytest
from ledger_testkit import (
    BALANCING_CREDIT,
    BALANCING_DEBIT,
    EUR,
    LINKED,
    NS,
    PENDING,
    POST,
    USD,
    VOID,
    Clock,
    Engines,
    assert_conserved,
    balances,
    codes,
    fund,
    mirror,
    ok,
    one,
    setup_accounts,
    tick,
    totals,
    transfer,
    wallet,
)

from micropay.engine import Engine
from micropay.errors import MalformedRequest
from micropay.ledger import AccountRequest, Result, TransferFlags
from micropay.ledger.limits import BATCH_SIZE_MAX, CREDIT_LIMIT_MAX, TIMEOUT_S_MAX


# ----------------------------------------------------------------------------- pending
def test_pending_reserves_the_amount_without_posting_it(engine: Engine) -> None:
    setup_accounts(engine, "shop")
    (pending,) = ok(engine, transfer("p", "bank", "shop", 30, flags=PENDING))
    assert pending.flags == PENDING
    assert totals(engine.account("bank")) == (0, 0, 30, 0)
    assert totals(engine.account("shop")) == (0, 0, 0, 30)
    assert engine.account("shop").balance == 0
    assert_conserved(engine)


def test_pending_debits_count_against_a_wallets_limit(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    ok(engine, transfer("p1", "w", "shop", 70, flags=PENDING))
    assert engine.account("w").available == 30
    assert one(engine, transfer("p2", "w", "shop", 31, flags=PENDING))[0] is Result.EXCEEDS_CREDITS
    assert one(engine, transfer("t", "w", "shop", 31))[0] is Result.EXCEEDS_CREDITS
    ok(engine, transfer("p3", "w", "shop", 30, flags=PENDING))


def test_pending_credits_do_not_count_as_funds(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    ok(engine, transfer("in", "bank", "w", 50, flags=PENDING))
    assert one(engine, transfer("out", "w", "shop", 1))[0] is Result.EXCEEDS_CREDITS


def test_post_pending_without_amount_posts_all_of_it(engine: Engine) -> None:
    setup_accounts(engine, "shop")
    ok(engine, transfer("p", "bank", "shop", 30, flags=PENDING, code=3))
    (post,) = ok(engine, transfer("post", pending_id="p", flags=POST))
    assert (post.debit_account_id, post.credit_account_id, post.ledger, post.amount) == ("bank", "shop", USD, 30)
    assert post.pending_id == "p"
    assert totals(engine.account("bank")) == (30, 0, 0, 0)
    assert totals(engine.account("shop")) == (0, 30, 0, 0)
    assert_conserved(engine)


def test_post_pending_of_part_posts_that_part_and_releases_the_rest(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    ok(engine, transfer("p", "w", "shop", 80, flags=PENDING))
    (post,) = ok(engine, transfer("post", amount=25, pending_id="p", flags=POST))
    assert post.amount == 25
    assert totals(engine.account("w")) == (25, 100, 0, 0)
    assert totals(engine.account("shop")) == (0, 25, 0, 0)
    assert engine.account("w").available == 75
    assert_conserved(engine)


def test_post_pending_may_repeat_the_pending_transfers_accounts_and_ledger(engine: Engine) -> None:
    setup_accounts(engine, "shop")
    ok(engine, transfer("p", "bank", "shop", 30, flags=PENDING))
    (post,) = ok(engine, transfer("post", "bank", "shop", 30, USD, pending_id="p", flags=POST))
    assert post.amount == 30


def test_void_pending_releases_the_reservation(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    ok(engine, transfer("p", "w", "shop", 80, flags=PENDING))
    (void,) = ok(engine, transfer("void", pending_id="p", flags=VOID))
    assert void.amount == 80
    assert totals(engine.account("w")) == (0, 100, 0, 0)
    assert totals(engine.account("shop")) == (0, 0, 0, 0)
    assert engine.account("w").available == 100
    assert_conserved(engine)


def test_a_pending_transfer_can_be_posted_in_the_batch_that_made_it(engine: Engine) -> None:
    setup_accounts(engine, "shop")
    outcomes = engine.create_transfers(
        [transfer("p", "bank", "shop", 30, flags=PENDING), transfer("post", amount=10, pending_id="p", flags=POST)]
    )
    assert codes(outcomes) == [Result.OK, Result.OK]
    assert totals(engine.account("shop")) == (0, 10, 0, 0)


def test_pending_expires_when_a_batch_begins_at_its_deadline(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    (pending,) = ok(engine, transfer("p", "w", "shop", 60, flags=PENDING, timeout_s=10))
    deadline = pending.timestamp + 10 * NS
    clock.now_ns = deadline - 1
    tick(engine)
    assert totals(engine.account("w")) == (0, 100, 60, 0)
    clock.now_ns = deadline
    tick(engine)
    assert totals(engine.account("w")) == (0, 100, 0, 0)
    assert totals(engine.account("shop")) == (0, 0, 0, 0)
    assert_conserved(engine)


def test_expired_funds_can_be_spent_again(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    ok(engine, transfer("p", "w", "shop", 100, flags=PENDING, timeout_s=1))
    assert one(engine, transfer("t1", "w", "shop", 1))[0] is Result.EXCEEDS_CREDITS
    clock.advance(2)
    ok(engine, transfer("t2", "w", "shop", 100))  # the same batch first expires, then applies


def test_pending_without_timeout_never_expires(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, "shop")
    ok(engine, transfer("p", "bank", "shop", 5, flags=PENDING))
    clock.advance(10 * 366 * 86400 + 1)
    tick(engine)
    ok(engine, transfer("post", pending_id="p", flags=POST))


def test_expiry_is_durable_across_restart(engine: Engine, engines: Engines, clock: Clock) -> None:
    setup_accounts(engine, "shop")
    (pending,) = ok(engine, transfer("p", "bank", "shop", 5, flags=PENDING, timeout_s=1))
    clock.now_ns = pending.timestamp + 1 * NS
    tick(engine)
    assert totals(engine.account("shop")) == (0, 0, 0, 0)
    before = balances(engine)
    engine = engines.reopen(engine)
    assert balances(engine) == before
    assert one(engine, transfer("post", pending_id="p", flags=POST))[0] is Result.PENDING_TRANSFER_EXPIRED


def test_pending_made_before_a_restart_expires_after_it(engine: Engine, engines: Engines, clock: Clock) -> None:
    setup_accounts(engine, "shop")
    (pending,) = ok(engine, transfer("p", "bank", "shop", 5, flags=PENDING, timeout_s=60))
    engine = engines.reopen(engine)
    assert totals(engine.account("shop")) == (0, 0, 0, 5)
    clock.now_ns = pending.timestamp + 60 * NS
    tick(engine)
    assert totals(engine.account("shop")) == (0, 0, 0, 0)
    assert one(engine, transfer("void", pending_id="p", flags=VOID))[0] is Result.PENDING_TRANSFER_EXPIRED


def test_posted_pending_does_not_expire_later(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, "shop")
    ok(engine, transfer("p", "bank", "shop", 5, flags=PENDING, timeout_s=1))
    ok(engine, transfer("post", pending_id="p", flags=POST))
    clock.advance(5)
    tick(engine)
    assert totals(engine.account("shop")) == (0, 5, 0, 0)
    assert_conserved(engine)


# ----------------------------------------------------------------------------- linked chains
def test_a_linked_chain_applies_whole(engine: Engine) -> None:
    setup_accounts(engine, "a", "b")
    outcomes = engine.create_transfers(
        [
            transfer("c1", "bank", "a", 10, flags=LINKED),
            transfer("c2", "a", "b", 4, flags=LINKED),
            transfer("c3", "b", "bank", 1),
        ]
    )
    assert codes(outcomes) == [Result.OK] * 3
    assert [engine.account(x).balance for x in ("bank", "a", "b")] == [-9, 6, 3]


def test_a_chain_failing_in_the_middle_moves_nothing_and_spares_its_neighbours(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    before = balances(engine)
    outcomes = engine.create_transfers(
        [
            transfer("before", "bank", "shop", 1),
            transfer("c1", "w", "shop", 60, flags=LINKED),
            transfer("c2", "w", "shop", 60, flags=LINKED),  # only 40 left after c1
            transfer("c3", "w", "shop", 1),
            transfer("after", "bank", "shop", 2),
        ]
    )
    assert codes(outcomes) == [
        Result.OK,
        Result.LINKED_EVENT_FAILED,
        Result.EXCEEDS_CREDITS,
        Result.LINKED_EVENT_FAILED,
        Result.OK,
    ]
    assert totals(engine.account("w")) == before["w"]
    assert engine.account("shop").credits_posted == 3
    assert [engine.transfer(i) for i in ("c1", "c2", "c3")] == [None, None, None]
    ok(engine, transfer("c1", "w", "shop", 60))  # a failed id is free to use


def test_a_failed_chain_undoes_pending_posts_and_voids_inside_it(engine: Engine) -> None:
    setup_accounts(engine, "shop")
    ok(engine, transfer("p1", "bank", "shop", 10, flags=PENDING), transfer("p2", "bank", "shop", 20, flags=PENDING))
    before = balances(engine)
    outcomes = engine.create_transfers(
        [
            transfer("post1", amount=4, pending_id="p1", flags=POST | LINKED),
            transfer("void2", pending_id="p2", flags=VOID | LINKED),
            transfer("p3", "bank", "shop", 5, flags=PENDING | LINKED),
            transfer("bad", "bank", "nobody", 1),
        ]
    )
    assert codes(outcomes)[-1] is Result.CREDIT_ACCOUNT_NOT_FOUND
    assert balances(engine) == before
    ok(engine, transfer("post1", pending_id="p1", flags=POST), transfer("void2", pending_id="p2", flags=VOID))
    assert totals(engine.account("shop")) == (0, 10, 0, 0)


def test_an_applied_chain_replays_as_all_exists(engine: Engine) -> None:
    setup_accounts(engine, "a")
    chain = [transfer("c1", "bank", "a", 10, flags=LINKED), transfer("c2", "bank", "a", 5)]
    applied = ok(engine, *chain)
    before = balances(engine)
    assert engine.create_transfers(chain) == [(Result.EXISTS, applied[0]), (Result.EXISTS, applied[1])]
    assert balances(engine) == before


@pytest.mark.parametrize("existing_first", [True, False], ids=["existing-then-new", "new-then-existing"])
def test_a_chain_mixing_existing_and_new_ids_fails_and_moves_nothing(engine: Engine, existing_first: bool) -> None:
    setup_accounts(engine, "a")
    ok(engine, transfer("old", "bank", "a", 10, flags=LINKED), transfer("old-end", "bank", "a", 1))
    before = balances(engine)
    old = transfer("old", "bank", "a", 10, flags=LINKED)
    new = transfer("new", "bank", "a", 7, flags=LINKED)
    end = transfer("end", "bank", "a", 1)
    chain = [old, new, end] if existing_first else [new, old, end]
    outcomes = engine.create_transfers(chain)
    results = dict(zip([r.id for r in chain], codes(outcomes), strict=True))
    assert results == {"old": Result.EXISTS, "new": Result.LINKED_EVENT_FAILED, "end": Result.LINKED_EVENT_FAILED}
    assert balances(engine) == before
    assert engine.transfer("new") is None and engine.transfer("end") is None


def test_no_transfer_of_a_failed_chain_answers_ok(engine: Engine) -> None:
    setup_accounts(engine, "a")
    ok(engine, transfer("x1", "bank", "a", 1, flags=LINKED), transfer("x2", "bank", "a", 1))
    outcomes = engine.create_transfers([transfer("x1", "bank", "a", 1, flags=LINKED), transfer("y", "bank", "a", 1)])
    assert Result.OK not in codes(outcomes)
    assert engine.transfer("y") is None


# ----------------------------------------------------------------------------- balancing
def test_balancing_debit_moves_what_the_wallet_holds_up_to_the_ceiling(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 70)
    (moved,) = ok(engine, transfer("b1", "w", "shop", 100, flags=BALANCING_DEBIT))
    assert moved.amount == 70
    assert engine.transfer("b1").amount == 70
    assert engine.account("w").balance == 0
    assert engine.account("shop").balance == 70


def test_balancing_debit_moves_the_whole_ceiling_when_there_is_room(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 70)
    (moved,) = ok(engine, transfer("b1", "w", "shop", 50, flags=BALANCING_DEBIT))
    assert moved.amount == 50


def test_balancing_debit_counts_the_credit_limit_and_pending_debits(engine: Engine) -> None:
    setup_accounts(engine, wallet("w", credit_limit=30), "shop")
    fund(engine, "w", 50)
    ok(engine, transfer("p", "w", "shop", 20, flags=PENDING))
    (moved,) = ok(engine, transfer("b1", "w", "shop", 1000, flags=BALANCING_DEBIT))
    assert moved.amount == 60
    assert engine.account("w").available == 0


def test_balancing_credit_moves_what_the_mirror_account_allows(engine: Engine) -> None:
    setup_accounts(engine, mirror("m", credit_limit=5), "shop")
    ok(engine, transfer("out", "m", "shop", 40))
    (moved,) = ok(engine, transfer("b1", "shop", "m", 100, flags=BALANCING_CREDIT))
    assert moved.amount == 45
    assert totals(engine.account("m")) == (40, 45, 0, 0)


def test_balancing_on_an_account_without_limit_moves_the_ceiling(engine: Engine) -> None:
    setup_accounts(engine, "shop")
    (moved,) = ok(engine, transfer("b1", "bank", "shop", 100, flags=BALANCING_DEBIT | BALANCING_CREDIT))
    assert moved.amount == 100


def test_balancing_debit_with_no_room_answers_exceeds_credits(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    assert one(engine, transfer("b1", "w", "shop", 10, flags=BALANCING_DEBIT)) == (Result.EXCEEDS_CREDITS, None)


def test_balancing_credit_with_no_room_answers_exceeds_debits(engine: Engine) -> None:
    setup_accounts(engine, mirror("m"), "shop")
    assert one(engine, transfer("b1", "shop", "m", 10, flags=BALANCING_CREDIT)) == (Result.EXCEEDS_DEBITS, None)


def test_balancing_pending_reserves_what_the_wallet_holds(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 70)
    (moved,) = ok(engine, transfer("b1", "w", "shop", 100, flags=BALANCING_DEBIT | PENDING))
    assert moved.amount == 70
    (post,) = ok(engine, transfer("post", pending_id="b1", flags=POST))
    assert post.amount == 70


def test_balancing_replay_matches_any_ceiling_at_or_above_what_moved(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 70)
    (moved,) = ok(engine, transfer("b1", "w", "shop", 100, flags=BALANCING_DEBIT))
    for ceiling in (100, 70, 500):
        assert one(engine, transfer("b1", "w", "shop", ceiling, flags=BALANCING_DEBIT)) == (Result.EXISTS, moved)
    assert one(engine, transfer("b1", "w", "shop", 69, flags=BALANCING_DEBIT))[0] is Result.EXISTS_WITH_DIFFERENT_FIELDS


# ----------------------------------------------------------------------------- idempotency
def test_a_replay_after_restart_answers_exists_and_moves_nothing(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, "a")
    applied = ok(
        engine,
        transfer("t1", "bank", "a", 10, metadata=(("order", "42"),)),
        transfer("p1", "bank", "a", 5, flags=PENDING, timeout_s=3600),
    )
    ok(engine, transfer("post1", amount=2, pending_id="p1", flags=POST))
    before = balances(engine)
    engine = engines.reopen(engine)
    assert balances(engine) == before
    outcomes = engine.create_transfers(
        [
            transfer("t1", "bank", "a", 10, metadata=(("order", "42"),)),
            transfer("p1", "bank", "a", 5, flags=PENDING, timeout_s=3600),
            transfer("post1", amount=2, pending_id="p1", flags=POST),
            transfer("t1", "bank", "a", 11, metadata=(("order", "42"),)),
            transfer("t1", "bank", "a", 10),
        ]
    )
    assert outcomes[:2] == [(Result.EXISTS, applied[0]), (Result.EXISTS, applied[1])]
    different = Result.EXISTS_WITH_DIFFERENT_FIELDS
    assert codes(outcomes)[2:] == [Result.EXISTS, different, different]
    assert balances(engine) == before


def test_a_replay_in_a_large_batch_after_restart_answers_exists(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, "a")
    batch = [transfer(f"t{i}", "bank", "a", i + 1) for i in range(20)]
    applied = ok(engine, *batch)
    engine = engines.reopen(engine)
    assert engine.create_transfers(batch) == [(Result.EXISTS, t) for t in applied]
    assert engine.transfer("t13") == applied[13]


def test_a_duplicate_id_inside_one_batch_answers_exists_for_the_second(engine: Engine) -> None:
    setup_accounts(engine, "a")
    batch = [transfer(f"t{i}", "bank", "a", 1) for i in range(10)]
    batch.append(transfer("t3", "bank", "a", 1))
    batch.append(transfer("t4", "bank", "a", 2))
    outcomes = engine.create_transfers(batch)
    assert codes(outcomes) == [Result.OK] * 10 + [Result.EXISTS, Result.EXISTS_WITH_DIFFERENT_FIELDS]
    assert engine.account("a").credits_posted == 10


def test_a_declined_id_may_be_retried(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    assert one(engine, transfer("t", "w", "shop", 10))[0] is Result.EXCEEDS_CREDITS
    fund(engine, "w", 10)
    ok(engine, transfer("t", "w", "shop", 10))


def test_a_post_replay_without_amount_matches_only_a_full_post(engine: Engine) -> None:
    setup_accounts(engine, "a")
    ok(engine, transfer("p1", "bank", "a", 50, flags=PENDING), transfer("p2", "bank", "a", 50, flags=PENDING))
    ok(engine, transfer("full", pending_id="p1", flags=POST), transfer("part", amount=20, pending_id="p2", flags=POST))
    outcomes = engine.create_transfers(
        [
            transfer("full", pending_id="p1", flags=POST),
            transfer("full", amount=50, pending_id="p1", flags=POST),
            transfer("full", "bank", "a", 50, USD, pending_id="p1", flags=POST),
            transfer("part", amount=20, pending_id="p2", flags=POST),
            transfer("part", pending_id="p2", flags=POST),
            transfer("part", amount=21, pending_id="p2", flags=POST),
        ]
    )
    assert codes(outcomes) == [Result.EXISTS] * 4 + [Result.EXISTS_WITH_DIFFERENT_FIELDS] * 2


def test_accounts_and_ledgers_are_idempotent_across_restart(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, wallet("w", credit_limit=5), AccountRequest("m", EUR, metadata=(("owner", "x"),)))
    engine = engines.reopen(engine)
    assert engine.create_ledger(USD, 2)[0] is Result.EXISTS
    assert engine.create_ledger(EUR, 3)[0] is Result.EXISTS_WITH_DIFFERENT_FIELDS
    results = engine.create_accounts(
        [wallet("w", credit_limit=5), AccountRequest("m", EUR, metadata=(("owner", "x"),)), AccountRequest("m", EUR)]
    )
    assert codes(results) == [Result.EXISTS, Result.EXISTS, Result.EXISTS_WITH_DIFFERENT_FIELDS]
    assert engine.account("m").metadata == (("owner", "x"),)


# ----------------------------------------------------------------------------- credit limits and account flags
def test_a_credit_limit_lets_a_wallet_go_below_zero_down_to_it(engine: Engine) -> None:
    setup_accounts(engine, wallet("w", credit_limit=50), "shop")
    ok(engine, transfer("t1", "w", "shop", 50))
    assert engine.account("w").balance == -50
    assert engine.account("w").available == 0
    assert one(engine, transfer("t2", "w", "shop", 1))[0] is Result.EXCEEDS_CREDITS


def test_a_credit_limit_on_a_mirror_account_lets_credits_pass_debits_by_it(engine: Engine) -> None:
    setup_accounts(engine, mirror("m", credit_limit=50), "shop")
    ok(engine, transfer("t1", "shop", "m", 50))
    assert one(engine, transfer("t2", "shop", "m", 1))[0] is Result.EXCEEDS_DEBITS


def test_raising_the_credit_limit_allows_more_spending(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    assert one(engine, transfer("t1", "w", "shop", 10))[0] is Result.EXCEEDS_CREDITS
    code, account = engine.set_credit_limit("w", 10)
    assert code is Result.OK and account is not None and account.credit_limit == 10
    ok(engine, transfer("t1", "w", "shop", 10))


def test_the_credit_limit_may_be_lowered_exactly_to_what_is_used(engine: Engine) -> None:
    setup_accounts(engine, wallet("w", credit_limit=100), "shop")
    ok(engine, transfer("t1", "w", "shop", 40), transfer("p1", "w", "shop", 20, flags=PENDING))
    assert engine.set_credit_limit("w", 59)[0] is Result.CREDIT_LIMIT_BELOW_USAGE
    assert engine.set_credit_limit("w", 60)[0] is Result.OK
    assert engine.account("w").available == 0


def test_the_credit_limit_of_a_mirror_account_cannot_drop_below_usage(engine: Engine) -> None:
    setup_accounts(engine, mirror("m", credit_limit=100), "shop")
    ok(engine, transfer("t1", "shop", "m", 40))
    assert engine.set_credit_limit("m", 39)[0] is Result.CREDIT_LIMIT_BELOW_USAGE
    assert engine.set_credit_limit("m", 40)[0] is Result.OK


def test_a_credit_limit_without_a_limit_flag_changes_nothing(engine: Engine) -> None:
    setup_accounts(engine, AccountRequest("plain", USD, credit_limit=5), "shop")
    ok(engine, transfer("t1", "plain", "shop", 1000))
    assert engine.set_credit_limit("plain", 0)[0] is Result.OK


def test_a_credit_limit_change_survives_restart(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    engine.set_credit_limit("w", 25)
    engine = engines.reopen(engine)
    assert engine.account("w").credit_limit == 25
    ok(engine, transfer("t1", "w", "shop", 25))


def test_a_lowered_credit_limit_does_not_stop_recovery_of_earlier_spending(engine: Engine, engines: Engines) -> None:
    """Spending within a higher limit, repaid, then the limit lowered: the log replays."""
    setup_accounts(engine, wallet("w", credit_limit=100), "shop")
    ok(engine, transfer("p", "w", "shop", 80, flags=PENDING, timeout_s=1))
    ok(engine, transfer("q", "w", "shop", 20, flags=PENDING))
    ok(engine, transfer("post", pending_id="q", flags=POST))
    ok(engine, transfer("repay", "bank", "w", 100))
    engines.clock.advance(3)
    tick(engine)  # p expires
    assert engine.account("w").debits_pending == 0
    assert engine.set_credit_limit("w", 0)[0] is Result.OK
    before = balances(engine)
    engine = engines.reopen(engine)
    assert balances(engine) == before
    assert engine.account("w").credit_limit == 0
    assert engine.account("w").available == 80
    engine.verify()


def test_a_wallet_may_receive_without_limit_and_a_mirror_may_pay_without_limit(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), mirror("m"))
    ok(engine, transfer("t1", "bank", "w", 10**12), transfer("t2", "m", "bank", 10**12))


def test_both_sides_limited_in_one_transfer(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), mirror("m", credit_limit=3))
    fund(engine, "w", 10)
    assert one(engine, transfer("t1", "w", "m", 4))[0] is Result.EXCEEDS_DEBITS
    ok(engine, transfer("t2", "w", "m", 3))
    assert engine.account("w").balance == 7


# ----------------------------------------------------------------------------- malformed requests
MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("empty id", {"id": ""}),
    ("id too long", {"id": "x" * 129}),
    ("id with a comma", {"id": "a,b"}),
    ("id with a space", {"id": "a b"}),
    ("id not ascii", {"id": "caf\u00e9"}),
    ("id not a string", {"id": 7}),
    ("account id not a string", {"debit_account_id": None}),
    ("amount a float", {"amount": 1.0}),
    ("amount a bool", {"amount": True}),
    ("amount a string", {"amount": "5"}),
    ("ledger too long", {"ledger": "L" * 13}),
    ("ledger not a string", {"ledger": 1}),
    ("code negative", {"code": -1}),
    ("code too large", {"code": 65536}),
    ("flags unknown bit", {"flags": 64}),
    ("flags negative", {"flags": -1}),
    ("timeout negative", {"timeout_s": -1}),
    ("timeout too long", {"timeout_s": TIMEOUT_S_MAX + 1}),
    ("metadata not pairs", {"metadata": (("k",),)}),
    ("metadata a dict", {"metadata": {"k": "v"}}),
    ("metadata key empty", {"metadata": (("", "v"),)}),
    ("metadata value not a string", {"metadata": (("k", 1),)}),
    ("metadata too many keys", {"metadata": tuple((f"k{i}", "v") for i in range(21))}),
]


@pytest.mark.parametrize(("fields"), [f for _, f in MALFORMED], ids=[name for name, _ in MALFORMED])
@pytest.mark.parametrize("size", [1, 3, 12], ids=["alone", "small-batch", "large-batch"])
def test_a_malformed_transfer_fails_its_whole_submission_before_anything_moves(
    engine: Engine, fields: dict[str, Any], size: int
) -> None:
    setup_accounts(engine, "a")
    batch = [transfer(f"good{i}", "bank", "a", 1) for i in range(size)]
    bad_index = size // 2
    batch[bad_index] = batch[bad_index]._replace(**fields)
    before = balances(engine)
    with pytest.raises(MalformedRequest) as raised:
        engine.create_transfers(batch)
    assert raised.value.param is not None and raised.value.param.startswith(f"transfers[{bad_index}]")
    with pytest.raises(MalformedRequest):
        engine.submit_transfers(batch)
    assert balances(engine) == before
    assert engine.transfer_count() == 0


def test_a_transfer_that_is_not_a_transfer_request_is_malformed(engine: Engine) -> None:
    setup_accounts(engine, "a")
    as_tuple = tuple(transfer("t", "bank", "a", 1))
    with pytest.raises(MalformedRequest):
        engine.create_transfers([as_tuple])


def test_transfer_flags_values_are_accepted_as_flags(engine: Engine, engines: Engines) -> None:
    setup_accounts(engine, "a")
    plain = [transfer(f"t{i}", "bank", "a", 1, flags=TransferFlags.NONE) for i in range(10)]
    ok(engine, *plain)  # the fast path
    ok(engine, transfer("u", "bank", "a", 1, flags=TransferFlags.NONE), transfer("p", "bank", "a", 1, flags=PENDING))
    engine = engines.reopen(engine)
    assert engine.transfer("t3").flags == 0
    assert engine.transfer("p").flags == PENDING
    assert codes(engine.create_transfers(plain)) == [Result.EXISTS] * 10


@pytest.mark.parametrize("size", [0, BATCH_SIZE_MAX + 1], ids=["empty", "too-large"])
def test_a_batch_outside_its_size_bounds_is_malformed(engine: Engine, size: int) -> None:
    with pytest.raises(MalformedRequest):
        engine.create_transfers([transfer(f"t{i}", "bank", "a", 1) for i in range(size)])
    with pytest.raises(MalformedRequest):
        engine.create_accounts([AccountRequest(f"a{i}", USD) for i in range(size)])


@pytest.mark.parametrize(
    "request_",
    [
        AccountRequest("", USD),
        AccountRequest("a,b", USD),
        AccountRequest("a", ""),
        AccountRequest("a", "U-S"),
        AccountRequest("a", USD, flags=4),
        AccountRequest("a", USD, credit_limit=-1),
        AccountRequest("a", USD, credit_limit=CREDIT_LIMIT_MAX + 1),
        AccountRequest("a", USD, metadata=(("k", "v" * 501),)),
    ],
    ids=["empty-id", "comma-id", "empty-ledger", "bad-ledger", "unknown-flag", "low-limit", "huge-limit", "metadata"],
)
def test_a_malformed_account_fails_its_whole_submission(engine: Engine, request_: AccountRequest) -> None:
    with pytest.raises(MalformedRequest):
        engine.create_accounts([AccountRequest("fine", USD), request_])
    assert engine.account("fine") is None


@pytest.mark.parametrize(
    ("code", "scale"), [("", 2), ("US D", 2), ("X" * 13, 2), ("USD", -1), ("USD", 13), ("USD", 2.0)]
)
def test_a_malformed_ledger_is_refused(engine: Engine, code: str, scale: Any) -> None:
    with pytest.raises(MalformedRequest):
        engine.create_ledger(code, scale)


@pytest.mark.parametrize("limit", [-1, CREDIT_LIMIT_MAX + 1, 1.5, True])
def test_a_malformed_credit_limit_is_refused(engine: Engine, limit: Any) -> None:
    setup_accounts(engine, wallet("w"))
    with pytest.raises(MalformedRequest):
        engine.set_credit_limit("w", limit)
    with pytest.raises(MalformedRequest):
        engine.set_credit_limit("no good", 5)
    assert engine.account("w").credit_limit == 0
