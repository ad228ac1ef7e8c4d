"""Settings of the HTTP API: body size, rate limits per role, key cache, page sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["admin", "merchant", "payer", "publisher"]
ROLES: tuple[Role, ...] = ("admin", "merchant", "payer", "publisher")

BODY_BYTES_MAX = 5 * 2**20
"""Largest request body accepted (a full 8190-transfer batch fits with room to spare)."""

PAGE_LIMIT_DEFAULT = 20
PAGE_LIMIT_MAX = 1000

KEY_CACHE_TTL_S = 5.0
"""How long a verified API key is trusted without reading it again (bounds how late another
process sees a revocation; this process sees its own at once)."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket: ``burst`` requests at once, refilled at ``requests_per_s``."""

    requests_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if self.requests_per_s <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs requests_per_s > 0 and burst >= 1")


def default_rate_limits() -> dict[Role, RateLimit | None]:
    """Per role; None is unlimited. Generous: ordinary traffic never meets them."""
    return {
        "admin": None,
        "merchant": RateLimit(requests_per_s=1000.0, burst=2000),
        "payer": RateLimit(requests_per_s=200.0, burst=400),
        "publisher": RateLimit(requests_per_s=200.0, burst=400),
    }


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the API factory can be told; the defaults suit a fresh install."""

    body_bytes_max: int = BODY_BYTES_MAX
    rate_limits: Mapping[Role, RateLimit | None] = field(default_factory=default_rate_limits)
    key_cache_ttl_s: float = KEY_CACHE_TTL_S
    title: str = "Micropay API"
    telemetry: bool = False
    """FastAPI's OpenTelemetry instrumentation (needs an OpenTelemetry SDK configured). Off, it
    costs nothing per request; on, every request goes through the whole middleware stack."""
    settle_interval_s: float | None = 1.0
    """Seconds between background settler ticks while the server runs; None: no background thread."""
    direct_lane: bool = True
    """Plain single transfers taken by the HTTP protocol without an ASGI task (``micropay serve``
    only; see ``micropay.api.direct``). Off, every request goes through the ASGI app."""

    def rate_limit(self, role: Role) -> RateLimit | None:
        return self.rate_limits.get(role)
