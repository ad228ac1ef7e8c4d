"""The pure state machine: a rolled-back batch leaves no trace, and batch boundaries are enforced."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_testkit import BALANCING_DEBIT, CMNED, DMNEC, EUR, LINKED, NS, PENDING, POST, USD, VOID

from micropay.errors import InvariantViolation
from micropay.ledger import AccountRequest, LedgerState, PendingStatus, Result, Transfer, TransferRequest

ACCOUNTS = ["u0", "u1", "w0", "w1", "m0", "e0", "new0", "missing"]
PENDINGS = ["p-short", "p-long", "p-open", "p-done"]


class Committed:
    """The state machine's read-back port over the transfers of committed batches."""

    def __init__(self) -> None:
        self.transfers: dict[str, Transfer] = {}

    def fetch(self, transfer_id: str, _locator: int) -> Transfer | None:
        return self.transfers.get(transfer_id)

    def commit(self, state: LedgerState) -> None:
        self.transfers.update((t.id, t) for t in state.commit().transfers)


def base_state() -> tuple[LedgerState, Committed]:
    """Two ledgers, accounts with and without limits, funds, and pending transfers with timeouts."""
    committed = Committed()
    state = LedgerState(committed.fetch)
    state.begin(10 * NS)
    state.create_ledger(USD, 2)
    state.create_ledger(EUR, 2)
    for request in (
        AccountRequest("u0", USD),
        AccountRequest("u1", USD),
        AccountRequest("w0", USD, DMNEC),
        AccountRequest("w1", USD, DMNEC, credit_limit=30),
        AccountRequest("m0", USD, CMNED, credit_limit=50),
        AccountRequest("e0", EUR),
    ):
        assert state.create_account(request)[0] is Result.OK
    setup = [
        TransferRequest("f0", "u0", "w0", 100, USD),
        TransferRequest("f1", "u0", "w1", 10, USD),
        TransferRequest("p-short", "w0", "u1", 20, USD, flags=PENDING, timeout_s=5),
        TransferRequest("p-long", "w1", "m0", 15, USD, flags=PENDING, timeout_s=500),
        TransferRequest("p-open", "u0", "m0", 5, USD, flags=PENDING),
        TransferRequest("p-done", "u1", "w0", 7, USD, flags=PENDING),
        TransferRequest("done", pending_id="p-done", flags=POST),
    ]
    assert [code for code, _ in state.create_transfers(setup)] == [Result.OK] * len(setup)
    committed.commit(state)
    return state, committed


def snapshot(state: LedgerState) -> tuple[object, ...]:
    return (
        state.ledgers(),
        [state.account(a) for a in sorted(state.account_ids())],
        state.transfer_count(),
        [state.pending_status(p) for p in PENDINGS],
    )


@st.composite
def requests(draw: st.DrawFn, prefix: str) -> list[TransferRequest]:
    found: list[TransferRequest] = []
    for i in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["plain", "plain", "pending", "post", "void", "balancing", "replay"]))
        transfer_id = draw(st.sampled_from([f"{prefix}{i}", f"{prefix}{i}", "f0", "p-open"]))
        if kind in ("post", "void"):
            request = TransferRequest(
                transfer_id,
                amount=draw(st.sampled_from([None, 3, 100])),
                flags=POST if kind == "post" else VOID,
                pending_id=draw(st.sampled_from(PENDINGS)),
            )
        elif kind == "replay":
            request = TransferRequest("f0", "u0", "w0", 100, USD)
        else:
            debit, credit = draw(st.sampled_from(ACCOUNTS)), draw(st.sampled_from(ACCOUNTS))
            flags = {"plain": 0, "pending": PENDING, "balancing": BALANCING_DEBIT}[kind]
            request = TransferRequest(transfer_id, debit, credit, draw(st.integers(1, 60)), USD, flags=flags)
        if draw(st.integers(0, 4)) == 0:
            request = request._replace(flags=int(request.flags) | LINKED)
        found.append(request)
    return found


def run_batch(state: LedgerState, now_ns: int, groups: Sequence[list[TransferRequest]], extras: bool) -> list[object]:
    """One batch of everything a batch may hold; what it answered (timestamps and all)."""
    state.begin(now_ns)
    answers: list[object] = []
    if extras:
        answers.append(state.create_ledger("PTS", 0))
        answers.append(state.create_account(AccountRequest("new0", USD, DMNEC)))
        answers.append(state.set_credit_limit("w1", 100))
        answers.append(state.set_credit_limit("m0", 0))
    for group in groups:
        answers.append(list(state.create_transfers(group)))
    return answers


@settings(max_examples=150, deadline=None)
@given(
    rolled_back=st.lists(requests("x"), min_size=1, max_size=3),
    later=st.lists(requests("y"), min_size=1, max_size=3),
    extras=st.booleans(),
    seconds=st.sampled_from([0, 5, 600]),
)
def test_a_rolled_back_batch_leaves_no_trace(
    rolled_back: list[list[TransferRequest]], later: list[list[TransferRequest]], extras: bool, seconds: int
) -> None:
    subject, subject_store = base_state()
    twin, twin_store = base_state()
    before = snapshot(subject)
    run_batch(subject, 20 * NS + seconds * NS, rolled_back, extras)  # may expire pending transfers too
    subject.rollback()
    assert snapshot(subject) == before
    subject.verify()
    # What comes next happens exactly as if the rolled-back batch had never run.
    now = 10_000 * NS
    assert run_batch(subject, now, later, extras) == run_batch(twin, now, later, extras)
    assert snapshot(subject) == snapshot(twin)
    subject_store.commit(subject)
    twin_store.commit(twin)
    subject.verify()


def test_a_chain_rolled_back_inside_a_batch_keeps_what_came_before_it() -> None:
    state, _ = base_state()
    state.begin(20 * NS)
    first = state.create_transfers([TransferRequest("a", "u0", "u1", 5, USD)])
    mark = state.mark()
    state.create_transfers([TransferRequest("b", "u0", "u1", 6, USD)])
    state.rollback_to(mark)
    assert first[0][0] is Result.OK
    assert state.transfer_locator("a") is not None and state.transfer_locator("b") is None
    assert state.account("u1").credits_posted == 5


def test_batch_boundaries_are_enforced() -> None:
    state, _ = base_state()
    state.begin(20 * NS)
    mark = state.mark()
    state.create_transfers([TransferRequest("a", "u0", "u1", 5, USD)])
    with pytest.raises(InvariantViolation):
        state.begin(30 * NS)  # a batch is open
    state.rollback_to(mark)
    with pytest.raises(InvariantViolation):
        state.rollback_to((1, 0, 0, 0, 0))  # past what the batch holds
    journal = state.commit()
    state.begin(40 * NS)
    state.create_transfers([TransferRequest("b", "u0", "u1", 5, USD)])
    with pytest.raises(InvariantViolation):
        state.replay(journal)  # recovery happens between batches only
    with pytest.raises(InvariantViolation):
        state.set_credit_limit("w0", -1)  # callers validate first; the state machine insists


def test_expiry_happens_at_begin_and_is_journaled() -> None:
    state, _ = base_state()
    state.begin(10 * NS + 5 * NS - 1)
    assert state.journal().expired == []
    state.commit()
    state.begin(10 * NS + 5 * NS + 100)
    assert state.journal().expired == ["p-short"]
    assert state.pending_status("p-short") is PendingStatus.EXPIRED
    assert state.account("w0").debits_pending == 0


def test_available_is_the_snapshots_available_without_the_snapshot() -> None:
    """Limits, pending debits and credits alike (the charging path reads it once per payer)."""
    state, _ = base_state()
    for account_id in sorted(state.account_ids()):
        account = state.account(account_id)
        assert account is not None
        assert state.available(account_id) == account.available
    assert state.available("missing") is None
