"""API keys as the server checks them: a cache of verified keys, and the principal a key stands for.

A missing, unknown or revoked key is 401 (``AuthenticationFailed``); what a principal may then
do is ``micropay.api.auth``'s to say.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool

from micropay.api.keys import API_KEY_KIND, ApiKeyRecord, key_id_of
from micropay.api.settings import Role
from micropay.engine import Engine
from micropay.errors import ApiError, AuthenticationFailed

KEY_CACHE_ENTRIES_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: its key, its role and the subject it acts as (None for admin)."""

    key_id: str
    role: Role
    subject_id: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class _CachedKey:
    record: ApiKeyRecord
    expires_s: float
    verified: tuple[str, Principal] | None = None
    """The key last proven to match ``record`` (unrevoked), and its principal."""


class Authenticator:
    """Checks presented keys against stored records, trusting a verified record for
    ``ttl_s`` (revocations made through this process apply at once).

    Within that time a key already proven to match its record is recognised by comparing it
    with that key (constant time), without hashing it again."""

    def __init__(self, engine: Engine, *, ttl_s: float, clock_s: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._clock_s = clock_s
        self._cache: dict[str, _CachedKey] = {}

    async def authenticate(self, key: str | None) -> Principal:
        if not key:
            raise AuthenticationFailed(
                "api_key_missing", "An API key is required: send the header Authorization: Bearer <key>."
            )
        key_id = key_id_of(key)
        if key_id is None:
            raise _invalid_key()
        now_s = self._clock_s()
        cached = self._cache.get(key_id)
        if cached is not None and cached.expires_s > now_s:
            verified = cached.verified
            if verified is not None and _same_key(verified[0], key):
                return verified[1]
        else:
            loaded = await self._load(key_id)
            if loaded is None:
                raise _invalid_key()
            newer = self._cache.get(key_id)  # remembered while the store was read (a revoke)
            cached = newer if newer is not None and newer.expires_s > now_s else _CachedKey(loaded, now_s + self._ttl_s)
            self._put(key_id, cached)
        record = cached.record
        if not record.matches(key):
            raise _invalid_key()
        if record.revoked:
            raise AuthenticationFailed("api_key_revoked", "This API key has been revoked.")
        principal = Principal(record.id, record.role, record.subject_id)
        self._put(key_id, _CachedKey(record, cached.expires_s, (key, principal)))
        return principal

    def known(self, key: str) -> Principal | None:
        """The principal of ``key`` if it was verified within the TTL and its record still
        stands (compared in constant time; no store read, no hashing, nothing changed), else
        None: then ``authenticate`` decides."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        cached = self._cache.get(key_id)
        if cached is None or cached.expires_s <= self._clock_s():
            return None
        verified = cached.verified
        if verified is None or not _same_key(verified[0], key):
            return None
        return verified[1]

    async def _load(self, key_id: str) -> ApiKeyRecord | None:
        body = await run_in_threadpool(self._engine.store.read_document, API_KEY_KIND, key_id)
        if body is None:
            self._cache.pop(key_id, None)
            return None
        return ApiKeyRecord.from_json(body)

    def _put(self, key_id: str, entry: _CachedKey) -> None:
        if key_id not in self._cache and len(self._cache) >= KEY_CACHE_ENTRIES_MAX:
            self._cache.clear()
        self._cache[key_id] = entry

    def remember(self, record: ApiKeyRecord) -> None:
        """Use ``record`` as this key's newest state (after a revoke through this process)."""
        self._put(record.id, _CachedKey(record, self._clock_s() + self._ttl_s))


def _same_key(known: str, presented: str) -> bool:
    """Whether ``presented`` is ``known``, in time independent of where they differ."""
    return hmac.compare_digest(known.encode("utf-8", "surrogateescape"), presented.encode("utf-8", "surrogateescape"))


def _invalid_key() -> ApiError:
    return AuthenticationFailed("api_key_invalid", "The API key is not valid.")
