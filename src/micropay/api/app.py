"""The HTTP API application factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp, Receive, Scope, Send

from micropay import __version__
from micropay.api.authenticator import Authenticator
from micropay.api.background import install_settler
from micropay.api.body_limit import BodyLimitMiddleware
from micropay.api.coalesce import TransferCoalescer
from micropay.api.direct import DirectLanes, direct_lanes
from micropay.api.errors import install_error_handlers
from micropay.api.lean import LeanDispatch, lean_endpoints, lean_path
from micropay.api.ratelimit import RateLimiter
from micropay.api.routes import ROUTERS, api_routes
from micropay.api.serialise import JsonResponse
from micropay.api.services import Services
from micropay.api.settings import Settings
from micropay.engine import Engine
from micropay.models.charge_batcher import ChargeBatcher

_DESCRIPTION = """Micropayments on one double-entry ledger.

Authenticate with `Authorization: Bearer <key>`. Amounts are integers in the ledger's minor unit.
Errors answer `{"error": {type, code, message, param}}`. Lists take `limit` and `starting_after`
and answer `{data, has_more}`. Every create takes an optional `id`, its idempotency key.
"""

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")
_FRONT_DOOR_MIDDLEWARE = (BodyLimitMiddleware, LeanDispatch)
"""The middleware the front door knows how to stand in for (see ``MicropayApi``)."""
_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class MicropayApi(FastAPI):
    """FastAPI whose OpenAPI document shows our 400 error shape instead of FastAPI's 422 one,
    and whose lean routes (``micropay.api.lean``) are served from the front door.

    The front door sends a request for a lean route through our own middleware (the body
    limit) straight to the route, past FastAPI's outer layers and the router. It opens only
    while those layers would add nothing: no middleware but ours, telemetry off, no root path.
    Otherwise lean routes are reached through the whole stack (``LeanDispatch``, innermost).
    """

    front_door_enabled: bool = True
    _front_door: dict[str, ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        front_door = self._front_door
        if front_door is not None:
            path = lean_path(scope)
            endpoint = None if path is None else front_door.get(path)
            if endpoint is not None:
                scope["app"] = self
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        self._front_door = self._build_front_door()
        return stack

    def _front_door_opens(self) -> bool:
        """Whether the layers around a lean route would add nothing but our own middleware."""
        if not self.front_door_enabled or self.root_path:
            return False
        classes: list[object] = [m.cls for m in self.user_middleware]
        return classes.count(LeanDispatch) == 1 and all(cls in _FRONT_DOOR_MIDDLEWARE for cls in classes)

    def direct_lanes(self) -> DirectLanes | None:
        """The direct lanes for single transfers and charges (``micropay.api.direct``), for the
        HTTP protocol to use; None where the front door would not open (other middleware would
        see every request) or the settings turn them off."""
        services: Services = self.state.services
        if not services.settings.direct_lane or not self._front_door_opens():
            return None
        return direct_lanes(services, self.exception_handlers)

    def _build_front_door(self) -> dict[str, ASGIApp] | None:
        if not self._front_door_opens():
            return None
        middleware: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
            (m.cls, m.args, m.kwargs) for m in self.user_middleware
        ]
        dispatch = [kwargs for cls, _, kwargs in middleware if cls is LeanDispatch]
        endpoints: dict[str, ASGIApp] = {}
        for path, endpoint in lean_endpoints(**dispatch[0]).items():
            wrapped: ASGIApp = endpoint
            for cls, args, kwargs in reversed(middleware):
                if cls is not LeanDispatch:
                    wrapped = cls(wrapped, *args, **kwargs)
            endpoints[path] = wrapped
        return endpoints

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema:
            return self.openapi_schema
        schema = super().openapi()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.get("responses", {})
                validation = responses.get("422", {})
                ref = str(validation.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", ""))
                if ref.endswith("/HTTPValidationError"):
                    del responses["422"]  # request validation errors answer 400 here
        components = schema.get("components", {}).get("schemas", {})
        for name in _FASTAPI_VALIDATION_SCHEMAS:
            components.pop(name, None)
        self.openapi_schema = schema
        return schema


def create_app(engine: Engine, *, settings: Settings | None = None) -> FastAPI:
    """The API over ``engine``. The caller owns the engine (and closes it after the server stops).

    Add routes with ``app.include_router``; middleware added with ``app.add_middleware`` sees
    every request (lean routes then go through the whole stack, a little slower).
    """
    settings = settings or Settings()
    app = MicropayApi(
        telemetry=None if settings.telemetry else _TELEMETRY_OFF,
        title=settings.title,
        version=__version__,
        description=_DESCRIPTION,
        default_response_class=JsonResponse,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.services = Services(
        engine=engine,
        settings=settings,
        authenticator=Authenticator(engine, ttl_s=settings.key_cache_ttl_s),
        rate_limiter=RateLimiter(),
        routes=api_routes(),
        transfers=TransferCoalescer(engine),
        charges=ChargeBatcher(engine),
    )
    install_error_handlers(app)
    install_settler(app, settings.settle_interval_s)
    for router in ROUTERS:
        app.include_router(router)
    # Innermost first: the lean dispatcher sees requests after the body limit.
    app.add_middleware(LeanDispatch, routes=app.state.services.routes, exception_handlers=app.exception_handlers)
    app.add_middleware(BodyLimitMiddleware, body_bytes_max=settings.body_bytes_max)
    return app
