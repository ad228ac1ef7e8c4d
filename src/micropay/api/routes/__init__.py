"""HTTP routes, one module per resource."""

from fastapi import APIRouter
from fastapi.routing import APIRoute

from micropay.api.routes import (
    accounts,
    api_keys,
    charges,
    ledgers,
    merchants,
    passes,
    payers,
    plans,
    pools,
    publishers,
    statements,
    topups,
    transfers,
    usage,
    vouchers,
)

ROUTERS: tuple[APIRouter, ...] = (ledgers.router, accounts.router, transfers.router, api_keys.router)
ROUTERS += (payers.router, topups.router, merchants.router, charges.router, vouchers.router, passes.router)
ROUTERS += (statements.router,)
ROUTERS += (publishers.router, pools.router)
ROUTERS += (plans.router, usage.router)


def api_routes() -> tuple[APIRoute, ...]:
    """Every route of the API, flat."""
    return tuple(route for router in ROUTERS for route in router.routes if isinstance(route, APIRoute))
