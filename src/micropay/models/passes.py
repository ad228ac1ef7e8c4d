"""Time passes: access for ``duration_s`` bought from the balance as one charge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import orjson

from micropay.engine import BatchContext
from micropay.errors import Conflict, NotFound, Refused
from micropay.models import index
from micropay.models.payments import ChargeRequest, Outcome, charge_now
from micropay.models.records import encode

PASS = "pass"
NS_PER_S = 1_000_000_000
DURATION_S_MAX = 366 * 86_400


@dataclass(frozen=True, slots=True)
class Pass:
    id: str
    payer_id: str
    merchant_id: str
    price: int
    duration_s: int
    charge_id: str
    valid_from_ns: int
    valid_until_ns: int

    def active(self, now_ns: int) -> bool:
        """Whether the pass grants access at ``now_ns``."""
        return self.valid_from_ns <= now_ns < self.valid_until_ns


def decode_pass(body: bytes) -> Pass:
    data = orjson.loads(body)
    return Pass(**{name: data[name] for name in Pass.__dataclass_fields__})


def get_pass(ctx: BatchContext, pass_id: str) -> Pass:
    body = ctx.get_document(PASS, pass_id)
    if body is None:
        raise NotFound("pass_not_found", f"no pass {pass_id}", "id")
    return decode_pass(body)


def buy_pass(
    pass_id: str, payer_id: str, merchant_id: str, price: int, duration_s: int
) -> Callable[[BatchContext], Outcome[Pass]]:
    def run(ctx: BatchContext) -> Outcome[Pass]:
        body = ctx.get_document(PASS, pass_id)
        if body is not None:
            existing = decode_pass(body)
            if (existing.payer_id, existing.merchant_id, existing.price, existing.duration_s) != (
                payer_id,
                merchant_id,
                price,
                duration_s,
            ):
                raise Conflict("exists_with_different_fields", f"pass {pass_id} exists with other fields", "id")
            return existing, True
        if not 0 < duration_s <= DURATION_S_MAX:
            raise Refused("invalid_duration", f"duration_s is 1 to {DURATION_S_MAX}", "duration_s")
        charge_id = f"pass:{pass_id}"
        charge_now(ctx, ChargeRequest(charge_id, payer_id, merchant_id, price, f"pass {pass_id}", kind="pass"))
        now_ns = ctx.now_ns
        record = Pass(
            pass_id, payer_id, merchant_id, price, duration_s, charge_id, now_ns, now_ns + duration_s * NS_PER_S
        )
        ctx.put_document(PASS, pass_id, encode(record))
        index.put_owner_index(ctx, index.PASS_BY_PAYER, payer_id, pass_id)
        index.put_owner_index(ctx, index.PASS_BY_MERCHANT, merchant_id, pass_id)
        return record, False

    return run
