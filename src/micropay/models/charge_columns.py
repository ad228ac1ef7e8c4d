"""The column-wise path of ``charge_many``: an operation's charges decided together, when that
is certain to answer exactly what deciding them one by one answers.

Deciding charge by charge (``payments.ChargeDesk``) costs tens of µs a charge in objects and
calls. Most operations are plain: new ids, known payers and merchants on one ledger, and every
payer able to pay the sum of its charges in the operation from one source (its wallet, or its
tab) under its caps, with no promo credit to spend first. Then each charge would succeed in
turn too, whole from that source, and the operation's decisions, transfers and records are
made in passes over columns. Anything else (a replay, a repeated id, an unknown party, a bad
amount, a payer short of its sum, promo credit, a blocked tab, an id the ledger would refuse)
answers None before anything moves or is written, and the caller decides one by one. The
tests hold both paths to the same answers, records, documents and balances.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from micropay.engine import BatchContext
from micropay.ledger.limits import AMOUNT_MAX
from micropay.ledger.validate import plain_columns
from micropay.models import chart
from micropay.models.collection import PayerRoom, open_room, wallet_alone
from micropay.models.records import Charge, Merchant, Payer, new_charges
from micropay.models.rules import platform_fees

COLUMN_CHARGES_MIN = 8
"""Fewest charges worth the column passes (and the ledger's fast path wants 8 transfers)."""


class ChargeLike(Protocol):
    """The fields of a charge request this path reads (``payments.ChargeRequest``)."""

    @property
    def id(self) -> str: ...
    @property
    def payer_id(self) -> str: ...
    @property
    def merchant_id(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def description(self) -> str: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ColumnCharges:
    """What the column path made: each request's record, in order (all new), the payers'
    rooms to book, and each merchant's net earnings of the operation."""

    records: list[Charge]
    rooms: list[PayerRoom]
    earnings: dict[str, int]


def charge_columns(
    ctx: BatchContext,
    requests: Sequence[ChargeLike],
    payers: Mapping[str, Payer],
    merchants: Mapping[str, Merchant],
    record_kind: str,
) -> ColumnCharges | None:
    """Make every charge of ``requests`` (moving their money, writing their records of
    ``record_kind``) when each is certain to succeed as it would alone; else None, having
    moved and written nothing. ``payers`` and ``merchants`` hold those of the requests that
    exist. The caller books the rooms and earnings once the money has moved."""
    count = len(requests)
    if count < COLUMN_CHARGES_MIN:
        return None
    ids = [request.id for request in requests]
    payer_ids = [request.payer_id for request in requests]
    merchant_ids = [request.merchant_id for request in requests]
    amounts = [request.amount for request in requests]
    if len(set(ids)) != count or set(map(type, amounts)) != {int}:
        return None
    if min(amounts) <= 0 or max(amounts) > AMOUNT_MAX:
        return None
    if ctx.any_document_exists(record_kind, ids):
        return None  # a replay: only the request-by-request path answers those
    # A charge writes its record with its legs, so no record means no charge. (A transfer that
    # happens to bear a new charge's leg id is refused by the ledger's own check below.)
    prefixes = ["charge:" + charge_id for charge_id in ids]

    sources = _payer_sources(ctx, payer_ids, amounts, payers)
    if sources is None:
        return None
    rooms, payer_legs = sources
    parties = _merchant_parties(merchant_ids, merchants, {payers[payer_id].ledger for payer_id in payer_legs})
    if parties is None:
        return None
    ledger, fee_terms, merchant_accounts = parties
    fees = platform_fees(amounts, [fee_terms[merchant_id] for merchant_id in merchant_ids])
    legs = [payer_legs[payer_id] for payer_id in payer_ids]
    if not _move(ctx, ledger, prefixes, legs, merchant_ids, merchant_accounts, amounts, fees):
        return None

    # The money has moved: nothing below refuses.
    parts = [(0, 0, amount) if on_tab else (0, amount, 0) for (_, _, on_tab), amount in zip(legs, amounts, strict=True)]
    records, bodies = new_charges(
        ids,
        payer_ids,
        merchant_ids,
        ledger,
        amounts,
        fees,
        parts,
        [request.description for request in requests],
        ctx.now_ns,
        [request.kind for request in requests],
    )
    ctx.create_documents(record_kind, ids, bodies)
    earnings: dict[str, int] = {}
    for record in records:
        earnings[record.merchant_id] = earnings.get(record.merchant_id, 0) + record.merchant_amount
    return ColumnCharges(records, rooms, earnings)


PayerLeg = tuple[str, str, bool]
"""How a payer's charges of the operation pay: the leg's id suffix, the account it debits, and
whether that is the tab."""


def _payer_sources(
    ctx: BatchContext, payer_ids: list[str], amounts: list[int], payers: Mapping[str, Payer]
) -> tuple[list[PayerRoom], dict[str, PayerLeg]] | None:
    """Each payer's room with the operation's sum taken whole from one source, and that
    source's leg; None if any payer is unknown or cannot pay its sum that way."""
    totals: dict[str, int] = {}
    for payer_id, amount in zip(payer_ids, amounts, strict=True):
        totals[payer_id] = totals.get(payer_id, 0) + amount
    rooms: list[PayerRoom] = []
    legs: dict[str, PayerLeg] = {}
    available = ctx.available
    for payer_id, total in totals.items():
        payer = payers.get(payer_id)
        if payer is None:
            return None
        wallet = wallet_alone(ctx, payer)
        if wallet is not None:  # the common payer: no room to open, nothing to book
            if total > (available(wallet) or 0):
                return None
            legs[payer_id] = (":wallet", wallet, False)
            continue
        room = open_room(ctx, payer)
        source = room.take_whole(ctx, total)
        if source is None:
            return None
        rooms.append(room)
        on_tab = source == "tab"
        legs[payer_id] = (":tab", room.tab_account, True) if on_tab else (":wallet", room.wallet_account, False)
    return rooms, legs


def _merchant_parties(
    merchant_ids: list[str], merchants: Mapping[str, Merchant], payer_ledgers: set[str]
) -> tuple[str, dict[str, tuple[int, int]], dict[str, str]] | None:
    """The one ledger of the operation, each merchant's fee terms ``(percent_bps, fixed)`` and
    account; None if a merchant is unknown or the parties are not all on one ledger."""
    fee_terms: dict[str, tuple[int, int]] = {}
    accounts: dict[str, str] = {}
    ledgers = set(payer_ledgers)
    for merchant_id in dict.fromkeys(merchant_ids):
        merchant = merchants.get(merchant_id)
        if merchant is None:
            return None
        ledgers.add(merchant.ledger)
        fee_terms[merchant_id] = (merchant.fee_percent_bps, merchant.fee_fixed)
        accounts[merchant_id] = chart.merchant_account(merchant_id)
    if len(ledgers) != 1:
        return None
    return ledgers.pop(), fee_terms, accounts


def _move(
    ctx: BatchContext,
    ledger: str,
    prefixes: list[str],
    legs: list[PayerLeg],
    merchant_ids: list[str],
    merchant_accounts: dict[str, str],
    amounts: list[int],
    fees: list[int],
) -> bool:
    """Apply each charge's payment leg, then the platform fees, one transfer per merchant named
    after its first charge with a fee, as ``ChargeDesk`` orders them (all at once, by the
    ledger's fast path); False, having moved nothing, when the ledger cannot take them so."""
    credits = [merchant_accounts[merchant_id] for merchant_id in merchant_ids]
    ids = [prefix + suffix for prefix, (suffix, _, _) in zip(prefixes, legs, strict=True)]
    debits = [debit for _, debit, _ in legs]
    moved = list(amounts)
    by_merchant: dict[str, tuple[str, int]] = {}
    for prefix, merchant_id, fee in zip(prefixes, merchant_ids, fees, strict=True):
        if fee:
            first, total = by_merchant.get(merchant_id, (prefix, 0))
            by_merchant[merchant_id] = (first, total + fee)
    fees_account = chart.fees_account(ledger)
    for merchant_id, (prefix, total) in by_merchant.items():
        ids.append(prefix + ":fee")
        debits.append(merchant_accounts[merchant_id])
        credits.append(fees_account)
        moved.append(total)
    return ctx.create_plain_transfers(plain_columns(ids, debits, credits, moved, ledger))
