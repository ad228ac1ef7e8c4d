"""Transfers (admin): create one, create a batch, read one, list an account's."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import count, repeat
from operator import attrgetter, itemgetter
from typing import Annotated, cast

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from micropay.api.auth import Admin
from micropay.api.history import account_history
from micropay.api.idempotency import new_id, replayed
from micropay.api.lean import lean_post
from micropay.api.pagination import Page
from micropay.api.routes.docs import create_responses, read_responses, write_responses
from micropay.api.routing import OrjsonRoute
from micropay.api.schemas import (
    LEDGER_ID_PATTERN,
    PLAIN_TRANSFER_FIELDS,
    BatchOut,
    PlainColumns,
    TransferBatchIn,
    TransferIn,
    TransferList,
    TransferOut,
    metadata_pairs,
    plain_transfer_columns,
)
from micropay.api.serialise import JsonResponse, created, render_transfer
from micropay.api.services import get_engine, get_services
from micropay.errors import InvalidRequest, InvariantViolation, NotFound
from micropay.ledger import (
    TRANSFER_FLAG_NAMES,
    Result,
    TransferFlags,
    TransferOutcome,
    TransferRequest,
    outcome_codes,
)
from micropay.ledger.limits import LEDGER_ID_LENGTH_MAX

router = APIRouter(prefix="/v1/transfers", tags=["transfers"], route_class=OrjsonRoute)

TransferIdPath = Annotated[
    str,
    Path(min_length=1, max_length=LEDGER_ID_LENGTH_MAX, pattern=LEDGER_ID_PATTERN, description="The transfer id."),
]

_FLAG_BITS = {name: int(bit) for name, bit in TRANSFER_FLAG_NAMES.items()}
_RESOLVING = int(TransferFlags.POST_PENDING | TransferFlags.VOID_PENDING)


_PLAIN_FIELD_GETTERS = tuple(map(itemgetter, PLAIN_TRANSFER_FIELDS))
_request_id = attrgetter("id")
_new_request = cast(Callable[[Iterable[object]], TransferRequest], partial(tuple.__new__, TransferRequest))
"""``TransferRequest._make`` without its Python-level call (the ten fields come as one tuple)."""
_RESULT_TEXT = {result: result.value for result in Result}
"""A result's text (a plain str keeps the answer's many small dicts out of the cycle collector)."""


class PlainTransfers(list[TransferIn]):
    """Transfers ``plain_transfer_columns`` vouched for, with the columns it made of them."""

    def __init__(self, items: list[TransferIn], columns: PlainColumns) -> None:
        super().__init__(items)
        self.columns = columns


def to_requests(items: Sequence[TransferIn]) -> list[TransferRequest]:
    """``[to_request(item, index) for index, item in enumerate(items)]``, made in C-speed passes
    over the fields when every transfer is plain: exactly an id, the two accounts, an amount
    and a ledger, none of them null (the other fields then take their defaults)."""
    size = len(items)
    columns: PlainColumns | None = items.columns if isinstance(items, PlainTransfers) else None
    if columns is None and size and sum(map(len, items)) == len(PLAIN_TRANSFER_FIELDS) * size:
        try:
            columns = tuple(tuple(map(getter, items)) for getter in _PLAIN_FIELD_GETTERS)
        except KeyError:
            columns = None
        if columns is not None and any(None in column for column in columns):
            columns = None
    if columns is None:
        return [to_request(item, index) for index, item in enumerate(items)]
    defaults = (repeat(0, size), repeat(0, size), repeat("", size), repeat(0, size), repeat((), size))
    return list(map(_new_request, zip(*columns, *defaults, strict=True)))


def to_request(item: TransferIn, index: int | None = None) -> TransferRequest:
    """A ledger request from the wire shape (``index``: its place in a batch, for errors).

    Accounts, amount and ledger are required, except on ``post_pending`` / ``void_pending``,
    which take them from the pending transfer.
    """
    flags = 0
    for name in item.get("flags") or ():
        flags |= _FLAG_BITS[name]
    debit_id = item.get("debit_account_id")
    credit_id = item.get("credit_account_id")
    amount = item.get("amount")
    ledger = item.get("ledger")
    if not flags & _RESOLVING and (debit_id is None or credit_id is None or amount is None or ledger is None):
        present = {"debit_account_id": debit_id, "credit_account_id": credit_id, "amount": amount, "ledger": ledger}
        missing = next(field for field, value in present.items() if value is None)
        param = missing if index is None else f"transfers[{index}].{missing}"
        raise InvalidRequest("parameter_missing", f"{param} is required.", param)
    metadata = item.get("metadata")
    return TransferRequest(
        item.get("id") or new_id("tr"),
        debit_id or "",
        credit_id or "",
        amount,
        ledger or "",
        item.get("code", 0),
        flags,
        item.get("pending_id") or "",
        item.get("timeout_s", 0),
        metadata_pairs(metadata) if metadata else (),
    )


_COLUMN_CHECK_TRANSFERS_MIN = 32
"""From about this many transfers the column-wise check beats the model's item by item (below,
the model is as quick: ``POST /v1/transfers`` has no such shortcut)."""


def _plain_batch(body: object) -> TransferBatchIn | None:
    """The body as a model without validating it again, if every transfer is plain and valid."""
    if type(body) is not dict or len(body) != 1:
        return None
    transfers = body.get("transfers")
    if type(transfers) is not list or len(transfers) < _COLUMN_CHECK_TRANSFERS_MIN:
        return None
    columns = plain_transfer_columns(transfers)
    if columns is None:
        return None
    return TransferBatchIn.model_construct(transfers=PlainTransfers(cast(list[TransferIn], transfers), columns))


@lean_post(router, "", status_code=201, response_model=TransferOut, responses=create_responses(TransferOut))
async def create_transfer(body: TransferIn, request: Request, _caller: Admin) -> Response:
    """Move money (or reserve, post or void a pending amount). A refusal's ``error.code`` is the result code."""
    transfer_request = to_request(body)
    services = get_services(request)
    if services.transfers is not None:
        outcome = await services.transfers.create_transfer(transfer_request)
    else:
        [outcome] = await services.engine.create_transfers_async([transfer_request])
    return transfer_response(transfer_request, outcome)


def transfer_response(request: TransferRequest, outcome: TransferOutcome) -> Response:
    """What ``POST /v1/transfers`` answers for its transfer's outcome: 201, 200 for a replay
    (raises the refusal as an ``ApiError``)."""
    result, transfer = outcome
    is_replay = replayed(result)
    if transfer is None:
        raise InvariantViolation(f"transfer {request.id}: {result} without the transfer")
    return created(render_transfer(transfer), replayed=is_replay)


@lean_post(router, "/batch", fast_validator=_plain_batch, response_model=BatchOut, responses=write_responses())
async def create_transfer_batch(body: TransferBatchIn, request: Request, _caller: Admin) -> Response:
    """Up to 8190 transfers in order, independent unless chained by ``linked``; one result each."""
    requests = to_requests(body.transfers)
    outcomes = await get_engine(request).create_transfers_async(requests)
    texts = map(_RESULT_TEXT.__getitem__, outcome_codes(outcomes))
    results = [
        {"index": index, "id": transfer_id, "result": text}
        for index, transfer_id, text in zip(count(), map(_request_id, requests), texts, strict=False)
    ]
    return JsonResponse({"results": results})


@router.get("", response_model=TransferList, responses=read_responses())
def list_transfers(
    account_id: Annotated[
        str,
        Query(
            min_length=1,
            max_length=LEDGER_ID_LENGTH_MAX,
            pattern=LEDGER_ID_PATTERN,
            description="The account whose transfers to list (newest first).",
        ),
    ],
    request: Request,
    _caller: Admin,
    page_params: Page,
) -> Response:
    """An account's transfers, newest first; ``starting_after`` is a transfer id."""
    return JsonResponse(account_history(get_engine(request), account_id, page_params, param="account_id"))


@router.get("/{transfer_id}", response_model=TransferOut, responses=read_responses())
def get_transfer(transfer_id: TransferIdPath, request: Request, _caller: Admin) -> Response:
    transfer = get_engine(request).transfer(transfer_id)
    if transfer is None:
        raise NotFound("transfer_not_found", f"No transfer {transfer_id}.", "transfer_id")
    return JsonResponse(render_transfer(transfer))
