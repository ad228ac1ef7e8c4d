"""What the routes share: the engine, the settings, the key checker and the rate limiter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from micropay.api.authenticator import Authenticator
from micropay.api.coalesce import TransferCoalescer
from micropay.api.ratelimit import RateLimiter
from micropay.api.settings import Settings
from micropay.engine import Engine
from micropay.models.charge_batcher import ChargeBatcher
from micropay.settlement.rails import Rails


@dataclass(frozen=True, slots=True)
class Services:
    engine: Engine
    settings: Settings
    authenticator: Authenticator
    rate_limiter: RateLimiter
    routes: tuple[APIRoute, ...] = ()
    """The API's routes (FastAPI nests included routers; this is them flat)."""
    transfers: TransferCoalescer | None = None
    """Single transfers go to the engine through it (``POST /v1/transfers``)."""
    charges: ChargeBatcher | None = None
    """Charges go to the engine through it (``POST /v1/charges`` and its batch)."""
    rails: Rails = field(default_factory=Rails)
    """The outside networks money enters and leaves through (simulated card and bank by default)."""


def get_services(connection: HTTPConnection) -> Services:
    """The app's services (set by ``create_app``)."""
    return cast(Services, connection.app.state.services)


def get_engine(connection: HTTPConnection) -> Engine:
    return get_services(connection).engine
