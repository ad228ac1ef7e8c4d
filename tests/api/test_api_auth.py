"""Authentication, roles and API keys: every route refuses a missing key (401) and a
non-admin key (403, or 404 for another subject's object)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from api_support import assert_error
from fastapi.routing import APIRoute
from starlette.testclient import TestClient

from micropay.api import RateLimit, Settings
from micropay.api.auth import Principal, check_owner
from micropay.api.keys import API_KEY_KIND, hash_key
from micropay.api.routes import api_routes
from micropay.engine import Engine
from micropay.errors import NotFound


def _concrete(path: str) -> str:
    """A route's path with its path parameters filled with a dummy id."""
    return re.sub(r"\{[^}]+\}", "some-id", path)


def _every_route() -> list[tuple[str, str]]:
    """(method, concrete path) for every API route, path parameters filled with a dummy id."""
    calls: list[tuple[str, str]] = []
    for route in api_routes():
        assert isinstance(route, APIRoute)
        calls.extend((method, _concrete(route.path)) for method in sorted(route.methods or ()))
    return calls


ROUTES = _every_route()

OTHER_ROLES = ("merchant", "payer", "publisher")

ROLES_BEYOND_ADMIN: dict[tuple[str, str], frozenset[str]] = {
    # Payers, top-ups, merchants, charges, refunds, vouchers, passes, statements.
    ("GET", "/v1/payers"): frozenset({"payer"}),
    ("GET", "/v1/payers/{payer_id}"): frozenset({"payer"}),
    ("POST", "/v1/payers/{payer_id}/topups"): frozenset({"payer"}),
    ("GET", "/v1/topups"): frozenset({"payer"}),
    ("GET", "/v1/topups/{topup_id}"): frozenset({"payer"}),
    ("GET", "/v1/merchants"): frozenset({"merchant"}),
    ("GET", "/v1/merchants/{merchant_id}"): frozenset({"merchant"}),
    ("POST", "/v1/charges"): frozenset({"merchant", "payer"}),
    ("POST", "/v1/charges/batch"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/charges"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/charges/{charge_id}"): frozenset({"merchant", "payer"}),
    ("POST", "/v1/charges/{charge_id}/refunds"): frozenset({"merchant"}),
    ("GET", "/v1/charges/{charge_id}/refunds"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/refunds/{refund_id}"): frozenset({"merchant", "payer"}),
    ("POST", "/v1/payers/{payer_id}/vouchers/redeem"): frozenset({"payer"}),
    ("POST", "/v1/passes"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/passes"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/passes/{pass_id}"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/statements"): frozenset({"payer"}),
    ("GET", "/v1/statements/{statement_id}"): frozenset({"payer"}),
    ("POST", "/v1/statements/{statement_id}/settle"): frozenset({"payer"}),
    # Collaborative pools: publishers see themselves and their earnings; payers join and read.
    ("GET", "/v1/publishers"): frozenset({"publisher"}),
    ("GET", "/v1/publishers/{publisher_id}"): frozenset({"publisher"}),
    ("GET", "/v1/publishers/{publisher_id}/earnings"): frozenset({"publisher"}),
    ("GET", "/v1/sites/{site_id}"): frozenset({"publisher"}),
    ("GET", "/v1/content/{content_id}"): frozenset({"publisher"}),
    ("GET", "/v1/pools"): frozenset({"payer", "publisher"}),
    ("GET", "/v1/pools/{pool_id}"): frozenset({"payer", "publisher"}),
    ("POST", "/v1/pools/{pool_id}/members"): frozenset({"payer"}),
    ("GET", "/v1/pools/{pool_id}/members"): frozenset({"payer"}),
    ("POST", "/v1/reads"): frozenset({"payer"}),
    ("GET", "/v1/reads"): frozenset({"payer"}),
    ("GET", "/v1/reads/{read_id}"): frozenset({"payer"}),
    # Pay-as-you-go metering: merchants keep plans; payers send and read their usage.
    ("POST", "/v1/plans"): frozenset({"merchant"}),
    ("GET", "/v1/plans"): frozenset({"merchant"}),
    ("GET", "/v1/plans/{plan_id}"): frozenset({"merchant"}),
    ("POST", "/v1/usage_events"): frozenset({"payer"}),
    ("POST", "/v1/usage_events/batch"): frozenset({"payer"}),
    ("GET", "/v1/usage_events"): frozenset({"payer"}),
    ("GET", "/v1/usage_events/{event_id}"): frozenset({"merchant", "payer"}),
    ("GET", "/v1/payers/{payer_id}/usage"): frozenset({"merchant", "payer"}),
}
"""Which roles besides admin may call a route (method, path template); every other route is
admin-only. Add a row with each route that admits another role."""

_ALLOWED = {(method, _concrete(path)): roles for (method, path), roles in ROLES_BEYOND_ADMIN.items()}


def test_the_role_table_names_real_routes() -> None:
    templates = {(method, route.path) for route in api_routes() for method in route.methods or ()}
    assert set(ROLES_BEYOND_ADMIN) <= templates, set(ROLES_BEYOND_ADMIN) - templates
    assert all(roles and roles <= set(OTHER_ROLES) for roles in ROLES_BEYOND_ADMIN.values())


def test_the_walk_covers_the_ledger_core_and_keys() -> None:
    paths = {path for _, path in ROUTES}
    for expected in ("/v1/ledgers", "/v1/accounts", "/v1/transfers", "/v1/transfers/batch", "/v1/api_keys"):
        assert expected in paths
    assert len(ROUTES) >= 15


def _call(client: TestClient, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    body = {} if method in ("POST", "PATCH", "PUT") else None
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_key(anon: TestClient, method: str, path: str) -> None:
    error = assert_error(_call(anon, method, path), 401, "authentication", "api_key_missing")
    assert error["param"] is None
    assert_error(_call(anon, method, path, {"Authorization": "Bearer mpk_nope.nope"}), 401, "authentication")
    assert_error(_call(anon, method, path, {"Authorization": "Basic dXNlcjpwYXNz"}), 401, "authentication")


@pytest.mark.parametrize("role", OTHER_ROLES)
def test_every_route_refuses_other_roles(anon: TestClient, make_key: Callable[..., str], role: str) -> None:
    """A role a route does not admit gets 403; one it admits gets past the role check (its
    answer about the dummy id or the empty body is then 200, 400, 404 or 422, never 401/403)."""
    headers = {"Authorization": f"Bearer {make_key(role)}"}
    for method, path in ROUTES:
        response = _call(anon, method, path, headers)
        if role in _ALLOWED.get((method, path), frozenset()):
            assert response.status_code in (200, 400, 404, 422), (role, method, path, response.text)
            if response.status_code != 200:
                assert_error(response, response.status_code, response.json()["error"]["type"])
        else:
            assert_error(response, 403, "permission", "role_not_allowed")


def test_create_key_shows_it_once_and_stores_only_its_hash(admin: TestClient, engine: Engine) -> None:
    response = admin.post("/v1/api_keys", json={"role": "payer", "subject_id": "payer-7"})
    assert response.status_code == 201, response.text
    created = response.json()
    key = created["key"]
    assert set(created) >= {"id", "key", "role", "subject_id", "prefix", "created_at"}
    assert created["role"] == "payer" and created["subject_id"] == "payer-7"
    assert key.startswith(created["prefix"]) and len(key) > 40
    stored = engine.store.read_document(API_KEY_KIND, created["id"])
    assert stored is not None and key.encode() not in stored and hash_key(key).encode() in stored

    listed = admin.get("/v1/api_keys").json()
    assert all(item["key"] is None for item in listed["data"])
    assert created["id"] in {item["id"] for item in listed["data"]}
    one = admin.get(f"/v1/api_keys/{created['id']}").json()
    assert one["key"] is None and one["prefix"] == created["prefix"]

    # The new payer key authenticates (and is refused admin endpoints with 403).
    assert_error(admin.get("/v1/ledgers", headers={"Authorization": f"Bearer {key}"}), 403, "permission")


def test_key_id_replay_and_conflict(admin: TestClient) -> None:
    body = {"id": "ops-key", "role": "merchant", "subject_id": "m-1"}
    first = admin.post("/v1/api_keys", json=body)
    assert first.status_code == 201 and first.json()["key"]
    again = admin.post("/v1/api_keys", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["key"] is None and again.json()["id"] == "ops-key"
    assert_error(admin.post("/v1/api_keys", json={**body, "subject_id": "m-2"}), 409, "conflict")


def test_non_admin_key_needs_a_subject(admin: TestClient) -> None:
    error = assert_error(admin.post("/v1/api_keys", json={"role": "payer"}), 400, "invalid_request")
    assert error["param"] == "subject_id"
    assert_error(admin.post("/v1/api_keys", json={"role": "root"}), 400, "invalid_request")


def test_revoked_key_stops_at_once(admin: TestClient, anon: TestClient) -> None:
    created = admin.post("/v1/api_keys", json={"role": "admin"}).json()
    headers = {"Authorization": f"Bearer {created['key']}"}
    assert anon.get("/v1/ledgers", headers=headers).status_code == 200
    revoked = admin.delete(f"/v1/api_keys/{created['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert_error(anon.get("/v1/ledgers", headers=headers), 401, "authentication", "api_key_revoked")
    assert admin.delete(f"/v1/api_keys/{created['id']}").json()["revoked_at"] == revoked.json()["revoked_at"]
    assert_error(admin.delete("/v1/api_keys/key_missing"), 404, "not_found", "api_key_not_found")


def test_tampered_key_is_refused(anon: TestClient, admin_key: str) -> None:
    tampered = admin_key[:-1] + ("A" if admin_key[-1] != "A" else "B")
    assert_error(anon.get("/v1/ledgers", headers={"Authorization": f"Bearer {tampered}"}), 401, "authentication")
    assert anon.get("/v1/ledgers", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200


class TestRateLimit:
    @pytest.fixture
    def settings(self) -> Settings:
        limits = {"admin": None, "merchant": None, "payer": RateLimit(requests_per_s=0.5, burst=3), "publisher": None}
        return Settings(rate_limits=limits)  # type: ignore[arg-type]

    def test_payer_key_gets_429_with_retry_after(self, anon: TestClient, make_key: Callable[..., str]) -> None:
        headers = {"Authorization": f"Bearer {make_key('payer')}"}
        statuses = [anon.get("/v1/ledgers", headers=headers).status_code for _ in range(3)]
        assert statuses == [403, 403, 403]
        response = anon.get("/v1/ledgers", headers=headers)
        assert_error(response, 429, "rate_limited", "rate_limited")
        assert int(response.headers["Retry-After"]) >= 1

    def test_admin_is_unlimited_by_default(self, admin: TestClient) -> None:
        assert all(admin.get("/v1/ledgers").status_code == 200 for _ in range(50))

    def test_another_key_has_its_own_bucket(self, anon: TestClient, make_key: Callable[..., str]) -> None:
        first = {"Authorization": f"Bearer {make_key('payer', 'p-1')}"}
        second = {"Authorization": f"Bearer {make_key('payer', 'p-2')}"}
        for _ in range(3):
            anon.get("/v1/ledgers", headers=first)
        assert anon.get("/v1/ledgers", headers=first).status_code == 429
        assert anon.get("/v1/ledgers", headers=second).status_code == 403


def test_check_owner_hides_other_subjects_objects() -> None:
    not_found = NotFound("charge_not_found", "No charge ch_1.", "charge_id")
    check_owner(Principal("k1", "admin", None), "m-1", not_found)
    check_owner(Principal("k2", "merchant", "m-1"), "m-1", not_found)
    with pytest.raises(NotFound):
        check_owner(Principal("k3", "merchant", "m-2"), "m-1", not_found)
    with pytest.raises(NotFound):
        check_owner(Principal("k4", "payer", "m-1"), None, not_found)


def test_openapi_documents_our_error_shape(anon: TestClient) -> None:
    document = anon.get("/openapi.json").json()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "400" in operation["responses"] and "401" in operation["responses"], (method, path)
            assert operation["security"] == [{"ApiKey": []}]
