"""Encoding of a batch's transfers and expiries into one compact JSON blob, and back.

Columnar (one array per ``Transfer`` field), so orjson writes it at C speed; a column whose
values are all equal is written once (``{"k": value}``) and a run of consecutive timestamps
as its start (``{"r": first}``). One row per batch, not per transfer, is what lets a durable
SQLite ledger pass 250k transfers/s (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from micropay.errors import StoreSchemaError
from micropay.ledger.types import TRANSFER_FIELD_COUNT, Metadata, TransferColumns

_TIMESTAMP = 9
_METADATA = TRANSFER_FIELD_COUNT - 1


def _encode_column(index: int, column: list[Any]) -> object:
    count = len(column)
    if index == _TIMESTAMP and column[-1] - column[0] == count - 1:
        return {"r": column[0]}  # timestamps strictly increase, so this is a consecutive run
    first = column[0]
    if column.count(first) == count and type(first) in (int, str, tuple):
        return {"k": first}
    return column


def encode_batch(transfers: TransferColumns, expired: Sequence[str]) -> bytes:
    count = len(transfers)
    columns = [_encode_column(i, column) for i, column in enumerate(transfers.columns)] if count else []
    return orjson.dumps({"n": count, "t": columns, "x": list(expired)})


def _metadata(value: object) -> Metadata:
    if not value:
        return ()
    if not isinstance(value, list):
        raise StoreSchemaError("batch metadata column holds a non-list")
    return tuple((str(key), str(item)) for key, item in value)


def _decode_column(index: int, encoded: object, count: int) -> list[Any]:
    if isinstance(encoded, list):
        if len(encoded) != count:
            raise StoreSchemaError(f"batch column {index} has {len(encoded)} values, expected {count}")
        if index == _METADATA:
            return [_metadata(item) for item in encoded] if any(encoded) else [()] * count
        return encoded
    if not isinstance(encoded, dict):
        raise StoreSchemaError(f"batch column {index} is neither a list nor a run")
    if "r" in encoded:
        first = int(encoded["r"])
        return list(range(first, first + count))
    value = encoded["k"]
    if index == _METADATA:
        value = _metadata(value)
    return [value] * count


def decode_batch(body: bytes) -> tuple[TransferColumns, list[str]]:
    """Inverse of ``encode_batch``."""
    data = orjson.loads(body)
    count = int(data["n"])
    expired = [str(pending_id) for pending_id in data["x"]]
    if not count:
        return TransferColumns(), expired
    encoded = data["t"]
    if len(encoded) != TRANSFER_FIELD_COUNT:
        raise StoreSchemaError(f"batch has {len(encoded)} columns, expected {TRANSFER_FIELD_COUNT}")
    return TransferColumns([_decode_column(i, column, count) for i, column in enumerate(encoded)]), expired
