"""Shape checks run before a request reaches the state machine.

A malformed request (wrong types, out-of-range fields) rejects its whole submission with
MalformedRequest, before anything moves. Business outcomes (unknown account, limits) are
result codes instead, decided by the state machine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from micropay.errors import MalformedRequest
from micropay.ledger.limits import (
    BATCH_SIZE_MAX,
    CODE_MAX,
    CREDIT_LIMIT_MAX,
    ID_ALPHABET,
    ID_LENGTH_MAX,
    LEDGER_CODE_LENGTH_MAX,
    LEDGER_ID_ALPHABET,
    LEDGER_ID_LENGTH_MAX,
    METADATA_KEY_LENGTH_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_LENGTH_MAX,
    SCALE_MAX,
    TIMEOUT_S_MAX,
)
from micropay.ledger.types import AccountFlags, AccountRequest, Metadata, TransferFlags, TransferRequest

_TRANSFER_FLAGS_ALL = int(
    TransferFlags.LINKED
    | TransferFlags.PENDING
    | TransferFlags.POST_PENDING
    | TransferFlags.VOID_PENDING
    | TransferFlags.BALANCING_DEBIT
    | TransferFlags.BALANCING_CREDIT
)
_ACCOUNT_FLAGS_ALL = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)


def is_valid_id(value: object) -> bool:
    """1 to 64 characters of ``A-Za-z0-9_-``."""
    return type(value) is str and 0 < len(value) <= ID_LENGTH_MAX and ID_ALPHABET.issuperset(value)


def check_id(value: object, param: str) -> None:
    """A client-chosen id: 1 to 64 characters of ``A-Za-z0-9_-``."""
    if not is_valid_id(value):
        raise MalformedRequest(f"{param} must be 1 to {ID_LENGTH_MAX} characters of A-Za-z0-9_-", param)


def is_valid_ledger_id(value: object) -> bool:
    """1 to 128 characters of ``A-Za-z0-9_-:`` (clients' ids and the models' own)."""
    return type(value) is str and 0 < len(value) <= LEDGER_ID_LENGTH_MAX and LEDGER_ID_ALPHABET.issuperset(value)


def check_ledger_id(value: object, param: str) -> None:
    if not is_valid_ledger_id(value):
        raise MalformedRequest(f"{param} must be 1 to {LEDGER_ID_LENGTH_MAX} characters of A-Za-z0-9_-:", param)


def _check_int(value: object, low: int, high: int, param: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise MalformedRequest(f"{param} must be an integer from {low} to {high}", param)


def check_metadata(metadata: Metadata, param: str = "metadata") -> None:
    if type(metadata) is not tuple or len(metadata) > METADATA_KEYS_MAX:
        raise MalformedRequest(f"{param} holds at most {METADATA_KEYS_MAX} keys", param)
    for pair in metadata:
        if type(pair) is not tuple or len(pair) != 2:
            raise MalformedRequest(f"{param} must be (key, value) pairs", param)
        key, value = pair
        if type(key) is not str or not 0 < len(key) <= METADATA_KEY_LENGTH_MAX:
            raise MalformedRequest(f"{param} keys are 1 to {METADATA_KEY_LENGTH_MAX} characters", param)
        if type(value) is not str or len(value) > METADATA_VALUE_LENGTH_MAX:
            raise MalformedRequest(
                f"{param} values are strings of at most {METADATA_VALUE_LENGTH_MAX} characters", param
            )


def check_batch_size(count: int) -> None:
    if not 0 < count <= BATCH_SIZE_MAX:
        raise MalformedRequest(f"a batch holds 1 to {BATCH_SIZE_MAX} events, not {count}", "batch")


RequestColumns = tuple[tuple[Any, ...], ...]
"""The fields of a list of TransferRequests, one tuple per field (``zip(*requests)``)."""

_ID_LIST_PATTERN = re.compile(
    rf"(?:[A-Za-z0-9_:-]{{1,{LEDGER_ID_LENGTH_MAX}}},)*[A-Za-z0-9_:-]{{1,{LEDGER_ID_LENGTH_MAX}}}"
)
_INT: set[type[Any]] = {int}
_STR: set[type[Any]] = {str}
_INT_OR_NONE: set[type[Any]] = {int, type(None)}
_FLAGS: set[type[Any]] = {int, TransferFlags}
_REQUEST: set[type[Any]] = {TransferRequest}


def _column_ok(values: tuple[Any, ...], allowed: set[type[Any]]) -> bool:
    return set(map(type, values)) <= allowed


def transfer_columns(requests: Sequence[TransferRequest]) -> RequestColumns:
    """Validate ``requests`` in C-speed passes over their columns and return the columns.

    On any doubt it re-checks request by request, so the error names the first bad index.
    """
    check_batch_size(len(requests))
    try:
        columns: RequestColumns = tuple(zip(*requests, strict=True))
        valid = set(map(type, requests)) <= _REQUEST and columns_valid(columns)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        _check_each(requests)
        columns = tuple(zip(*requests, strict=True))
    return columns


def plain_columns(
    ids: list[str], debits: list[str], credits: list[str], amounts: list[int], ledger: str
) -> RequestColumns:
    """The columns of plain transfers on one ledger (no code, flags, pending id, timeout or
    metadata), as ``zip(*requests)`` would give them."""
    count = len(ids)
    return (
        tuple(ids),
        tuple(debits),
        tuple(credits),
        tuple(amounts),
        (ledger,) * count,
        (0,) * count,
        (0,) * count,
        ("",) * count,
        (0,) * count,
        ((),) * count,
    )


def columns_valid(columns: RequestColumns, count_max: int = BATCH_SIZE_MAX) -> bool:
    """Whether ``columns`` (one tuple per field of ``TransferRequest``) hold 1 to ``count_max``
    transfers, each well formed, checked in C-speed passes; False on any doubt (``_check_each``
    then names the fault)."""
    try:
        ids, debit_ids, credit_ids, amounts, ledgers, codes, flags, pending_ids, timeouts, metadata = columns
        count = len(ids)
        if not 0 < count <= count_max or any(len(column) != count for column in columns):
            return False
        # str.join raises TypeError on a non-str; one regex pass checks every id's alphabet and
        # length, once the comma count shows that no id holds a comma of its own.
        joined_ids = ",".join(ids)
        return (
            joined_ids.count(",") == count - 1
            and _ID_LIST_PATTERN.fullmatch(joined_ids) is not None
            and len("".join(debit_ids)) >= 0
            and len("".join(credit_ids)) >= 0
            and len("".join(pending_ids)) >= 0
            and _ledgers_ok(ledgers, count)
            and _column_ok(amounts, _INT_OR_NONE)
            and _column_ok(codes, _INT)
            and _column_ok(flags, _FLAGS)
            and _column_ok(timeouts, _INT)
            and min(codes) >= 0
            and max(codes) <= CODE_MAX
            and min(flags) >= 0
            and max(flags) <= _TRANSFER_FLAGS_ALL
            and min(timeouts) >= 0
            and max(timeouts) <= TIMEOUT_S_MAX
            and metadata.count(()) == count
        )
    except (TypeError, ValueError):
        return False


def _ledgers_ok(ledgers: tuple[Any, ...], count: int) -> bool:
    first = ledgers[0]
    if ledgers.count(first) == count:
        return type(first) is str and len(first) <= LEDGER_CODE_LENGTH_MAX
    return _column_ok(ledgers, _STR) and max(map(len, ledgers)) <= LEDGER_CODE_LENGTH_MAX


def check_transfer_requests(requests: Sequence[TransferRequest]) -> None:
    """Raise MalformedRequest (naming the index) if any request is malformed."""
    transfer_columns(requests)


def _check_each(requests: Sequence[TransferRequest]) -> None:
    for index, request in enumerate(requests):
        if type(request) is not TransferRequest:
            raise MalformedRequest(f"transfers[{index}] is not a TransferRequest", f"transfers[{index}]")
        transfer_id, debit_id, credit_id, amount, ledger, code, flags, pending_id, timeout_s, metadata = request
        check_ledger_id(transfer_id, f"transfers[{index}].id")
        if type(debit_id) is not str or type(credit_id) is not str or type(pending_id) is not str:
            raise MalformedRequest(f"transfers[{index}]: account and pending ids are strings", f"transfers[{index}]")
        if amount is not None and type(amount) is not int:
            raise MalformedRequest(f"transfers[{index}].amount must be an integer", f"transfers[{index}].amount")
        if type(ledger) is not str or len(ledger) > LEDGER_CODE_LENGTH_MAX:
            raise MalformedRequest(f"transfers[{index}].ledger must be a ledger code", f"transfers[{index}].ledger")
        _check_int(code, 0, CODE_MAX, f"transfers[{index}].code")
        _check_int(flags, 0, _TRANSFER_FLAGS_ALL, f"transfers[{index}].flags")
        _check_int(timeout_s, 0, TIMEOUT_S_MAX, f"transfers[{index}].timeout_s")
        check_metadata(metadata, f"transfers[{index}].metadata")


def check_account_requests(requests: Sequence[AccountRequest]) -> None:
    check_batch_size(len(requests))
    for index, request in enumerate(requests):
        if type(request) is not AccountRequest:
            raise MalformedRequest(f"accounts[{index}] is not an AccountRequest", f"accounts[{index}]")
        check_ledger_id(request.id, f"accounts[{index}].id")
        check_ledger_code(request.ledger, f"accounts[{index}].ledger")
        _check_int(request.flags, 0, _ACCOUNT_FLAGS_ALL, f"accounts[{index}].flags")
        _check_int(request.credit_limit, 0, CREDIT_LIMIT_MAX, f"accounts[{index}].credit_limit")
        check_metadata(request.metadata, f"accounts[{index}].metadata")


def check_ledger_code(code: object, param: str = "code") -> None:
    if (
        type(code) is not str
        or not 0 < len(code) <= LEDGER_CODE_LENGTH_MAX
        or not code.isascii()
        or not code.replace("_", "").isalnum()
    ):
        raise MalformedRequest(f"{param} must be 1 to {LEDGER_CODE_LENGTH_MAX} letters, digits or _", param)


def check_ledger(code: object, scale: object) -> None:
    check_ledger_code(code)
    _check_int(scale, 0, SCALE_MAX, "scale")


def check_credit_limit(credit_limit: object) -> None:
    _check_int(credit_limit, 0, CREDIT_LIMIT_MAX, "credit_limit")
