"""One test per result code: the smallest situation that answers it, and what it moves.

Every failing code moves nothing: balances before and after are equal and the id stays free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ledger_testkit import (
    BALANCING_DEBIT,
    CMNED,
    DMNEC,
    EUR,
    LINKED,
    PENDING,
    POST,
    USD,
    VOID,
    Clock,
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
from micropay.ledger import AccountRequest, Result, TransferRequest
from micropay.ledger.limits import AMOUNT_MAX, BALANCE_MAX, BATCH_SIZE_MAX

F = TypeVar("F", bound=Callable[..., None])
COVERED: set[Result] = set()


def covers(*results: Result) -> Callable[[F], F]:
    """Record which result codes a test demonstrates (see the last test of this module)."""

    def mark(test: F) -> F:
        COVERED.update(results)
        return test

    return mark


def refused(engine: Engine, request: TransferRequest, expected: Result) -> None:
    """Submit one transfer; it must answer ``expected``, move nothing and leave its id unused."""
    before = balances(engine)
    code, found = one(engine, request)
    assert code is expected
    assert found is None
    assert balances(engine) == before
    assert engine.transfer(request[0]) is None


# ----------------------------------------------------------------------------- successes
@covers(Result.OK)
def test_ok_moves_the_amount_from_debit_to_credit_account(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    (applied,) = ok(engine, transfer("t1", "bank", "alice", 250, code=7))
    assert (applied.id, applied.amount, applied.code, applied.flags) == ("t1", 250, 7, 0)
    assert totals(engine.account("bank")) == (250, 0, 0, 0)
    assert totals(engine.account("alice")) == (0, 250, 0, 0)
    assert engine.account("alice").balance == 250
    assert engine.transfer("t1") == applied


@covers(Result.EXISTS)
def test_exists_answers_the_original_transfer_and_moves_nothing(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    (first,) = ok(engine, transfer("t1", "bank", "alice", 250))
    before = balances(engine)
    assert one(engine, transfer("t1", "bank", "alice", 250)) == (Result.EXISTS, first)
    assert balances(engine) == before


@covers(Result.EXISTS_WITH_DIFFERENT_FIELDS)
def test_exists_with_different_fields_when_an_id_is_reused_for_another_transfer(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    (first,) = ok(engine, transfer("t1", "bank", "alice", 250))
    before = balances(engine)
    for changed in (
        transfer("t1", "bank", "alice", 251),
        transfer("t1", "alice", "bank", 250),
        transfer("t1", "bank", "alice", 250, code=1),
        transfer("t1", "bank", "alice", 250, metadata=(("k", "v"),)),
        transfer("t1", "bank", "alice", 250, flags=PENDING),
    ):
        assert one(engine, changed) == (Result.EXISTS_WITH_DIFFERENT_FIELDS, first)
    assert balances(engine) == before


# ----------------------------------------------------------------------------- accounts and ledgers
@covers(Result.ACCOUNTS_MUST_BE_DIFFERENT)
def test_accounts_must_be_different(engine: Engine) -> None:
    refused(engine, transfer("t1", "bank", "bank", 1), Result.ACCOUNTS_MUST_BE_DIFFERENT)


@covers(Result.DEBIT_ACCOUNT_NOT_FOUND)
def test_debit_account_not_found(engine: Engine) -> None:
    refused(engine, transfer("t1", "nobody", "bank", 1), Result.DEBIT_ACCOUNT_NOT_FOUND)


@covers(Result.CREDIT_ACCOUNT_NOT_FOUND)
def test_credit_account_not_found(engine: Engine) -> None:
    refused(engine, transfer("t1", "bank", "nobody", 1), Result.CREDIT_ACCOUNT_NOT_FOUND)


@covers(Result.ACCOUNT_NOT_FOUND)
def test_account_not_found_when_setting_the_credit_limit_of_an_unknown_account(engine: Engine) -> None:
    assert engine.set_credit_limit("nobody", 10) == (Result.ACCOUNT_NOT_FOUND, None)


@covers(Result.LEDGER_NOT_FOUND)
def test_ledger_not_found_when_opening_an_account_on_an_unknown_ledger(engine: Engine) -> None:
    assert engine.create_accounts([AccountRequest("a", "JPY")]) == [(Result.LEDGER_NOT_FOUND, None)]
    assert engine.account("a") is None


@covers(Result.LEDGER_MISMATCH)
def test_ledger_mismatch_between_the_accounts(engine: Engine) -> None:
    setup_accounts(engine, AccountRequest("euro", EUR))
    refused(engine, transfer("t1", "bank", "euro", 1, USD), Result.LEDGER_MISMATCH)
    refused(engine, transfer("t2", "bank", "euro", 1, EUR), Result.LEDGER_MISMATCH)


@covers(Result.LEDGER_MISMATCH)
def test_ledger_mismatch_between_the_transfer_and_its_accounts(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    refused(engine, transfer("t1", "bank", "alice", 1, EUR), Result.LEDGER_MISMATCH)


def test_ledger_exists_and_exists_with_different_fields(engine: Engine) -> None:
    assert engine.create_ledger(USD, 2)[0] is Result.EXISTS
    assert engine.create_ledger(USD, 6)[0] is Result.EXISTS_WITH_DIFFERENT_FIELDS
    assert engine.ledger(USD).scale == 2


def test_account_exists_and_exists_with_different_fields(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"))
    assert engine.create_accounts([wallet("w")])[0][0] is Result.EXISTS
    assert engine.create_accounts([AccountRequest("w", USD)])[0][0] is Result.EXISTS_WITH_DIFFERENT_FIELDS
    assert engine.create_accounts([wallet("w", ledger=EUR)])[0][0] is Result.EXISTS_WITH_DIFFERENT_FIELDS
    assert engine.account("w").flags == DMNEC


# ----------------------------------------------------------------------------- amounts
@covers(Result.AMOUNT_MUST_BE_POSITIVE)
def test_amount_must_be_positive(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    refused(engine, transfer("t1", "bank", "alice", 0), Result.AMOUNT_MUST_BE_POSITIVE)
    refused(engine, transfer("t2", "bank", "alice", -5), Result.AMOUNT_MUST_BE_POSITIVE)
    refused(engine, transfer("t3", "bank", "alice", None), Result.AMOUNT_MUST_BE_POSITIVE)


@covers(Result.AMOUNT_EXCEEDS_MAXIMUM)
def test_amount_exceeds_maximum(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    refused(engine, transfer("t1", "bank", "alice", AMOUNT_MAX + 1), Result.AMOUNT_EXCEEDS_MAXIMUM)
    ok(engine, transfer("t2", "bank", "alice", AMOUNT_MAX))


def _pile_up(engine: Engine, prefix: str, debit: str, credit: str, count: int) -> None:
    """``count`` transfers of AMOUNT_MAX from ``debit`` to ``credit``, in full batches."""
    for start in range(0, count, BATCH_SIZE_MAX):
        stop = min(count, start + BATCH_SIZE_MAX)
        ok(engine, *(transfer(f"{prefix}{i}", debit, credit, AMOUNT_MAX) for i in range(start, stop)))


@covers(Result.OVERFLOWS_DEBITS)
def test_overflows_debits_when_a_debit_total_would_pass_the_64_bit_bound(engine: Engine) -> None:
    setup_accounts(engine, "sink1", "sink2", "sink3")
    full = BALANCE_MAX // AMOUNT_MAX  # 9223 transfers fit, one more does not
    _pile_up(engine, "a", "bank", "sink1", full // 2)
    _pile_up(engine, "b", "bank", "sink2", full - full // 2)
    refused(engine, transfer("over", "bank", "sink3", AMOUNT_MAX), Result.OVERFLOWS_DEBITS)
    ok(engine, transfer("fits", "bank", "sink3", BALANCE_MAX - full * AMOUNT_MAX))
    assert engine.account("bank").debits_posted == BALANCE_MAX
    engine.verify()


@covers(Result.OVERFLOWS_CREDITS)
def test_overflows_credits_when_a_credit_total_would_pass_the_64_bit_bound(engine: Engine) -> None:
    setup_accounts(engine, "src1", "src2", "src3", "sink")
    full = BALANCE_MAX // AMOUNT_MAX
    _pile_up(engine, "a", "src1", "sink", full // 2)
    _pile_up(engine, "b", "src2", "sink", full - full // 2)
    refused(engine, transfer("over", "src3", "sink", AMOUNT_MAX), Result.OVERFLOWS_CREDITS)
    engine.verify()


# ----------------------------------------------------------------------------- balance limits
@covers(Result.EXCEEDS_CREDITS)
def test_exceeds_credits_when_a_wallet_would_spend_more_than_it_holds(engine: Engine) -> None:
    setup_accounts(engine, wallet("w"), "shop")
    fund(engine, "w", 100)
    refused(engine, transfer("t1", "w", "shop", 101), Result.EXCEEDS_CREDITS)
    ok(engine, transfer("t2", "w", "shop", 100))


@covers(Result.EXCEEDS_DEBITS)
def test_exceeds_debits_when_a_mirror_account_would_receive_more_than_it_paid(engine: Engine) -> None:
    setup_accounts(engine, mirror("m"), "shop")
    ok(engine, transfer("t0", "m", "shop", 40))
    refused(engine, transfer("t1", "shop", "m", 41), Result.EXCEEDS_DEBITS)
    ok(engine, transfer("t2", "shop", "m", 40))


@covers(Result.CREDIT_LIMIT_BELOW_USAGE)
def test_credit_limit_below_usage_when_lowering_the_limit_under_what_is_spent(engine: Engine) -> None:
    setup_accounts(engine, wallet("w", credit_limit=100), "shop")
    ok(engine, transfer("t1", "w", "shop", 60))
    code, account = engine.set_credit_limit("w", 59)
    assert code is Result.CREDIT_LIMIT_BELOW_USAGE
    assert account is not None and account.credit_limit == 100
    assert engine.account("w").credit_limit == 100


@covers(Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE)
def test_flags_are_mutually_exclusive_on_an_account_with_both_limit_flags(engine: Engine) -> None:
    request = AccountRequest("both", USD, flags=DMNEC | CMNED)
    assert engine.create_accounts([request]) == [(Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE, None)]
    assert engine.account("both") is None


@covers(Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE)
def test_flags_are_mutually_exclusive_on_post_with_void_pending_or_balancing(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    for i, flags in enumerate((POST | VOID, POST | PENDING, VOID | PENDING, POST | BALANCING_DEBIT)):
        refused(engine, transfer(f"r{i}", pending_id="p", flags=flags), Result.FLAGS_ARE_MUTUALLY_EXCLUSIVE)


# ----------------------------------------------------------------------------- linked chains
@covers(Result.LINKED_EVENT_FAILED)
def test_linked_event_failed_for_the_other_members_of_a_failed_chain(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    before = balances(engine)
    outcomes = engine.create_transfers(
        [
            transfer("c1", "bank", "alice", 5, flags=LINKED),
            transfer("c2", "bank", "nobody", 5, flags=LINKED),
            transfer("c3", "bank", "alice", 5),
        ]
    )
    assert codes(outcomes) == [Result.LINKED_EVENT_FAILED, Result.CREDIT_ACCOUNT_NOT_FOUND, Result.LINKED_EVENT_FAILED]
    assert balances(engine) == before
    assert [engine.transfer(i) for i in ("c1", "c2", "c3")] == [None, None, None]


@covers(Result.LINKED_EVENT_CHAIN_OPEN)
def test_linked_event_chain_open_when_the_last_event_of_a_batch_is_linked(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    before = balances(engine)
    outcomes = engine.create_transfers(
        [
            transfer("solo", "bank", "alice", 1),
            transfer("c1", "bank", "alice", 5, flags=LINKED),
            transfer("c2", "bank", "alice", 5, flags=LINKED),
        ]
    )
    assert codes(outcomes) == [Result.OK, Result.LINKED_EVENT_FAILED, Result.LINKED_EVENT_CHAIN_OPEN]
    assert engine.account("alice").credits_posted == before["alice"][1] + 1
    assert engine.transfer("c1") is None
    assert codes(engine.create_transfers([transfer("c3", "bank", "alice", 5, flags=LINKED)])) == [
        Result.LINKED_EVENT_CHAIN_OPEN
    ]


# ----------------------------------------------------------------------------- pending id and timeout shape
@covers(Result.PENDING_ID_REQUIRED)
def test_pending_id_required_on_post_and_void(engine: Engine) -> None:
    refused(engine, transfer("r1", flags=POST), Result.PENDING_ID_REQUIRED)
    refused(engine, transfer("r2", flags=VOID), Result.PENDING_ID_REQUIRED)


@covers(Result.PENDING_ID_MUST_BE_EMPTY)
def test_pending_id_must_be_empty_on_a_transfer_that_resolves_nothing(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    refused(engine, transfer("t1", "bank", "alice", 10, pending_id="p"), Result.PENDING_ID_MUST_BE_EMPTY)
    refused(engine, transfer("t2", "bank", "alice", 10, pending_id="p", flags=PENDING), Result.PENDING_ID_MUST_BE_EMPTY)


@covers(Result.PENDING_ID_MUST_BE_DIFFERENT)
def test_pending_id_must_be_different_from_the_transfers_own_id(engine: Engine) -> None:
    refused(engine, transfer("r1", pending_id="r1", flags=POST), Result.PENDING_ID_MUST_BE_DIFFERENT)


@covers(Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER)
def test_timeout_reserved_for_pending_transfer(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    refused(engine, transfer("t1", "bank", "alice", 10, timeout_s=5), Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER)
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    post_with_timeout = transfer("r1", pending_id="p", flags=POST, timeout_s=5)
    refused(engine, post_with_timeout, Result.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER)


# ----------------------------------------------------------------------------- resolving pending transfers
@covers(Result.PENDING_TRANSFER_NOT_FOUND)
def test_pending_transfer_not_found(engine: Engine) -> None:
    refused(engine, transfer("r1", pending_id="ghost", flags=POST), Result.PENDING_TRANSFER_NOT_FOUND)
    refused(engine, transfer("r2", pending_id="ghost", flags=VOID), Result.PENDING_TRANSFER_NOT_FOUND)


@covers(Result.PENDING_TRANSFER_NOT_PENDING)
def test_pending_transfer_not_pending_when_the_target_is_a_plain_transfer(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("plain", "bank", "alice", 10))
    refused(engine, transfer("r1", pending_id="plain", flags=POST), Result.PENDING_TRANSFER_NOT_PENDING)
    refused(engine, transfer("r2", pending_id="plain", flags=VOID), Result.PENDING_TRANSFER_NOT_PENDING)


@covers(Result.PENDING_TRANSFER_ALREADY_POSTED)
def test_pending_transfer_already_posted(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    ok(engine, transfer("post", pending_id="p", flags=POST))
    refused(engine, transfer("again", pending_id="p", flags=POST), Result.PENDING_TRANSFER_ALREADY_POSTED)
    refused(engine, transfer("void", pending_id="p", flags=VOID), Result.PENDING_TRANSFER_ALREADY_POSTED)


@covers(Result.PENDING_TRANSFER_ALREADY_VOIDED)
def test_pending_transfer_already_voided(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    ok(engine, transfer("void", pending_id="p", flags=VOID))
    refused(engine, transfer("post", pending_id="p", flags=POST), Result.PENDING_TRANSFER_ALREADY_VOIDED)
    refused(engine, transfer("again", pending_id="p", flags=VOID), Result.PENDING_TRANSFER_ALREADY_VOIDED)


@covers(Result.PENDING_TRANSFER_EXPIRED)
def test_pending_transfer_expired(engine: Engine, clock: Clock) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING, timeout_s=30))
    clock.advance(31)
    tick(engine)  # expiry happens when a batch begins
    refused(engine, transfer("post", pending_id="p", flags=POST), Result.PENDING_TRANSFER_EXPIRED)
    refused(engine, transfer("void", pending_id="p", flags=VOID), Result.PENDING_TRANSFER_EXPIRED)


@covers(Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID)
def test_pending_transfer_has_different_debit_account_id(engine: Engine) -> None:
    setup_accounts(engine, "alice", "bob")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    refused(
        engine,
        transfer("r", "bob", "alice", 10, pending_id="p", flags=POST),
        Result.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
    )


@covers(Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID)
def test_pending_transfer_has_different_credit_account_id(engine: Engine) -> None:
    setup_accounts(engine, "alice", "bob")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    refused(
        engine,
        transfer("r", "bank", "bob", 10, pending_id="p", flags=VOID),
        Result.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID,
    )


@covers(Result.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER)
def test_pending_transfer_has_different_ledger(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    refused(engine, transfer("r", ledger=EUR, pending_id="p", flags=POST), Result.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER)


@covers(Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT)
def test_pending_transfer_has_different_amount_when_a_void_names_another_amount(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    refused(engine, transfer("r", amount=9, pending_id="p", flags=VOID), Result.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT)
    ok(engine, transfer("r", amount=10, pending_id="p", flags=VOID))


@covers(Result.EXCEEDS_PENDING_TRANSFER_AMOUNT)
def test_exceeds_pending_transfer_amount_when_posting_more_than_reserved(engine: Engine) -> None:
    setup_accounts(engine, "alice")
    ok(engine, transfer("p", "bank", "alice", 10, flags=PENDING))
    refused(engine, transfer("r", amount=11, pending_id="p", flags=POST), Result.EXCEEDS_PENDING_TRANSFER_AMOUNT)
    refused(engine, transfer("z", amount=0, pending_id="p", flags=POST), Result.AMOUNT_MUST_BE_POSITIVE)


def test_every_result_code_has_a_test() -> None:
    assert set(Result) - COVERED == set()
