"""Index documents: small records written in the same operation as the object they point to,
so that listing one owner's objects, or finding what is due, never scans every object.

Two shapes, both read with ``store.list_documents(kind, starting_after, limit)`` (ids sort
as strings):

- **owner indexes**: id ``{owner_id}:{object_id}``, empty body. Listing an owner's objects is a
  range read from ``{owner_id}:`` (client ids never hold a ``:``, so one owner's entries are
  contiguous and cannot run into another's).
- **due queues**: id ``{due_ns:020d}:{object_id}``, a JSON body naming what to act on. Ids sort
  by due time; a background settler reads from a cursor forward up to "now" and advances the
  cursor past what it handled (see ``micropay.models.settler``).
"""

from __future__ import annotations

from micropay.engine import BatchContext
from micropay.models.records import dumps

# Owner indexes. (One payer's or merchant's charges need none: they are listed from the ledger's
# history of its accounts, ``payments.owner_charge_ids``.)
TOPUP_BY_PAYER = "topup_by_payer"
PASS_BY_PAYER = "pass_by_payer"
PASS_BY_MERCHANT = "pass_by_merchant"
STATEMENT_BY_PAYER = "statement_by_payer"
POSTPAY_PAYER = "postpay_payer"
"""Payers with a tab (post-pay and hybrid): the only candidates when statements close. Id: the payer id."""

# Due queues.
TOPUP_DUE = "topup_due"
"""Pending top-ups, by when their rail answers. Body: ``{"topup_id"}``."""
STATEMENT_DUE = "statement_due"
"""Statements ``processing`` through a rail, by when it answers. Body: ``{"statement_id"}``."""
PROMO_DUE = "promo_due"
"""Promo grants, by when they expire. Body: ``{"payer_id", "ledger"}``."""

DUE_QUEUES = (TOPUP_DUE, STATEMENT_DUE, PROMO_DUE)

_EMPTY = b"{}"
DUE_DIGITS = 20
"""Digits of the zero-padded due time in a due-queue id (any non-negative int64 fits)."""


def owner_key(owner_id: str, object_id: str) -> str:
    return f"{owner_id}:{object_id}"


def owner_prefix(owner_id: str) -> str:
    return f"{owner_id}:"


def put_owner_index(ctx: BatchContext, kind: str, owner_id: str, object_id: str) -> None:
    ctx.put_document(kind, owner_key(owner_id, object_id), _EMPTY)


def due_key(due_ns: int, object_id: str) -> str:
    return f"{max(due_ns, 0):0{DUE_DIGITS}d}:{object_id}"


def due_bound(now_ns: int) -> str:
    """Every due-queue id below this string is due at or before ``now_ns - 1``."""
    return f"{max(now_ns, 0):0{DUE_DIGITS}d}"


def put_due(ctx: BatchContext, kind: str, due_ns: int, object_id: str, body: dict[str, str]) -> None:
    ctx.put_document(kind, due_key(due_ns, object_id), dumps(body))
