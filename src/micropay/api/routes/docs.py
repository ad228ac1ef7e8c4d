"""OpenAPI response entries shared by the routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from micropay.api.errors import READ_ERRORS, WRITE_ERRORS, error_responses
from micropay.api.serialise import REPLAYED_HEADER

_REPLAYED_DOC = {
    REPLAYED_HEADER: {
        "description": "`true` when this answer replays an earlier create with the same id and body.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def create_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """A create: 201 new (the route's model), 200 replay, and the write errors."""
    return {
        200: {"model": model, "description": "Replay of an earlier identical create.", "headers": _REPLAYED_DOC},
        **error_responses(*WRITE_ERRORS),
    }


def write_responses() -> dict[int | str, dict[str, Any]]:
    return error_responses(*WRITE_ERRORS)


def read_responses() -> dict[int | str, dict[str, Any]]:
    return error_responses(*READ_ERRORS)
