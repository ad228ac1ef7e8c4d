"""Prepay and post-pay: payers, merchants, top-ups, charges and refunds, as engine operations.

Each public function here builds an operation ``(ctx: BatchContext) -> (record, replayed)``
that the engine runs inside one durable batch: it reads records and balances, decides, moves
money only by ledger transfers (one linked chain, so all or nothing), and writes its records.
Raising ``Refused`` (or any error) undoes everything the operation did: a decline moves nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import repeat
from operator import is_
from typing import TypeVar, cast

from micropay.engine import BatchContext, Engine
from micropay.errors import (
    ApiError,
    Conflict,
    InvariantViolation,
    MalformedRequest,
    MicropayError,
    NotFound,
    PaymentDeclined,
    Refused,
    require,
)
from micropay.ledger import AccountRequest, Result, Transfer, TransferFlags, TransferRequest, outcome_codes
from micropay.ledger.limits import AMOUNT_MAX, BATCH_SIZE_MAX
from micropay.models import chart, index
from micropay.models.charge_columns import COLUMN_CHARGES_MIN, charge_columns
from micropay.models.collection import CAP_USAGE as CAP_USAGE  # re-exported: the payer's records
from micropay.models.collection import PAYER_PROMO as PAYER_PROMO
from micropay.models.collection import PayerRoom, collection_legs, open_room, promo_key
from micropay.models.collection import check_amount as check_amount
from micropay.models.records import (
    NO_SOURCES,
    Charge,
    Merchant,
    MerchantHolds,
    Payer,
    PayerPromo,
    Refund,
    SpendCap,
    Topup,
    decode_charge,
    decode_merchant,
    decode_merchant_holds,
    decode_payer,
    decode_payer_promo,
    decode_refund,
    decode_topup,
    dumps,
    encode,
    encode_charge,
    sources_of,
)
from micropay.models.rules import (
    CAP_PERIODS,
    MODES,
    Sources,
    platform_fee,
    refund_split,
    restore_grants,
)
from micropay.models.tab import accrue
from micropay.settlement.rails import RailOutcome, Rails

R = TypeVar("R")
Outcome = tuple[R, bool]
"""An operation's answer: the record, and whether it was a replay of an earlier request."""

PAYER_STATUSES = ("active", "suspended")
SPEND_CAPS_MAX = 4
HOLD_DAYS_MAX = 365
DESCRIPTION_LENGTH_MAX = 500

_LINKED = int(TransferFlags.LINKED)
_NS_PER_DAY = 86_400 * 1_000_000_000

# Document kinds.
PAYER = "payer"
# PAYER_PROMO and CAP_USAGE (``collection``) are the payer's promo grants and cap usage.
PAYER_REQUEST = "payer_request"
"""The fields a payer was created with, which a replay of its create must match (PATCH may
change the payer's credit limit and caps later; the create request stays what it was)."""
MERCHANT, MERCHANT_HOLDS = "merchant", "merchant_holds"
CHARGE, REFUND, TOPUP = "charge", "refund", "topup"


# ----------------------------------------------------------------- reading records
def _read(ctx: BatchContext, kind: str, record_id: str, decode: Callable[[bytes], R]) -> R | None:
    body = ctx.get_document(kind, record_id)
    return None if body is None else decode(body)


DECODED_MAX = 100_000
"""Decoded payers and merchants remembered by their stored bytes (per kind)."""
_decoded_payers: dict[bytes, Payer] = {}
_decoded_merchants: dict[bytes, Merchant] = {}


def _read_settled(
    ctx: BatchContext, kind: str, record_id: str, decode: Callable[[bytes], R], decoded: dict[bytes, R]
) -> R | None:
    """``_read`` for records that change rarely (payers, merchants): every charge reads them, so
    the decoded record is kept by its body. Records are immutable and a changed record is stored
    as new bytes, so a body always maps to what it says."""
    body = ctx.get_document(kind, record_id)
    if body is None:
        return None
    record = decoded.get(body)
    if record is None:
        if len(decoded) >= DECODED_MAX:
            decoded.clear()
        record = decoded[body] = decode(body)
    return record


def _read_all(
    ctx: BatchContext, kind: str, record_ids: list[str], decode: Callable[[bytes], R], decoded: dict[bytes, R]
) -> dict[str, R] | None:
    """``_read_settled`` of each distinct id (by C-level passes, for the column paths'
    thousands), or None if any is missing."""
    ids = list(dict.fromkeys(record_ids))
    bodies = ctx.get_documents(kind, ids)
    if len(bodies) != len(ids):
        return None
    ordered = list(map(bodies.__getitem__, ids))
    records: list[R | None] = list(map(decoded.get, ordered))
    if any(map(is_, records, repeat(None))):  # ``is``: records may compare slowly
        for position, body in enumerate(ordered):
            if records[position] is None:
                if len(decoded) >= DECODED_MAX:
                    decoded.clear()
                records[position] = decoded[body] = decode(body)
    return dict(zip(ids, cast(list[R], records), strict=True))


def get_payers(ctx: BatchContext, payer_ids: list[str]) -> dict[str, Payer] | None:
    """``get_payer`` of each distinct id, in order of first mention, or None if any is unknown."""
    return _read_all(ctx, PAYER, payer_ids, decode_payer, _decoded_payers)


def get_payer(ctx: BatchContext, payer_id: str) -> Payer:
    payer = _read_settled(ctx, PAYER, payer_id, decode_payer, _decoded_payers)
    if payer is None:
        raise NotFound("payer_not_found", f"no payer {payer_id}", "payer_id")
    return payer


def get_merchant(ctx: BatchContext, merchant_id: str) -> Merchant:
    merchant = _read_settled(ctx, MERCHANT, merchant_id, decode_merchant, _decoded_merchants)
    if merchant is None:
        raise NotFound("merchant_not_found", f"no merchant {merchant_id}", "merchant_id")
    return merchant


def get_charge(ctx: BatchContext, charge_id: str) -> Charge:
    charge = _read(ctx, CHARGE, charge_id, decode_charge)
    if charge is None:
        raise NotFound("charge_not_found", f"no charge {charge_id}", "charge_id")
    return charge


def payer_promo(ctx: BatchContext, payer_id: str, ledger: str) -> PayerPromo:
    found = _read(ctx, PAYER_PROMO, promo_key(payer_id, ledger), decode_payer_promo)
    return found if found is not None else PayerPromo(payer_id, ledger)


def scale_of(ctx: BatchContext, ledger: str) -> int:
    found = ctx.ledger(ledger)
    if found is None:
        raise NotFound("ledger_not_found", f"no ledger {ledger}", "ledger")
    return found.scale


# ----------------------------------------------------------------- set-up
def ensure_platform_accounts(ctx: BatchContext, ledger: str, rails: Rails) -> None:
    """Open the platform's accounts on ``ledger`` if they are not there yet."""
    if ctx.ledger(ledger) is None:
        raise NotFound("ledger_not_found", f"no ledger {ledger}", "ledger")
    if ctx.account(chart.fees_account(ledger)) is not None:
        return
    requests = [
        AccountRequest(account_id, ledger, flags) for account_id, flags in chart.system_accounts(ledger, rails.names)
    ]
    open_accounts(ctx, requests)


def open_accounts(ctx: BatchContext, requests: list[AccountRequest]) -> None:
    for code, _ in ctx.create_accounts(requests):
        if code not in (Result.OK, Result.EXISTS):
            raise InvariantViolation(f"opening model accounts failed: {code}")


def _check_caps(caps: tuple[SpendCap, ...]) -> None:
    if len(caps) > SPEND_CAPS_MAX or len({cap.period for cap in caps}) != len(caps):
        raise Refused("invalid_spend_caps", f"at most one cap per period, {SPEND_CAPS_MAX} at most", "spend_caps")
    for cap in caps:
        if cap.period not in CAP_PERIODS or cap.amount < 0:
            raise Refused(
                "invalid_spend_caps",
                f"a cap's period is one of {', '.join(CAP_PERIODS)}, its amount >= 0",
                "spend_caps",
            )


@dataclass(frozen=True, slots=True)
class PayerRequest:
    id: str
    ledger: str
    mode: str
    credit_limit: int = 0
    spend_caps: tuple[SpendCap, ...] = ()


def create_payer(request: PayerRequest, rails: Rails) -> Callable[[BatchContext], Outcome[Payer]]:
    def run(ctx: BatchContext) -> Outcome[Payer]:
        existing = _read(ctx, PAYER, request.id, decode_payer)
        fingerprint = _payer_fingerprint(request.ledger, request.mode, request.credit_limit, request.spend_caps)
        if existing is not None:
            asked = ctx.get_document(PAYER_REQUEST, request.id)
            if asked is None:  # created before create requests were remembered
                asked = _payer_fingerprint(existing.ledger, existing.mode, existing.credit_limit, existing.spend_caps)
            if asked != fingerprint:
                raise Conflict("exists_with_different_fields", f"payer {request.id} exists with other fields", "id")
            return existing, True
        if request.mode not in MODES:
            raise Refused("invalid_mode", f"mode is one of {', '.join(MODES)}", "mode")
        _check_caps(request.spend_caps)
        if request.mode == "prepay" and request.credit_limit:
            raise Refused(
                "credit_limit_not_allowed", "a prepay payer has no tab to give a credit limit", "credit_limit"
            )
        ensure_platform_accounts(ctx, request.ledger, rails)
        ledger = request.ledger
        open_accounts(
            ctx,
            [
                AccountRequest(chart.wallet_account(request.id, ledger), ledger, chart.WALLET_FLAGS),
                AccountRequest(chart.promo_account(request.id, ledger), ledger, chart.WALLET_FLAGS),
                AccountRequest(chart.tab_account(request.id, ledger), ledger, chart.WALLET_FLAGS, request.credit_limit),
            ],
        )
        payer = Payer(
            id=request.id,
            ledger=ledger,
            mode=request.mode,
            status="active",
            credit_limit=request.credit_limit,
            spend_caps=request.spend_caps,
            created_at_ns=ctx.now_ns,
        )
        ctx.put_document(PAYER, payer.id, encode(payer))
        ctx.put_document(PAYER_REQUEST, payer.id, fingerprint)
        if payer.mode != "prepay":
            ctx.put_document(index.POSTPAY_PAYER, payer.id, b"{}")
        return payer, False

    return run


def _payer_fingerprint(ledger: str, mode: str, credit_limit: int, caps: tuple[SpendCap, ...]) -> bytes:
    return dumps([ledger, mode, credit_limit, [[cap.period, cap.amount] for cap in caps]])


def update_payer(
    payer_id: str,
    *,
    credit_limit: int | None = None,
    spend_caps: tuple[SpendCap, ...] | None = None,
    status: str | None = None,
) -> Callable[[BatchContext], Payer]:
    def run(ctx: BatchContext) -> Payer:
        payer = get_payer(ctx, payer_id)
        if credit_limit is not None and credit_limit != payer.credit_limit:
            if payer.mode == "prepay" and credit_limit:
                raise Refused("credit_limit_not_allowed", "a prepay payer has no tab", "credit_limit")
            code, _ = ctx.set_credit_limit(chart.tab_account(payer.id, payer.ledger), credit_limit)
            if code is Result.CREDIT_LIMIT_BELOW_USAGE:
                raise Refused("credit_limit_below_usage", "the tab already owes more than that limit", "credit_limit")
            require(code is Result.OK, f"set_credit_limit answered {code}")
            payer = replace(payer, credit_limit=credit_limit)
        if spend_caps is not None:
            _check_caps(spend_caps)
            payer = replace(payer, spend_caps=spend_caps)
        if status is not None and status not in PAYER_STATUSES:
            raise Refused("invalid_status", f"status is one of {', '.join(PAYER_STATUSES)}", "status")
        if status is not None and (status != payer.status or status == "suspended"):
            # An admin's suspension replaces one for non-payment: paying will not lift it.
            payer = replace(payer, status=status, suspended_reason="admin" if status == "suspended" else "")
        ctx.put_document(PAYER, payer.id, encode(payer))
        return payer

    return run


@dataclass(frozen=True, slots=True)
class MerchantRequest:
    id: str
    ledger: str
    fee_percent_bps: int = 0
    fee_fixed: int = 0
    payout_threshold: int = 0
    payout_hold_days: int = 0


def create_merchant(request: MerchantRequest, rails: Rails) -> Callable[[BatchContext], Outcome[Merchant]]:
    def run(ctx: BatchContext) -> Outcome[Merchant]:
        existing = _read(ctx, MERCHANT, request.id, decode_merchant)
        asked = (
            request.ledger,
            request.fee_percent_bps,
            request.fee_fixed,
            request.payout_threshold,
            request.payout_hold_days,
        )
        if existing is not None:
            had = (
                existing.ledger,
                existing.fee_percent_bps,
                existing.fee_fixed,
                existing.payout_threshold,
                existing.payout_hold_days,
            )
            if had != asked:
                raise Conflict("exists_with_different_fields", f"merchant {request.id} exists with other fields", "id")
            return existing, True
        if not 0 <= request.fee_percent_bps <= 10_000:
            raise Refused("invalid_fee", "fee.percent_bps is 0 to 10000", "fee.percent_bps")
        if request.fee_fixed < 0:
            raise Refused("invalid_fee", "fee.fixed may not be negative", "fee.fixed")
        if not 0 <= request.payout_hold_days <= HOLD_DAYS_MAX:
            raise Refused("invalid_hold_days", f"payout.hold_days is 0 to {HOLD_DAYS_MAX}", "payout.hold_days")
        ensure_platform_accounts(ctx, request.ledger, rails)
        open_accounts(ctx, [AccountRequest(chart.merchant_account(request.id), request.ledger)])
        merchant = Merchant(request.id, *asked, created_at_ns=ctx.now_ns)
        ctx.put_document(MERCHANT, merchant.id, encode(merchant))
        return merchant, False

    return run


# ----------------------------------------------------------------- top-ups (cash-in)
@dataclass(frozen=True, slots=True)
class TopupRequest:
    id: str
    payer_id: str
    amount: int
    rail: str
    simulate_failure: bool = False


def topup(request: TopupRequest, rails: Rails) -> Callable[[BatchContext], Outcome[Topup]]:
    """Cash-in: the wallet receives ``amount`` in full once the rail succeeds; the rail's fee is
    the platform's expense. A rail that answers ``pending`` settles later (``settle_topups``)."""

    def run(ctx: BatchContext) -> Outcome[Topup]:
        existing = _read(ctx, TOPUP, request.id, decode_topup)
        if existing is not None:
            if (existing.payer_id, existing.amount, existing.rail) != (request.payer_id, request.amount, request.rail):
                raise Conflict("exists_with_different_fields", f"top-up {request.id} exists with other fields", "id")
            return existing, True
        check_amount(request.amount)
        payer = get_payer(ctx, request.payer_id)
        if payer.status != "active":
            raise PaymentDeclined("payer_suspended", "the payer is suspended", "payer_id")
        rail = rails.get(request.rail)
        outcome: RailOutcome = rail.collect(
            request.amount, scale_of(ctx, payer.ledger), ctx.now_ns, request.simulate_failure
        )
        record = Topup(
            id=request.id,
            payer_id=payer.id,
            ledger=payer.ledger,
            amount=request.amount,
            rail=rail.name,
            fee=outcome.fee,
            status=outcome.status,
            failure_code=outcome.failure_code,
            created_at_ns=ctx.now_ns,
            settles_at_ns=outcome.settles_at_ns,
            simulate_failure=request.simulate_failure,
        )
        if outcome.status == "succeeded":
            book_cash_in(ctx, record, chart.wallet_account(payer.id, payer.ledger), f"topup:{record.id}")
        elif outcome.status == "pending":
            index.put_due(ctx, index.TOPUP_DUE, record.settles_at_ns, record.id, {"topup_id": record.id})
        ctx.put_document(TOPUP, record.id, encode(record))
        index.put_owner_index(ctx, index.TOPUP_BY_PAYER, payer.id, record.id)
        return record, False

    return run


def book_cash_in(ctx: BatchContext, record: Topup, target_account: str, transfer_prefix: str) -> None:
    """Money collected through a rail: clearing -> target (in full), the fee as an expense, and the
    net settled from clearing to the platform's bank. One linked chain."""
    ledger = record.ledger
    clearing = chart.rail_clearing_account(record.rail, ledger)
    legs = [TransferRequest(f"{transfer_prefix}:in", clearing, target_account, record.amount, ledger)]
    if record.fee:
        legs.append(
            TransferRequest(f"{transfer_prefix}:fee", chart.rail_fees_account(ledger), clearing, record.fee, ledger)
        )
    if record.amount > record.fee:
        legs.append(
            TransferRequest(
                f"{transfer_prefix}:settle", chart.bank_account(ledger), clearing, record.amount - record.fee, ledger
            )
        )
    elif record.fee > record.amount:
        # The fee is more than was collected: the bank pays the difference, so the clearing
        # account still returns to zero.
        legs.append(
            TransferRequest(
                f"{transfer_prefix}:settle", clearing, chart.bank_account(ledger), record.fee - record.amount, ledger
            )
        )
    move(ctx, legs, "insufficient_funds")


def move(ctx: BatchContext, legs: list[TransferRequest], decline_code: str) -> None:
    """Apply ``legs`` as one linked chain; any failure undoes the whole operation."""
    chain = [leg._replace(flags=leg.flags | _LINKED) for leg in legs[:-1]]
    chain.append(legs[-1])
    outcomes = ctx.create_transfers(chain)
    codes = [code for code, _ in outcomes if code is not Result.OK]
    # When one leg fails, the others of the chain answer ``linked_event_failed``: name the leg's own code.
    failed = [code for code in codes if code is not Result.LINKED_EVENT_FAILED] or codes
    if not failed:
        return
    code = failed[0]
    if code is Result.EXCEEDS_CREDITS:
        raise PaymentDeclined(decline_code, "not enough funds for this payment")
    if code in (Result.OVERFLOWS_DEBITS, Result.OVERFLOWS_CREDITS):
        raise Refused(code.value, "an account's totals would overflow", "amount")
    raise InvariantViolation(f"a model transfer failed with {code}")


def settle_topups(topup_ids: list[str], rails: Rails) -> Callable[[BatchContext], list[Topup]]:
    """Settle pending top-ups whose rail has answered by now (``settles_at_ns`` passed)."""

    def run(ctx: BatchContext) -> list[Topup]:
        settled = []
        for topup_id in topup_ids:
            record = _read(ctx, TOPUP, topup_id, decode_topup)
            if record is None or record.status != "pending" or record.settles_at_ns > ctx.now_ns:
                continue
            outcome = rails.get(record.rail).settle(
                record.amount, scale_of(ctx, record.ledger), record.simulate_failure
            )
            record = replace(record, status=outcome.status, failure_code=outcome.failure_code, fee=outcome.fee)
            if outcome.status == "succeeded":
                book_cash_in(ctx, record, chart.wallet_account(record.payer_id, record.ledger), f"topup:{record.id}")
            ctx.put_document(TOPUP, record.id, encode(record))
            settled.append(record)
        return settled

    return run


# ----------------------------------------------------------------- charges
@dataclass(frozen=True, slots=True)
class ChargeRequest:
    id: str
    payer_id: str
    merchant_id: str
    amount: int
    description: str = ""
    kind: str = "charge"


CHARGE_LEGS = ("promo", "wallet", "tab")
"""The legs a charge ``X`` may take money by: transfers ``charge:X:<leg>``; every charge moves at
least one of them, in the operation that writes its record."""

CHARGES_PER_OPERATION_MAX = BATCH_SIZE_MAX
"""Most charges one ``charge_many`` operation takes: as many as a batch of transfers or usage
events. Larger operations read each payer once for more of its charges (operations of 8,190
made the in-process benchmark's charges about a fifth cheaper than operations of 2,000)."""

ChargeResult = tuple[Charge, bool] | Exception
"""What ``charge_many`` answers per request: ``(record, replayed)``, or the refusal."""


class ChargeBatchFailed(MicropayError):
    """The transfers of a charge batch did not all apply (they were checked first, so this
    means an overflow or a bug); the operation is undone and its charges can be retried alone."""


def charge(request: ChargeRequest) -> Callable[[BatchContext], Outcome[Charge]]:
    """One charge: ``(record, replayed)``, or raises the refusal (a decline moves nothing)."""
    many = charge_many([request])

    def run(ctx: BatchContext) -> Outcome[Charge]:
        [result] = many(ctx)
        if isinstance(result, Exception):
            raise result
        return result

    return run


def charge_many(
    requests: list[ChargeRequest], *, by_columns: bool = True
) -> Callable[[BatchContext], list[ChargeResult]]:
    """Many charges in one operation, each answered as ``charge`` would answer it alone, in order.

    When every charge is certain to succeed from one source per payer, they are made column by
    column (``charge_columns``; ``by_columns=False`` turns that off, for the tests comparing
    the two). Otherwise each charge is decided as it comes, against what the earlier ones of the operation took
    (each payer's ``PayerRoom``, read once), and its record written; its transfers are held
    back and applied together at the end, as independent transfers (the ledger's column-wise
    fast path), and the payers' and merchants' running records are written once. The
    transfers cannot fail: each charge was checked against the room the earlier ones left. If
    they fail all the same, the whole operation is undone (``ChargeBatchFailed``).
    """
    require(len(requests) <= CHARGES_PER_OPERATION_MAX, "charge_many: too many charges for one operation")

    def run(ctx: BatchContext) -> list[ChargeResult]:
        if by_columns:
            together = _charge_by_columns(ctx, requests)
            if together is not None:
                return together
        desk = ChargeDesk(ctx)
        made: set[str] = set()
        legs: list[TransferRequest] = []
        results: list[ChargeResult] = []
        for request in requests:
            try:
                existing = _existing_charge(ctx, request, made)
                if existing is not None:
                    results.append((existing, True))
                    continue
                record, charge_legs = desk.plan(request)
            except (ApiError, MalformedRequest) as error:  # this charge only; nothing of it was taken
                results.append(error)
                continue
            desk.write(record)
            legs += charge_legs
            made.add(request.id)
            results.append((record, False))
        legs += desk.fee_legs()
        # Up to three payment legs a charge and a fee leg a merchant: applied a ledger batch's
        # worth at a time, all in this operation (a failure undoes every part).
        for start in range(0, len(legs), BATCH_SIZE_MAX):
            part = legs[start : start + BATCH_SIZE_MAX]
            failed = [code for code in outcome_codes(ctx.create_transfers(part)) if code is not Result.OK]
            if failed:
                raise ChargeBatchFailed(f"{len(failed)} checked charge transfers failed, first {failed[0].value}")
        desk.book()
        return results

    return run


def _charge_by_columns(ctx: BatchContext, requests: list[ChargeRequest]) -> list[ChargeResult] | None:
    """``charge_columns`` with the requests' payers and merchants read (None if any is
    unknown, or the column path does not apply), then the rooms and earnings booked."""
    if len(requests) < COLUMN_CHARGES_MIN:
        return None
    payers = _read_all(ctx, PAYER, [request.payer_id for request in requests], decode_payer, _decoded_payers)
    if payers is None:
        return None
    merchant_ids = [request.merchant_id for request in requests]
    merchants = _read_all(ctx, MERCHANT, merchant_ids, decode_merchant, _decoded_merchants)
    if merchants is None:
        return None
    made = charge_columns(ctx, requests, payers, merchants, CHARGE)
    if made is None:
        return None
    _book_charges(ctx, made.rooms, made.earnings, merchants)
    return list(zip(made.records, repeat(False)))


def _book_charges(
    ctx: BatchContext, rooms: Iterable[PayerRoom], earnings: dict[str, int], merchants: Mapping[str, Merchant]
) -> None:
    """Once an operation's charges have moved their money: each payer's tab accrual, promo
    grants and cap usage (its room), each merchant's earnings on hold."""
    for room in rooms:
        room.book(ctx)
    for merchant_id, net in earnings.items():
        _add_earnings(ctx, merchants[merchant_id], net, ctx.now_ns)


def _existing_charge(ctx: BatchContext, request: ChargeRequest, made: set[str]) -> Charge | None:
    """The stored charge with this id if there is one (a replay, or 409 if it differs).

    A charge that exists moved money by one of its legs, so when the ledger knows none of them
    (an in-memory lookup) there is nothing to read; only a possible replay reads the record."""
    charge_id = request.id
    if charge_id not in made:
        prefix = "charge:" + charge_id
        exists = ctx.transfer_exists
        if not (exists(prefix + ":wallet") or exists(prefix + ":promo") or exists(prefix + ":tab")):
            return None
    existing = _read(ctx, CHARGE, charge_id, decode_charge)
    if existing is None:
        return None
    asked = (request.payer_id, request.merchant_id, request.amount, request.description, request.kind)
    had = (existing.payer_id, existing.merchant_id, existing.amount, existing.description, existing.kind)
    if asked != had:
        raise Conflict("exists_with_different_fields", f"charge {charge_id} exists with other fields", "id")
    return existing


# ----------------------------------------------------------------- listing one owner's charges
HISTORY_PAGE_MAX = 1000
"""Most transfers one account-history read asks for (the engine's limit)."""


def charge_of_transfer(transfer_id: str) -> str | None:
    """The charge a transfer is a leg of (``charge:{id}:promo|wallet|tab``), else None."""
    if not transfer_id.startswith("charge:"):
        return None
    head, _, leg = transfer_id.rpartition(":")
    return head[7:] if leg in CHARGE_LEGS else None


def owner_charge_ids(
    engine: Engine, accounts: Sequence[str], *, paid_from: bool, starting_after: str | None, limit: int
) -> tuple[list[str], bool]:
    """The charges that took money from ``accounts`` (``paid_from``: a payer's promo, wallet and
    tab) or paid into them (a merchant's account), newest first: ``limit`` of them after the
    charge ``starting_after`` (one of these; else the page is empty), and whether more follow.

    Read from the ledger's account history, not from index documents: every charge moved money
    by at least one leg ``charge:{id}:promo|wallet|tab``, and the legs of one charge are applied
    together, so no other charge's leg falls between them."""
    wanted = frozenset(accounts)

    def side(transfer: Transfer) -> str:
        return transfer.debit_account_id if paid_from else transfer.credit_account_id

    before: int | None = None
    if starting_after is not None:
        legs = (engine.transfer(f"charge:{starting_after}:{leg}") for leg in CHARGE_LEGS)
        stamps = [leg.timestamp for leg in legs if leg is not None and side(leg) in wanted]
        if not stamps:
            return [], False
        before = min(stamps)
    page = min(HISTORY_PAGE_MAX, 2 * limit + 8)  # a merchant's history also holds the fee legs

    def history(account_id: str) -> Iterator[Transfer]:
        below = before
        while True:
            transfers = engine.account_transfers(account_id, limit=page, before_timestamp=below)
            yield from transfers
            if len(transfers) < page:
                return
            below = transfers[-1].timestamp

    ids: list[str] = []
    seen: set[str] = set()
    newest_first = heapq.merge(*(history(account) for account in wanted), key=_timestamp, reverse=True)
    for transfer in newest_first:
        charge_id = charge_of_transfer(transfer.id)
        if charge_id is None or charge_id in seen or side(transfer) not in wanted:
            continue
        seen.add(charge_id)
        ids.append(charge_id)
        if len(ids) > limit:
            break
    return ids[:limit], len(ids) > limit


def _timestamp(transfer: Transfer) -> int:
    return transfer.timestamp


@dataclass(frozen=True, slots=True)
class Collected:
    """What ``collect`` took from a payer: the parts by source and the promo grants spent."""

    sources: Sources
    promo_taken: tuple[tuple[str, int], ...]


def collect(
    ctx: BatchContext,
    payer: Payer,
    amount: int,
    destination: str,
    transfer_prefix: str,
    extra_legs: tuple[TransferRequest, ...] = (),
) -> Collected:
    """Take ``amount`` from a payer into ``destination`` by the payer's mode (promo, wallet, tab),
    enforcing status and spending caps, as one linked chain with ``extra_legs`` appended.

    Declines (``PaymentDeclined``) are raised before anything moves or is written.
    """
    room = open_room(ctx, payer)
    taken = room.take_or_decline(ctx, amount)
    move(ctx, [*collection_legs(room, taken, destination, transfer_prefix), *extra_legs], "insufficient_funds")
    promo_taken = room.spend_promo(taken[0])
    room.book(ctx)
    return Collected(sources_of(*taken), promo_taken)


class ChargeDesk:
    """The charges of one operation: each payer and merchant read once, each payer's room
    (``collection.PayerRoom``) carried from charge to charge, the merchants' net earnings and
    platform fees summed. ``plan`` decides a charge, ``write`` stores its record,
    ``fee_legs`` moves the operation's fees, ``book`` writes what the operation's charges
    changed in the payers' and merchants' records once."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self.now_ns = ctx.now_ns
        self.payers: dict[str, Payer] = {}
        self.merchants: dict[str, tuple[Merchant, str, str]] = {}  # merchant, its account, fees account
        self.rooms: dict[str, PayerRoom] = {}
        self.earnings: dict[str, int] = {}  # merchant id -> net earnings of this operation
        self.fees: dict[str, tuple[str, int]] = {}  # merchant id -> (its first charge's legs' prefix, fees)

    def plan(self, request: ChargeRequest) -> tuple[Charge, list[TransferRequest]]:
        """Decide one charge (raising its refusal or decline, having taken nothing): its record
        and its payment transfers, the money taken from the payer's room (its platform fee
        moves with the operation's others to that merchant: ``fee_legs``)."""
        amount = request.amount
        if amount <= 0 or amount > AMOUNT_MAX:
            check_amount(amount)
        payer = self.payers.get(request.payer_id) or self._payer(request.payer_id)
        merchant, merchant_account, _ = self.merchants.get(request.merchant_id) or self._merchant(request.merchant_id)
        if merchant.ledger != payer.ledger:
            raise Refused("ledger_mismatch", "payer and merchant are on different ledgers", "merchant_id")
        fee = platform_fee(amount, merchant.fee_percent_bps, merchant.fee_fixed)
        room = self.rooms.get(payer.id) or self._room(payer)
        taken = room.take(self.ctx, amount)
        if isinstance(taken, str):
            raise room.declined(taken, amount)
        # Nothing below refuses: the charge is made.
        prefix = "charge:" + request.id
        legs = collection_legs(room, taken, merchant_account, prefix)
        if fee:
            first, fees = self.fees.get(merchant.id, (prefix, 0))
            self.fees[merchant.id] = (first, fees + fee)
        earnings = self.earnings
        earnings[merchant.id] = earnings.get(merchant.id, 0) + amount - fee
        record = Charge(
            request.id,
            payer.id,
            merchant.id,
            payer.ledger,
            amount,
            fee,
            amount - fee,
            sources_of(*taken),
            room.spend_promo(taken[0]),
            NO_SOURCES,
            request.description,
            "succeeded",
            self.now_ns,
            request.kind,
        )
        return record, legs

    def fee_legs(self) -> list[TransferRequest]:
        """The platform fees of the operation's charges: one transfer per merchant, from its
        account to the platform's fees, named after its first charge with a fee
        (``charge:{id}:fee``); each charge's record holds its own part."""
        legs = []
        for merchant_id, (prefix, fees) in self.fees.items():
            merchant, merchant_account, fees_account = self.merchants[merchant_id]
            legs.append(TransferRequest(prefix + ":fee", merchant_account, fees_account, fees, merchant.ledger))
        return legs

    def write(self, record: Charge) -> None:
        self.ctx.create_document(CHARGE, record.id, encode_charge(record))

    def book(self) -> None:
        """Once the charges' money has moved: each payer's tab accrual, promo grants and cap
        usage, each merchant's earnings on hold."""
        merchants = {merchant_id: found[0] for merchant_id, found in self.merchants.items()}
        _book_charges(self.ctx, self.rooms.values(), self.earnings, merchants)

    def _payer(self, payer_id: str) -> Payer:
        payer = self.payers[payer_id] = get_payer(self.ctx, payer_id)
        return payer

    def _merchant(self, merchant_id: str) -> tuple[Merchant, str, str]:
        merchant = get_merchant(self.ctx, merchant_id)
        found = self.merchants[merchant_id] = (
            merchant,
            chart.merchant_account(merchant.id),
            chart.fees_account(merchant.ledger),
        )
        return found

    def _room(self, payer: Payer) -> PayerRoom:
        room = self.rooms[payer.id] = open_room(self.ctx, payer)
        return room


def charge_now(ctx: BatchContext, request: ChargeRequest) -> Charge:
    """Charge a payer for a merchant inside the caller's operation (used by passes and metering).

    Refuses (declines included) before it moves or writes anything."""
    desk = ChargeDesk(ctx)
    record, legs = desk.plan(request)
    move(ctx, legs + desk.fee_legs(), "insufficient_funds")
    desk.write(record)
    desk.book()
    return record


def _add_earnings(ctx: BatchContext, merchant: Merchant, amount: int, now_ns: int) -> None:
    """Remember today's net earnings while they are on hold (``hold_days`` > 0)."""
    if not merchant.payout_hold_days or not amount:
        return
    holds = _read(ctx, MERCHANT_HOLDS, merchant.id, decode_merchant_holds) or MerchantHolds(merchant.id)
    today = now_ns // _NS_PER_DAY
    days = {int(day): value for day, value in holds.days if int(day) > today - merchant.payout_hold_days}
    days[today] = days.get(today, 0) + amount
    kept = tuple((str(day), value) for day, value in sorted(days.items()))
    ctx.put_document(MERCHANT_HOLDS, merchant.id, encode(MerchantHolds(merchant.id, kept)))


def merchant_on_hold(ctx: BatchContext, merchant: Merchant) -> int:
    """Net earnings of the last ``hold_days`` days, not yet available for payout."""
    if not merchant.payout_hold_days:
        return 0
    return on_hold(
        _read(ctx, MERCHANT_HOLDS, merchant.id, decode_merchant_holds), merchant.payout_hold_days, ctx.now_ns
    )


def on_hold(holds: MerchantHolds | None, hold_days: int, now_ns: int) -> int:
    """What of ``holds`` is still on hold at ``now_ns`` (the reading side of ``merchant_on_hold``)."""
    if holds is None or not hold_days:
        return 0
    today = now_ns // _NS_PER_DAY
    return max(0, sum(value for day, value in holds.days if int(day) > today - hold_days))


# ----------------------------------------------------------------- refunds
@dataclass(frozen=True, slots=True)
class RefundRequest:
    id: str
    charge_id: str
    amount: int | None = None


def refund(request: RefundRequest) -> Callable[[BatchContext], Outcome[Refund]]:
    """Return all or part of a charge to where it came from: paid part first (wallet, then tab),
    promo last (to the grants it was taken from). Never more than charged in total."""

    def run(ctx: BatchContext) -> Outcome[Refund]:
        existing = _read(ctx, REFUND, request.id, decode_refund)
        if existing is not None:
            same = existing.charge_id == request.charge_id and request.amount in (None, existing.amount)
            if not same:
                raise Conflict("exists_with_different_fields", f"refund {request.id} exists with other fields", "id")
            return existing, True
        if request.amount is not None:
            check_amount(request.amount)
        charge_record = get_charge(ctx, request.charge_id)
        left = charge_record.amount - charge_record.amount_refunded
        amount = left if request.amount is None else request.amount
        if amount <= 0 or amount > left:
            raise Refused("refund_exceeds_charge", f"at most {left} of this charge is left to refund", "amount")
        returned = refund_split(charge_record.sources, charge_record.refunded, amount)
        ledger = charge_record.ledger
        payer_id = charge_record.payer_id
        merchant_account = chart.merchant_account(charge_record.merchant_id)
        legs = []
        for leg, part, account_id in (
            ("wallet", returned.wallet, chart.wallet_account(payer_id, ledger)),
            ("tab", returned.tab, chart.tab_account(payer_id, ledger)),
            ("promo", returned.promo, chart.promo_account(payer_id, ledger)),
        ):
            if part:
                legs.append(TransferRequest(f"refund:{request.id}:{leg}", merchant_account, account_id, part, ledger))
        move(ctx, legs, "insufficient_funds")
        accrue(ctx, payer_id, -returned.tab)
        if returned.promo:
            promo = payer_promo(ctx, payer_id, ledger)
            back = _promo_back(charge_record, returned.promo)
            grants = restore_grants(promo.grants, back, ctx.now_ns)
            ctx.put_document(PAYER_PROMO, promo_key(payer_id, ledger), encode(replace(promo, grants=grants)))
            if any(grant.remaining and grant.expires_at_ns <= ctx.now_ns for grant in grants):
                # Credit returned to a grant that has already expired: the next sweep moves it.
                body = {"payer_id": payer_id, "ledger": ledger}
                index.put_due(ctx, index.PROMO_DUE, ctx.now_ns, f"{payer_id}:{ledger}:refund:{request.id}", body)
        record = Refund(request.id, charge_record.id, amount, returned, "succeeded", ctx.now_ns)
        refunded = Sources(
            charge_record.refunded.promo + returned.promo,
            charge_record.refunded.wallet + returned.wallet,
            charge_record.refunded.tab + returned.tab,
        )
        updated = charge_record._replace(refunded=refunded, refund_ids=(*charge_record.refund_ids, record.id))
        require(updated.amount_refunded <= updated.amount, "a charge refunded past what it charged")
        ctx.put_document(CHARGE, updated.id, encode_charge(updated))
        ctx.put_document(REFUND, record.id, encode(record))
        return record, False

    return run


def _promo_back(charge_record: Charge, amount: int) -> tuple[tuple[str, int], ...]:
    """Which grants get ``amount`` of promo back: those the charge took from, last taken first,
    less what earlier refunds already returned to them."""
    already = charge_record.refunded.promo
    back: list[tuple[str, int]] = []
    left = amount
    for grant_id, taken in reversed(charge_record.promo_taken):
        returned_here = min(already, taken)
        already -= returned_here
        room = taken - returned_here
        give = min(room, left)
        if give:
            back.append((grant_id, give))
            left -= give
    require(left == 0, "promo refund exceeds what the charge took from grants")
    return tuple(back)
