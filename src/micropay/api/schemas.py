"""Request models (strict: no floats where integers go, no unknown fields, every bound
named in ``micropay.ledger.limits``) and response models (for the OpenAPI document)."""

from __future__ import annotations

import re
from datetime import datetime
from operator import itemgetter
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from typing_extensions import TypedDict

from micropay.api.settings import Role
from micropay.ledger import Result
from micropay.ledger.limits import (
    AMOUNT_MAX,
    BATCH_SIZE_MAX,
    CODE_MAX,
    CREDIT_LIMIT_MAX,
    ID_LENGTH_MAX,
    LEDGER_CODE_LENGTH_MAX,
    METADATA_KEY_LENGTH_MAX,
    METADATA_KEYS_MAX,
    METADATA_VALUE_LENGTH_MAX,
    SCALE_MAX,
    TIMEOUT_S_MAX,
)

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
"""Ids clients choose (1 to 64 characters)."""
LEDGER_ID_PATTERN = r"^[A-Za-z0-9_:-]+$"
"""Ids inside the ledger: clients' ids and the models' own (``payer:p1:wallet:USD``), which
admin may read but not write through the ledger-core endpoints."""
LEDGER_CODE_PATTERN = r"^[A-Za-z0-9_]+$"


def _utf8(value: str) -> str:
    """Reject strings that cannot be stored as UTF-8 (lone surrogates such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from error
    return value


Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)]
LedgerCode = Annotated[
    str, StringConstraints(min_length=1, max_length=LEDGER_CODE_LENGTH_MAX, pattern=LEDGER_CODE_PATTERN)
]
Amount = Annotated[int, Field(ge=-AMOUNT_MAX, le=AMOUNT_MAX)]
"""In minor units. Bounded so it always fits 64 bits; zero and negatives reach the ledger,
which refuses them with ``amount_must_be_positive``."""
CreditLimit = Annotated[int, Field(ge=0, le=CREDIT_LIMIT_MAX)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=METADATA_KEY_LENGTH_MAX), AfterValidator(_utf8)]
MetadataValue = Annotated[str, StringConstraints(max_length=METADATA_VALUE_LENGTH_MAX), AfterValidator(_utf8)]
MetadataIn = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=METADATA_KEYS_MAX)]

TransferFlagName = Literal["linked", "pending", "post_pending", "void_pending", "balancing_debit", "balancing_credit"]
AccountFlagName = Literal["debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]


class StrictModel(BaseModel):
    """Strict types (``1.0`` is not an integer, ``"1"`` is not a number) and no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


# ----------------------------------------------------------------- requests
class LedgerIn(StrictModel):
    code: LedgerCode = Field(description="Names the ledger, e.g. `USD`; every `ledger` field holds a code.")
    scale: Annotated[int, Field(ge=0, le=SCALE_MAX, description="Digits after the point (USD 2 = cents).")]


class AccountIn(StrictModel):
    id: Id | None = Field(default=None, description="Idempotency key; the server makes one if omitted.")
    ledger: LedgerCode
    flags: Annotated[list[AccountFlagName], Field(max_length=2)] = Field(default_factory=list)
    credit_limit: CreditLimit = 0
    metadata: MetadataIn = Field(default_factory=dict)


class AccountPatch(StrictModel):
    credit_limit: CreditLimit


_TRANSFER_SHAPES: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["debit_account_id", "credit_account_id", "amount", "ledger"],
            "properties": {
                "debit_account_id": {"type": "string"},
                "credit_account_id": {"type": "string"},
                "amount": {"type": "integer"},
                "ledger": {"type": "string"},
            },
        },
        {
            "required": ["flags"],
            "properties": {"flags": {"type": "array", "contains": {"enum": ["post_pending", "void_pending"]}}},
        },
    ]
}
"""Accounts, amount and ledger are required unless the transfer posts or voids a pending one."""


class TransferIn(TypedDict):
    """One transfer. A TypedDict, not a model: a batch validates 8190 of them at C speed."""

    __pydantic_config__ = ConfigDict(  # type: ignore[misc]
        strict=True, extra="forbid", json_schema_extra=_TRANSFER_SHAPES
    )

    id: NotRequired[Annotated[Id | None, Field(description="Idempotency key; made by the server if omitted.")]]
    debit_account_id: NotRequired[Id | None]
    credit_account_id: NotRequired[Id | None]
    amount: NotRequired[
        Annotated[
            Amount | None,
            Field(description="Minor units. A ceiling for balancing; omitted on post_pending: all of it."),
        ]
    ]
    ledger: NotRequired[LedgerCode | None]
    code: NotRequired[Annotated[int, Field(ge=0, le=CODE_MAX)]]
    flags: NotRequired[Annotated[list[TransferFlagName], Field(max_length=6)]]
    pending_id: NotRequired[Id | None]
    timeout_s: NotRequired[Annotated[int, Field(ge=0, le=TIMEOUT_S_MAX)]]
    metadata: NotRequired[MetadataIn]


class TransferBatchIn(StrictModel):
    transfers: Annotated[list[TransferIn], Field(min_length=1, max_length=BATCH_SIZE_MAX)]


PLAIN_TRANSFER_FIELDS = ("id", "debit_account_id", "credit_account_id", "amount", "ledger")
"""A plain transfer has exactly these fields, none null (the rest take their defaults)."""
_ID_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
"""The characters of ``ID_PATTERN``."""
_NOT_LEDGER_CODE = re.compile(r"[^A-Za-z0-9_]")
_STR: set[type[Any]] = {str}
_INT: set[type[Any]] = {int}


def _ids_valid(ids: tuple[Any, ...]) -> bool:
    """Every value is an ``Id``, checked in C-speed passes: joined with commas, nothing but the
    commas may be left once the id characters are deleted, and no id may be empty or too long."""
    if set(map(type, ids)) != _STR:
        return False
    joined = ",".join(ids)
    return (
        joined.isascii()
        and joined.encode("ascii").translate(None, _ID_BYTES) == b"," * (len(ids) - 1)
        and min(map(len, ids)) >= 1
        and max(map(len, ids)) <= ID_LENGTH_MAX
    )


def _ledger_code_valid(code: object) -> bool:
    return type(code) is str and 0 < len(code) <= LEDGER_CODE_LENGTH_MAX and _NOT_LEDGER_CODE.search(code) is None


PlainColumns = tuple[tuple[Any, ...], ...]
"""The ``PLAIN_TRANSFER_FIELDS`` of a list of plain transfers, one tuple per field."""


def plain_transfer_columns(items: object) -> PlainColumns | None:
    """The columns of ``items`` if every item is a plain transfer that ``TransferIn`` accepts as
    it is, else None.

    The same rules as the model, checked column by column, so a large batch skips pydantic's
    per-item validation. None means "not certain": validate with the model (which then
    accepts, or names the first problem). ``tests/api/test_api_hot_path.py`` holds the two to agree.
    """
    if type(items) is not list or not 0 < len(items) <= BATCH_SIZE_MAX:
        return None
    if set(map(type, items)) != {dict} or sum(map(len, items)) != len(PLAIN_TRANSFER_FIELDS) * len(items):
        return None
    try:
        columns = tuple(tuple(map(itemgetter(name), items)) for name in PLAIN_TRANSFER_FIELDS)
    except KeyError:
        return None
    ids, debit_ids, credit_ids, amounts, ledgers = columns
    if set(map(type, amounts)) != _INT or min(amounts) < -AMOUNT_MAX or max(amounts) > AMOUNT_MAX:
        return None
    if not (_ids_valid(ids) and _ids_valid(debit_ids) and _ids_valid(credit_ids)):
        return None
    if not all(map(_ledger_code_valid, set(ledgers) if set(map(type, ledgers)) == _STR else ledgers)):
        return None
    return columns


PlainTransfer = tuple[str, str, str, int, str]
"""The ``PLAIN_TRANSFER_FIELDS`` of one plain transfer."""


def plain_transfer(item: object) -> PlainTransfer | None:
    """The fields of ``item`` if it is one plain transfer that ``TransferIn`` accepts as it is,
    else None: ``plain_transfer_columns`` for a single transfer, without building columns."""
    if type(item) is not dict or len(item) != len(PLAIN_TRANSFER_FIELDS):
        return None
    try:
        fields = (item["id"], item["debit_account_id"], item["credit_account_id"], item["amount"], item["ledger"])
    except KeyError:
        return None
    transfer_id, debit_id, credit_id, amount, ledger = fields
    if type(amount) is not int or not -AMOUNT_MAX <= amount <= AMOUNT_MAX:
        return None
    if not (_ids_valid((transfer_id, debit_id, credit_id)) and _ledger_code_valid(ledger)):
        return None
    return fields


def plain_transfers_valid(items: object) -> bool:
    """Whether every item is a plain transfer ``TransferIn`` accepts as it is (see above)."""
    return plain_transfer_columns(items) is not None


class ApiKeyIn(StrictModel):
    id: Id | None = Field(default=None, description="Idempotency key; the server makes one if omitted.")
    role: Role
    subject_id: Id | None = Field(
        default=None, description="The merchant, payer or publisher the key acts as (required for those roles)."
    )
    metadata: MetadataIn = Field(default_factory=dict)


# ----------------------------------------------------------------- responses (documentation)
class ErrorDetail(BaseModel):
    type: Literal[
        "invalid_request",
        "authentication",
        "permission",
        "not_found",
        "conflict",
        "payment_declined",
        "rate_limited",
        "internal",
    ]
    code: str
    message: str
    param: str | None


class ErrorOut(BaseModel):
    error: ErrorDetail


class LedgerOut(BaseModel):
    code: str
    scale: int
    created_at: datetime


class AccountOut(BaseModel):
    id: str
    ledger: str
    flags: list[AccountFlagName]
    credit_limit: int
    debits_posted: int
    credits_posted: int
    debits_pending: int
    credits_pending: int
    balance: int
    available: int
    metadata: dict[str, str]
    created_at: datetime


class TransferOut(BaseModel):
    id: str
    debit_account_id: str
    credit_account_id: str
    amount: int
    ledger: str
    code: int
    flags: list[TransferFlagName]
    pending_id: str | None
    timeout_s: int
    metadata: dict[str, str]
    timestamp: int = Field(description="Nanoseconds since the Unix epoch; unique, the transfer's place in order.")
    created_at: datetime


class BatchResultOut(BaseModel):
    index: int
    id: str
    result: Result


class BatchOut(BaseModel):
    results: list[BatchResultOut]


class ApiKeyOut(BaseModel):
    id: str
    key: str | None = Field(description="The secret key: shown once, in the answer that created it; null after.")
    role: Role
    subject_id: str | None
    prefix: str = Field(description="The key's first characters, to recognise it.")
    metadata: dict[str, str]
    created_at: datetime
    revoked: bool
    revoked_at: datetime | None


class LedgerList(BaseModel):
    data: list[LedgerOut]
    has_more: bool


class AccountList(BaseModel):
    data: list[AccountOut]
    has_more: bool


class TransferList(BaseModel):
    data: list[TransferOut]
    has_more: bool


class ApiKeyList(BaseModel):
    data: list[ApiKeyOut]
    has_more: bool


def metadata_pairs(metadata: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """Request metadata as the ledger keeps it: sorted (key, value) pairs."""
    return tuple(sorted(metadata.items()))
