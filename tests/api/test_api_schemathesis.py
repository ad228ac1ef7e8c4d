"""Schemathesis against our own /openapi.json: no 500s, every answer as documented."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from micropay.api import create_app
from micropay.engine import Engine
from micropay.store import open_store

MAX_EXAMPLES = 25
"""Examples per operation: enough to sweep types and bounds, small enough for the default run."""


class _CurrentApp:
    """An ASGI app that forwards to the app of the running test (the schema is built at import)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def _load_schema(current: _CurrentApp) -> Any:
    with tempfile.TemporaryDirectory() as directory, Engine(open_store(str(Path(directory) / "schema.db"))) as engine:
        current.app = create_app(engine)
        return schemathesis.openapi.from_asgi("/openapi.json", current)


CURRENT_APP = _CurrentApp()
schema = _load_schema(CURRENT_APP)


@pytest.fixture(autouse=True)
def _route_to_this_tests_app(app: Any) -> Iterator[None]:
    CURRENT_APP.app = app
    yield


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_conformance(case: Case[Any], admin_key: str) -> None:
    # StrictInt refuses 0.0, which JSON Schema counts as an integer: skip positive_data_acceptance.
    # Every case is sent with a valid admin key, so a negative case whose mutation was removing
    # that header is no longer negative: skip negative_data_rejection (malformed bodies and
    # unknown parameters are checked one by one in test_api_validation.py).
    case.call_and_validate(
        headers={"Authorization": f"Bearer {admin_key}"},
        excluded_checks=[positive_data_acceptance, negative_data_rejection],
    )
