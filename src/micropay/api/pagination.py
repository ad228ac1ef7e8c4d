"""Cursor pagination: ``?limit=`` (default 20, max 1000) and ``?starting_after=<id>``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Query
from pydantic import BeforeValidator

from micropay.api.schemas import LEDGER_ID_PATTERN
from micropay.api.settings import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX
from micropay.ledger.limits import LEDGER_ID_LENGTH_MAX

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    starting_after: str | None


def _digits(value: object) -> object:
    """A query integer is plain ASCII digits: ``1.0``, ``+1``, `` 1`` or ``1_0`` are refused."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > _LIMIT_DIGITS_MAX:
            raise ValueError("must be a whole number written in digits")
        return int(value)
    return value


_LIMIT_DIGITS_MAX = 9
Limit = Annotated[int, BeforeValidator(_digits), Query(ge=1, le=PAGE_LIMIT_MAX, description="Most objects to return.")]


def page_params(
    limit: Limit = PAGE_LIMIT_DEFAULT,
    starting_after: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=LEDGER_ID_LENGTH_MAX,
            pattern=LEDGER_ID_PATTERN,
            description="Return objects after this id (the last id of the previous page).",
        ),
    ] = None,
) -> PageParams:
    return PageParams(limit, starting_after)


Page = Annotated[PageParams, Depends(page_params)]


def split_page(items: Sequence[T], limit: int) -> tuple[list[T], bool]:
    """Items fetched with ``limit + 1``: the page, and whether more follow."""
    return list(items[:limit]), len(items) > limit
