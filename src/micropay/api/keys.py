"""API key material and records: random keys, stored only as SHA-256 hashes.

A key reads ``mpk_<key id>.<secret>``: the id finds the record, the secret (256 random bits)
proves the caller holds the key. Records are engine documents of kind ``api_key``, written in
an engine batch (so a create or revoke is durable before it is answered).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast, get_args

import orjson

from micropay.api.serialise import rfc3339
from micropay.api.settings import ROLES, Role
from micropay.engine import BatchContext, Engine
from micropay.errors import Conflict, InvalidRequest
from micropay.ledger.validate import is_valid_id

API_KEY_KIND = "api_key"
KEY_SCHEME = "mpk_"
SECRET_BYTES = 32
"""Random bytes in a key's secret (256 bits)."""
DISPLAY_PREFIX_CHARS = 16
"""Characters of a key shown in listings (never reaching into the secret)."""


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_key(key_id: str) -> str:
    return f"{KEY_SCHEME}{key_id}.{secrets.token_urlsafe(SECRET_BYTES)}"


def key_id_of(key: str) -> str | None:
    """The key id a presented key names, or None if it is not shaped like a key."""
    if not key.startswith(KEY_SCHEME):
        return None
    key_id, dot, secret = key[len(KEY_SCHEME) :].rpartition(".")
    if not dot or not secret or not is_valid_id(key_id):
        return None
    return key_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def display_prefix(key_id: str) -> str:
    return (KEY_SCHEME + key_id)[:DISPLAY_PREFIX_CHARS]


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What is stored of an API key: never the key itself, only its SHA-256."""

    id: str
    role: Role
    subject_id: str | None
    key_sha256: str
    created_at_ns: int
    metadata: dict[str, str] = field(default_factory=dict)
    revoked_at_ns: int | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at_ns is not None

    def matches(self, key: str) -> bool:
        """Whether ``key`` is this record's key (constant-time comparison of the hashes)."""
        return hmac.compare_digest(self.key_sha256, hash_key(key))

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "role": self.role,
                "subject_id": self.subject_id,
                "key_sha256": self.key_sha256,
                "created_at_ns": self.created_at_ns,
                "metadata": self.metadata,
                "revoked_at_ns": self.revoked_at_ns,
            }
        )

    @classmethod
    def from_json(cls, body: bytes) -> ApiKeyRecord:
        data = orjson.loads(body)
        role = data["role"]
        if role not in get_args(Role):
            raise ValueError(f"stored API key {data['id']} has unknown role {role!r}")
        return cls(
            id=data["id"],
            role=cast(Role, role),
            subject_id=data["subject_id"],
            key_sha256=data["key_sha256"],
            created_at_ns=data["created_at_ns"],
            metadata=dict(data.get("metadata") or {}),
            revoked_at_ns=data.get("revoked_at_ns"),
        )

    def render(self, key: str | None = None) -> dict[str, Any]:
        """The wire shape; ``key`` only in the answer that created it."""
        return {
            "id": self.id,
            "key": key,
            "role": self.role,
            "subject_id": self.subject_id,
            "prefix": display_prefix(self.id),
            "metadata": self.metadata,
            "created_at": rfc3339(self.created_at_ns),
            "revoked": self.revoked,
            "revoked_at": None if self.revoked_at_ns is None else rfc3339(self.revoked_at_ns),
        }


def check_subject(role: Role, subject_id: str | None) -> None:
    """Every role but admin acts as one subject (a merchant, payer or publisher)."""
    if role not in ROLES:
        raise InvalidRequest("parameter_invalid", f"role must be one of {', '.join(ROLES)}.", "role")
    if role != "admin" and subject_id is None:
        raise InvalidRequest("parameter_missing", f"subject_id is required for a {role} key.", "subject_id")


def create_key_operation(
    key_id: str, role: Role, subject_id: str | None, metadata: dict[str, str], key: str
) -> Callable[[BatchContext], tuple[ApiKeyRecord, bool]]:
    """An engine operation storing a new key's record; answers ``(record, replayed)``.

    The same id with the same role, subject and metadata replays the stored record (its key
    cannot be shown again); with other fields it raises Conflict.
    """

    def operation(ctx: BatchContext) -> tuple[ApiKeyRecord, bool]:
        stored = ctx.get_document(API_KEY_KIND, key_id)
        if stored is not None:
            record = ApiKeyRecord.from_json(stored)
            if (record.role, record.subject_id, record.metadata) == (role, subject_id, metadata):
                return record, True
            raise Conflict("exists_with_different_fields", "An API key with this id exists with other fields.", "id")
        record = ApiKeyRecord(key_id, role, subject_id, hash_key(key), ctx.now_ns, dict(metadata))
        ctx.put_document(API_KEY_KIND, key_id, record.to_json())
        return record, False

    return operation


def revoke_key_operation(key_id: str) -> Callable[[BatchContext], ApiKeyRecord | None]:
    """An engine operation marking a key revoked (once); answers the record, or None if unknown."""

    def operation(ctx: BatchContext) -> ApiKeyRecord | None:
        stored = ctx.get_document(API_KEY_KIND, key_id)
        if stored is None:
            return None
        record = ApiKeyRecord.from_json(stored)
        if record.revoked_at_ns is None:
            record = replace(record, revoked_at_ns=ctx.now_ns)
            ctx.put_document(API_KEY_KIND, key_id, record.to_json())
        return record

    return operation


def issue_key(engine: Engine, role: Role, subject_id: str | None = None) -> tuple[ApiKeyRecord, str]:
    """Create and store a new key now (blocking); answers its record and the key itself."""
    check_subject(role, subject_id)
    key_id = new_key_id()
    key = new_key(key_id)
    record, _ = engine.call(create_key_operation(key_id, role, subject_id, {}, key))
    return record, key


def verify_key(engine: Engine, key: str) -> ApiKeyRecord | None:
    """The live (unrevoked) record ``key`` belongs to, or None."""
    key_id = key_id_of(key)
    if key_id is None:
        return None
    body = engine.store.read_document(API_KEY_KIND, key_id)
    if body is None:
        return None
    record = ApiKeyRecord.from_json(body)
    return record if record.matches(key) and not record.revoked else None
