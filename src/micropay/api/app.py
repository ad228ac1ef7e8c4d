"""The HTTP API application factory."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from micropay import __version__
from micropay.api.auth import Authenticator
from micropay.api.body_limit import BodyLimitMiddleware
from micropay.api.errors import install_error_handlers
from micropay.api.ratelimit import RateLimiter
from micropay.api.routes import ROUTERS, api_routes
from micropay.api.serialise import JsonResponse
from micropay.api.services import Services
from micropay.api.settings import Settings
from micropay.engine import Engine

_DESCRIPTION = """Micropayments on one double-entry ledger.

Authenticate with `Authorization: Bearer <key>`. Amounts are integers in the ledger's minor unit.
Errors answer `{"error": {type, code, message, param}}`. Lists take `limit` and `starting_after`
and answer `{data, has_more}`. Every create takes an optional `id`, its idempotency key.
"""

_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")


class MicropayApi(FastAPI):
    """FastAPI whose OpenAPI document shows our 400 error shape instead of FastAPI's 422 one."""

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
    """The API over ``engine``. The caller owns the engine (and closes it after the server stops)."""
    settings = settings or Settings()
    app = MicropayApi(
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
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, body_bytes_max=settings.body_bytes_max)
    return app
