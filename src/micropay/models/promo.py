"""Gift vouchers and promo credit: codes stored hashed, redeemable once, expiring."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson

from micropay.engine import BatchContext
from micropay.errors import Conflict, NotFound, Refused
from micropay.ledger import TransferRequest
from micropay.models import chart, index
from micropay.models.collection import promo_key
from micropay.models.payments import (
    PAYER_PROMO,
    Outcome,
    check_amount,
    ensure_platform_accounts,
    get_payer,
    move,
    payer_promo,
)
from micropay.models.records import encode
from micropay.models.rules import PromoGrant, expired_grants
from micropay.settlement.rails import Rails

VOUCHER = "voucher"
CODE_LENGTH_MIN = 4
CODE_LENGTH_MAX = 64
GRANTS_MAX = 100
"""Most promo grants one payer holds in one ledger (spent and expired ones are dropped first)."""


@dataclass(frozen=True, slots=True)
class Voucher:
    id: str  # a display id derived from the code's hash; the code itself is never stored
    code_hash: str
    ledger: str
    amount: int
    expires_at_ns: int
    created_at_ns: int
    redeemed_by: str = ""
    redeemed_at_ns: int = 0


def code_hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def voucher_id(digest: str) -> str:
    return f"vch_{digest[:16]}"


def decode_voucher(body: bytes) -> Voucher:
    data = orjson.loads(body)
    return Voucher(**{name: data[name] for name in Voucher.__dataclass_fields__})


_decode = decode_voucher


def create_voucher(
    code: str, ledger: str, amount: int, expires_at_ns: int, rails: Rails
) -> Callable[[BatchContext], Outcome[Voucher]]:
    def run(ctx: BatchContext) -> Outcome[Voucher]:
        if not CODE_LENGTH_MIN <= len(code) <= CODE_LENGTH_MAX:
            raise Refused("invalid_code", f"a code is {CODE_LENGTH_MIN} to {CODE_LENGTH_MAX} characters", "code")
        digest = code_hash(code)
        body = ctx.get_document(VOUCHER, digest)
        if body is not None:
            existing = _decode(body)
            if (existing.ledger, existing.amount, existing.expires_at_ns) != (ledger, amount, expires_at_ns):
                raise Conflict("exists_with_different_fields", "this code exists with other fields", "code")
            return existing, True
        check_amount(amount)
        ensure_platform_accounts(ctx, ledger, rails)
        voucher = Voucher(voucher_id(digest), digest, ledger, amount, expires_at_ns, ctx.now_ns)
        ctx.put_document(VOUCHER, digest, encode(voucher))
        return voucher, False

    return run


def redeem_voucher(payer_id: str, code: str) -> Callable[[BatchContext], Outcome[Voucher]]:
    """Turn a voucher into promo credit for the payer: once, even under concurrent redemption
    (operations run one at a time inside the engine). The same payer redeeming again replays."""

    def run(ctx: BatchContext) -> Outcome[Voucher]:
        payer = get_payer(ctx, payer_id)
        digest = code_hash(code)
        body = ctx.get_document(VOUCHER, digest)
        if body is None:
            raise NotFound("voucher_not_found", "no voucher has this code", "code")
        voucher = _decode(body)
        if voucher.redeemed_by:
            if voucher.redeemed_by == payer.id:
                return voucher, True
            raise Refused("voucher_already_redeemed", "this voucher was already redeemed", "code")
        if voucher.expires_at_ns <= ctx.now_ns:
            raise Refused("voucher_expired", "this voucher has expired", "code")
        if voucher.ledger != payer.ledger:
            raise Refused("ledger_mismatch", "this voucher is for another ledger", "code")
        ledger = voucher.ledger
        move(
            ctx,
            [
                TransferRequest(
                    f"voucher:{voucher.id}",
                    chart.promo_funding_account(ledger),
                    chart.promo_account(payer.id, ledger),
                    voucher.amount,
                    ledger,
                )
            ],
            "insufficient_funds",
        )
        promo = payer_promo(ctx, payer.id, ledger)
        kept = tuple(grant for grant in promo.grants if grant.remaining > 0 or grant.expires_at_ns > ctx.now_ns)
        if len(kept) >= GRANTS_MAX:
            raise Refused("too_many_grants", f"a payer holds at most {GRANTS_MAX} promo grants", "code")
        grant = PromoGrant(voucher.id, voucher.amount, voucher.amount, voucher.expires_at_ns)
        ctx.put_document(PAYER_PROMO, promo_key(payer.id, ledger), encode(replace(promo, grants=(*kept, grant))))
        redeemed = replace(voucher, redeemed_by=payer.id, redeemed_at_ns=ctx.now_ns)
        ctx.put_document(VOUCHER, digest, encode(redeemed))
        due_id = f"{payer.id}:{ledger}:{voucher.id}"
        index.put_due(ctx, index.PROMO_DUE, voucher.expires_at_ns, due_id, {"payer_id": payer.id, "ledger": ledger})
        return redeemed, False

    return run


def expire_promo(payer_id: str, ledger: str) -> Callable[[BatchContext], int]:
    """Move a payer's expired, unspent promo credit to the promo-expense reversal account."""

    def run(ctx: BatchContext) -> int:
        promo = payer_promo(ctx, payer_id, ledger)
        grants, expired = expired_grants(promo.grants, ctx.now_ns)
        if not expired:
            return 0
        move(
            ctx,
            [
                TransferRequest(
                    f"promo_expiry:{payer_id}:{ledger}:{promo.expiries + 1}",
                    chart.promo_account(payer_id, ledger),
                    chart.promo_expired_account(ledger),
                    expired,
                    ledger,
                )
            ],
            "insufficient_funds",
        )
        kept = tuple(grant for grant in grants if grant.expires_at_ns > ctx.now_ns)
        updated = replace(promo, grants=kept, expiries=promo.expiries + 1)
        ctx.put_document(PAYER_PROMO, promo_key(payer_id, ledger), encode(updated))
        return expired

    return run
