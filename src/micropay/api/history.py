"""An account's transfers, newest first, paged by transfer id."""

from __future__ import annotations

from typing import Any

from micropay.api.pagination import PageParams
from micropay.api.serialise import page, render_transfer
from micropay.engine import HISTORY_PAGE_MAX, Engine
from micropay.errors import NotFound


def account_history(engine: Engine, account_id: str, page_params: PageParams, *, param: str) -> dict[str, Any]:
    """One page of ``account_id``'s transfers, older than the ``starting_after`` transfer.

    ``param`` names the account id in errors (a path or a query parameter).
    """
    if engine.account(account_id) is None:
        raise NotFound("account_not_found", f"No account {account_id}.", param)
    before_timestamp: int | None = None
    if page_params.starting_after is not None:
        cursor = engine.transfer(page_params.starting_after)
        if cursor is None or account_id not in (cursor.debit_account_id, cursor.credit_account_id):
            raise NotFound(
                "transfer_not_found",
                f"No transfer {page_params.starting_after} on account {account_id} to start after.",
                "starting_after",
            )
        before_timestamp = cursor.timestamp
    limit = min(page_params.limit, HISTORY_PAGE_MAX)
    transfers = engine.account_transfers(account_id, limit=limit, before_timestamp=before_timestamp)
    has_more = len(transfers) == limit and bool(
        engine.account_transfers(account_id, limit=1, before_timestamp=transfers[-1].timestamp)
    )
    return page([render_transfer(transfer) for transfer in transfers], has_more)
