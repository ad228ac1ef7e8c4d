"""Clients' metadata on the objects they create (string keys and values), kept beside the
object's record as a document ``metadata`` with id ``{object kind}:{object id}``, written in the
operation that creates the object, and only when there is some."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from micropay.engine import BatchContext
from micropay.errors import Conflict

METADATA = "metadata"


def metadata_id(kind: str, object_id: str) -> str:
    return f"{kind}:{object_id}"


def metadata_body(metadata: Mapping[str, str]) -> bytes | None:
    """The stored form of ``metadata`` (None when empty: nothing is stored)."""
    return orjson.dumps(dict(metadata), option=orjson.OPT_SORT_KEYS) if metadata else None


def keep_metadata(ctx: BatchContext, kind: str, object_id: str, body: bytes | None, *, replayed: bool) -> None:
    """Store a new object's metadata; a replay of its create must carry the same (else 409)."""
    key = metadata_id(kind, object_id)
    if replayed:
        if ctx.get_document(METADATA, key) != body:
            raise Conflict("exists_with_different_fields", "The id exists with other metadata.", "metadata")
    elif body is not None:
        ctx.put_document(METADATA, key, body)


def decode_metadata(body: bytes | None) -> dict[str, str]:
    return {} if body is None else {str(key): str(value) for key, value in orjson.loads(body).items()}
