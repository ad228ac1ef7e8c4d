"""HTTP routes, one module per resource."""

from fastapi import APIRouter
from fastapi.routing import APIRoute

from micropay.api.routes import accounts, api_keys, ledgers, transfers

ROUTERS: tuple[APIRouter, ...] = (ledgers.router, accounts.router, transfers.router, api_keys.router)


def api_routes() -> tuple[APIRoute, ...]:
    """Every route of the API, flat."""
    return tuple(route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute))
