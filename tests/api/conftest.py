"""Fixtures for the HTTP API tests: a real store per test, the ASGI app, keys."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from micropay.api import Settings, create_app
from micropay.api.keys import issue_key
from micropay.api.settings import Role
from micropay.engine import Engine
from micropay.store import open_store


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh SQLite file; or, with MICROPAY_TEST_STORE=postgresql, a fresh PostgreSQL database
    (the whole API suite then runs against the multi-writer engine)."""
    if os.environ.get("MICROPAY_TEST_STORE") == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path / 'api.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    with Engine(open_store(db_url)) as engine:
        yield engine


@pytest.fixture
def settings() -> Settings:
    return Settings()


@pytest.fixture
def app(engine: Engine, settings: Settings) -> Any:
    return create_app(engine, settings=settings)


@pytest.fixture
def make_key(engine: Engine) -> Callable[..., str]:
    """Issue a key for a role (and subject) straight through the engine."""

    def make(role: Role = "admin", subject_id: str | None = None) -> str:
        if role != "admin" and subject_id is None:
            subject_id = f"{role}-1"
        return issue_key(engine, role, subject_id)[1]

    return make


@pytest.fixture
def admin_key(make_key: Callable[..., str]) -> str:
    return make_key("admin")


@pytest.fixture
def anon(app: Any) -> Iterator[TestClient]:
    """A client that sends no key."""
    with TestClient(app) as client:
        yield client


@pytest.fixture
def admin(app: Any, admin_key: str) -> Iterator[TestClient]:
    """A client that sends an admin key."""
    with TestClient(app, headers={"Authorization": f"Bearer {admin_key}"}) as client:
        yield client


@pytest.fixture
def usd(admin: TestClient) -> Callable[..., dict[str, Any]]:
    """Makes the USD ledger, then an account on it per call."""
    assert admin.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code in (200, 201)

    def account(account_id: str, *, flags: list[str] | None = None, credit_limit: int = 0) -> dict[str, Any]:
        response = admin.post(
            "/v1/accounts",
            json={"id": account_id, "ledger": "USD", "flags": flags or [], "credit_limit": credit_limit},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    return account
