"""How the payment endpoints read, render, list and guard the models' records.

Reads see committed state only (``engine.document``, ``engine.account``); the routes that call
them are plain ``def`` routes, which FastAPI runs in its threadpool, so a read waiting for a batch
being written never blocks the event loop. Lists come from index documents
(``micropay.models.index``): one owner's objects are one range read, never a scan of all. One
payer's or merchant's charges come from the ledger's history of its accounts instead
(``payments.owner_charge_ids``): a charge writes no index documents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from micropay.api.auth import Principal
from micropay.api.pagination import PageParams, split_page
from micropay.api.serialise import page, rfc3339
from micropay.engine import BatchContext, Engine
from micropay.errors import NotFound
from micropay.models import chart, index
from micropay.models.metadata import METADATA, decode_metadata, keep_metadata, metadata_body, metadata_id
from micropay.models.passes import PASS, Pass, decode_pass
from micropay.models.payments import (
    CAP_USAGE,
    CHARGE,
    MERCHANT,
    MERCHANT_HOLDS,
    PAYER,
    PAYER_PROMO,
    REFUND,
    TOPUP,
    Outcome,
    on_hold,
)
from micropay.models.promo import Voucher
from micropay.models.records import (
    Charge,
    Merchant,
    Payer,
    Refund,
    Topup,
    decode_cap_usage,
    decode_charge,
    decode_merchant,
    decode_merchant_holds,
    decode_payer,
    decode_payer_promo,
    decode_refund,
    decode_topup,
)
from micropay.models.rules import Sources, period_key, spendable_grants
from micropay.models.statements import STATEMENT, Statement, decode_statement

R = TypeVar("R")


def with_metadata(
    operation: Callable[[BatchContext], Outcome[R]], kind: str, object_id: str, metadata: dict[str, str]
) -> Callable[[BatchContext], Outcome[R]]:
    """``operation`` (a create answering ``(record, replayed)``) that also stores the request's
    metadata; a replay must carry the same metadata as the original (else 409)."""
    body = metadata_body(metadata)

    def run(ctx: BatchContext) -> Outcome[R]:
        record, replayed = operation(ctx)
        keep_metadata(ctx, kind, object_id, body, replayed=replayed)
        return record, replayed

    return run


def read_metadata(engine: Engine, kind: str, object_id: str) -> dict[str, str]:
    return decode_metadata(engine.document(METADATA, metadata_id(kind, object_id)))


# ----------------------------------------------------------------- reading
def read(engine: Engine, kind: str, object_id: str, decode: Callable[[bytes], R]) -> R | None:
    body = engine.document(kind, object_id)
    return None if body is None else decode(body)


def read_payer(engine: Engine, payer_id: str) -> Payer:
    payer = read(engine, PAYER, payer_id, decode_payer)
    if payer is None:
        raise payer_not_found(payer_id)
    return payer


def read_merchant(engine: Engine, merchant_id: str) -> Merchant:
    merchant = read(engine, MERCHANT, merchant_id, decode_merchant)
    if merchant is None:
        raise merchant_not_found(merchant_id)
    return merchant


def payer_not_found(payer_id: str, param: str = "payer_id") -> NotFound:
    return NotFound("payer_not_found", f"No payer {payer_id}.", param)


def merchant_not_found(merchant_id: str, param: str = "merchant_id") -> NotFound:
    return NotFound("merchant_not_found", f"No merchant {merchant_id}.", param)


# ----------------------------------------------------------------- who may see what
def may_see(principal: Principal, *, payer_id: str | None = None, merchant_id: str | None = None) -> bool:
    """Admin sees everything; a payer key its own payer's objects; a merchant key its own merchant's."""
    if principal.is_admin:
        return True
    if principal.role == "payer":
        return payer_id is not None and principal.subject_id == payer_id
    if principal.role == "merchant":
        return merchant_id is not None and principal.subject_id == merchant_id
    return False


def guard(
    principal: Principal, not_found: NotFound, *, payer_id: str | None = None, merchant_id: str | None = None
) -> None:
    """Raise ``not_found`` unless the caller may see an object of this payer or merchant."""
    if not may_see(principal, payer_id=payer_id, merchant_id=merchant_id):
        raise not_found


# ----------------------------------------------------------------- listing
def list_owned(engine: Engine, kind: str, owner_id: str, page_params: PageParams) -> tuple[list[str], bool]:
    """Ids of one owner's objects from the owner index ``kind``, in id order, one page."""
    prefix = index.owner_prefix(owner_id)
    after = prefix + (page_params.starting_after or "")
    rows = engine.store.list_documents(kind, after, page_params.limit + 1)
    ids = [key[len(prefix) :] for key, _ in rows if key.startswith(prefix)]
    return split_page(ids, page_params.limit)


def list_all(engine: Engine, kind: str, page_params: PageParams) -> tuple[list[bytes], bool]:
    """Bodies of every object of ``kind`` in id order, one page (admin lists)."""
    rows = engine.store.list_documents(kind, page_params.starting_after, page_params.limit + 1)
    bodies, has_more = split_page(rows, page_params.limit)
    return [body for _, body in bodies], has_more


def render_page(
    engine: Engine, kind: str, ids: list[str], has_more: bool, render: Callable[[bytes], dict[str, Any]]
) -> dict[str, Any]:
    """A list answer from ids (objects gone missing are left out rather than failing the page)."""
    data = []
    for object_id in ids:
        body = engine.document(kind, object_id)
        if body is not None:
            data.append(render(body))
    return page(data, has_more)


# ----------------------------------------------------------------- rendering
def _time(ns: int) -> str:
    return rfc3339(ns)


def _sources(sources: Sources) -> dict[str, int]:
    return {"promo": sources.promo, "wallet": sources.wallet, "tab": sources.tab}


def _wallet(engine: Engine, payer_id: str, ledger: str, now_ns: int) -> dict[str, Any]:
    wallet = engine.account(chart.wallet_account(payer_id, ledger))
    balance = 0 if wallet is None else wallet.balance
    held = 0 if wallet is None else wallet.debits_pending
    promo_balance = 0
    promo_body = engine.document(PAYER_PROMO, f"{payer_id}:{ledger}")
    if promo_body is not None:
        grants = decode_payer_promo(promo_body).grants
        promo_balance = sum(grant.remaining for grant in spendable_grants(grants, now_ns))
        promo_account = engine.account(chart.promo_account(payer_id, ledger))
        promo_balance = min(promo_balance, max(0, 0 if promo_account is None else promo_account.available))
    return {
        "ledger": ledger,
        "balance": balance,
        "promo_balance": promo_balance,
        "available": balance + promo_balance - held,
    }


def render_payer(engine: Engine, payer: Payer, now_ns: int, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """A payer with its balances; ``metadata`` is read unless given."""
    wallets = [_wallet(engine, payer.id, ledger, now_ns) for ledger in (payer.ledger, *payer.ledgers)]
    own = wallets[0]
    tab = engine.account(chart.tab_account(payer.id, payer.ledger))
    usage_body = engine.document(CAP_USAGE, payer.id) if payer.spend_caps else None
    usage = None if usage_body is None else decode_cap_usage(usage_body)
    caps = [
        {
            "period": cap.period,
            "amount": cap.amount,
            "used": 0 if usage is None else usage.amount(period_key(cap.period, now_ns)),
        }
        for cap in payer.spend_caps
    ]
    return {
        "id": payer.id,
        "ledger": payer.ledger,
        "mode": payer.mode,
        "status": payer.status,
        "wallet": {"balance": own["balance"], "promo_balance": own["promo_balance"], "available": own["available"]},
        "wallets": wallets,
        "tab": {
            "owed": 0 if tab is None else max(0, -tab.balance),
            "credit_limit": payer.credit_limit if tab is None else tab.credit_limit,
        },
        "caps": caps,
        "metadata": read_metadata(engine, PAYER, payer.id) if metadata is None else metadata,
        "created_at": _time(payer.created_at_ns),
    }


def render_topup(topup: Topup, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": topup.id,
        "payer_id": topup.payer_id,
        "ledger": topup.ledger,
        "amount": topup.amount,
        "rail": topup.rail,
        "fee": topup.fee,
        "status": topup.status,
        "failure_code": topup.failure_code or None,
        "settles_at": _time(topup.settles_at_ns) if topup.status == "pending" else None,
        "metadata": metadata,
        "created_at": _time(topup.created_at_ns),
    }


def render_merchant(
    engine: Engine, merchant: Merchant, now_ns: int, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    """A merchant with its balance; ``metadata`` is read unless given."""
    account = engine.account(chart.merchant_account(merchant.id))
    balance = 0 if account is None else account.balance
    held = 0
    if merchant.payout_hold_days:
        holds = read(engine, MERCHANT_HOLDS, merchant.id, decode_merchant_holds)
        held = on_hold(holds, merchant.payout_hold_days, now_ns)
    return {
        "id": merchant.id,
        "ledger": merchant.ledger,
        "fee": {"percent_bps": merchant.fee_percent_bps, "fixed": merchant.fee_fixed},
        "payout": {"threshold": merchant.payout_threshold, "hold_days": merchant.payout_hold_days},
        "balance": balance,
        "available": balance - held,
        "metadata": read_metadata(engine, MERCHANT, merchant.id) if metadata is None else metadata,
        "created_at": _time(merchant.created_at_ns),
    }


def render_charge(charge: Charge, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": charge.id,
        "payer_id": charge.payer_id,
        "merchant_id": charge.merchant_id,
        "ledger": charge.ledger,
        "amount": charge.amount,
        "platform_fee": charge.platform_fee,
        "merchant_amount": charge.merchant_amount,
        "status": charge.status,
        "description": charge.description,
        "kind": charge.kind,
        "sources": _sources(charge.sources),
        "amount_refunded": charge.amount_refunded,
        "refunds": list(charge.refund_ids),
        "metadata": metadata,
        "created_at": _time(charge.created_at_ns),
    }


def render_stored_topup(engine: Engine, body: bytes) -> dict[str, Any]:
    topup = decode_topup(body)
    return render_topup(topup, read_metadata(engine, TOPUP, topup.id))


def render_stored_charge(engine: Engine, body: bytes) -> dict[str, Any]:
    charge = decode_charge(body)
    return render_charge(charge, read_metadata(engine, CHARGE, charge.id))


def render_refund(refund: Refund, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": refund.id,
        "charge_id": refund.charge_id,
        "amount": refund.amount,
        "status": refund.status,
        "sources": _sources(refund.returned),
        "metadata": metadata,
        "created_at": _time(refund.created_at_ns),
    }


def render_stored_refund(engine: Engine, body: bytes) -> dict[str, Any]:
    refund = decode_refund(body)
    return render_refund(refund, read_metadata(engine, REFUND, refund.id))


def render_voucher(voucher: Voucher) -> dict[str, Any]:
    return {
        "id": voucher.id,
        "ledger": voucher.ledger,
        "amount": voucher.amount,
        "expires_at": _time(voucher.expires_at_ns),
        "redeemed": bool(voucher.redeemed_by),
        "redeemed_by": voucher.redeemed_by or None,
        "redeemed_at": _time(voucher.redeemed_at_ns) if voucher.redeemed_by else None,
        "created_at": _time(voucher.created_at_ns),
    }


def render_pass(record: Pass, now_ns: int, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": record.id,
        "payer_id": record.payer_id,
        "merchant_id": record.merchant_id,
        "price": record.price,
        "duration_s": record.duration_s,
        "charge_id": record.charge_id,
        "valid_from": _time(record.valid_from_ns),
        "valid_until": _time(record.valid_until_ns),
        "active": record.active(now_ns),
        "metadata": metadata,
        "created_at": _time(record.valid_from_ns),
    }


def render_stored_pass(engine: Engine, body: bytes, now_ns: int) -> dict[str, Any]:
    record = decode_pass(body)
    return render_pass(record, now_ns, read_metadata(engine, PASS, record.id))


def render_statement(statement: Statement, *, attempt_failed: bool = False) -> dict[str, Any]:
    """A statement; ``attempt_failed``: the answer to a settle whose collection failed says ``failed``
    (the statement itself is now ``past_due``)."""
    status = "failed" if attempt_failed and statement.status == "past_due" else statement.status
    return {
        "id": statement.id,
        "payer_id": statement.payer_id,
        "ledger": statement.ledger,
        "amount_due": statement.amount_due,
        "status": status,
        "period_end": _time(statement.period_end_ns),
        "attempts": statement.attempts,
        "rail": statement.rail or None,
        "failure_code": statement.failure_code or None,
        "paid_at": _time(statement.paid_at_ns) if statement.paid_at_ns else None,
        "created_at": _time(statement.created_at_ns),
    }


def read_statement(engine: Engine, statement_id: str) -> Statement | None:
    return read(engine, STATEMENT, statement_id, decode_statement)


def read_charge(engine: Engine, charge_id: str) -> Charge | None:
    return read(engine, CHARGE, charge_id, decode_charge)


def read_topup(engine: Engine, topup_id: str) -> Topup | None:
    return read(engine, TOPUP, topup_id, decode_topup)


def read_refund(engine: Engine, refund_id: str) -> Refund | None:
    return read(engine, REFUND, refund_id, decode_refund)


def read_pass(engine: Engine, pass_id: str) -> Pass | None:
    return read(engine, PASS, pass_id, decode_pass)
