"""Request models (strict: no floats where integers go, no unknown fields, every bound
named in ``micropay.ledger.limits``) and response models (for the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
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
MetadataKey = Annotated[
    str, StringConstraints(min_length=1, max_length=METADATA_KEY_LENGTH_MAX), AfterValidator(_utf8)
]
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
        "invalid_request", "authentication", "permission", "not_found", "conflict", "payment_declined",
        "rate_limited", "internal",
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
