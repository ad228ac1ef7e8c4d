"""Pay-as-you-go metering over HTTP: plans, usage events (one and in batches), a payer's usage,
and closing a plan's period; who may call what; prices as decimal strings; floats refused."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from api_support import assert_error
from starlette.testclient import TestClient

from micropay.engine import Engine
from micropay.models import payments
from micropay.models.payments import MerchantRequest, PayerRequest, TopupRequest
from micropay.models.rules import period_key
from micropay.settlement.rails import Rails

PER_UNIT = {"model": "per_unit", "unit_price": "0.0004"}
GRADUATED = {
    "model": "graduated",
    "tiers": [
        {"up_to": 100, "unit_price": "0.5", "flat": "10"},
        {"up_to": 1000, "unit_price": "0.25", "flat": "5"},
        {"up_to": None, "unit_price": "0.1"},
    ],
}


def _last_month() -> tuple[str, str]:
    """A moment in the previous UTC month (RFC 3339) and that month (YYYY-MM)."""
    first = dt.datetime.now(dt.UTC).replace(day=1, hour=12, minute=0, second=0, microsecond=0)
    moment = first - dt.timedelta(days=10)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment.strftime("%Y-%m")


class Shop:
    """Merchants ``acme`` and ``rival``; payers ``alice`` (100.00 in her wallet) and ``bob``
    (nothing), made straight through the engine; a client per role."""

    def __init__(self, engine: Engine, app: Any, make_key: Callable[..., str], admin: TestClient) -> None:
        rails = Rails()
        engine.create_ledger("USD", 2)
        for merchant in ("acme", "rival"):
            engine.call(payments.create_merchant(MerchantRequest(merchant, "USD"), rails))
        for payer in ("alice", "bob"):
            engine.call(payments.create_payer(PayerRequest(payer, "USD", "prepay"), rails))
        engine.call(payments.topup(TopupRequest("fund-alice", "alice", 10_000, "card"), rails))
        self.engine = engine
        self.admin = admin
        self.clients: list[TestClient] = []
        self.alice = self._client(app, make_key("payer", "alice"))
        self.bob = self._client(app, make_key("payer", "bob"))
        self.acme = self._client(app, make_key("merchant", "acme"))
        self.rival = self._client(app, make_key("merchant", "rival"))
        self.publisher = self._client(app, make_key("publisher", "pub-1"))

    def _client(self, app: Any, key: str) -> TestClient:
        client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
        self.clients.append(client)
        return client

    def plan(self, plan_id: str, pricing: dict[str, Any], **extra: Any) -> dict[str, Any]:
        body = {"id": plan_id, "merchant_id": "acme", "metric": "api_calls", "pricing": pricing, **extra}
        response = self.admin.post("/v1/plans", json=body)
        assert response.status_code == 201, response.text
        plan: dict[str, Any] = response.json()
        return plan

    def event(self, client: TestClient, **fields: Any) -> Any:
        return client.post("/v1/usage_events", json={"payer_id": "alice", "plan_id": "calls", **fields})

    def usage(self, client: TestClient, payer_id: str, plan_id: str, period: str | None = None) -> Any:
        query = f"plan_id={plan_id}" + (f"&period={period}" if period else "")
        return client.get(f"/v1/payers/{payer_id}/usage?{query}")

    def wallet(self, payer_id: str) -> int:
        account = self.engine.account(f"payer:{payer_id}:wallet:USD")
        assert account is not None
        return account.balance


@pytest.fixture
def shop(engine: Engine, app: Any, make_key: Callable[..., str], admin: TestClient) -> Any:
    made = Shop(engine, app, make_key, admin)
    yield made
    for client in made.clients:
        client.close()


# ----------------------------------------------------------------- plans
def test_create_read_and_list_plans(shop: Shop) -> None:
    plan = shop.plan("calls", {"model": "per_unit", "unit_price": "0.00040"}, minimum="5.0", metadata={"tier": "a"})
    assert plan["pricing"] == {"model": "per_unit", "unit_price": "0.0004", "minimum": "5"}
    assert (plan["merchant_id"], plan["ledger"], plan["minimum"], plan["metadata"]) == (
        "acme",
        "USD",
        "5",
        {"tier": "a"},
    )
    assert plan["closed_periods"] == [] and plan["created_at"].endswith("Z")
    assert shop.admin.get("/v1/plans/calls").json() == plan
    assert shop.acme.get("/v1/plans/calls").json() == plan
    assert_error(shop.rival.get("/v1/plans/calls"), 404, "not_found", "plan_not_found")
    assert_error(shop.alice.get("/v1/plans/calls"), 403, "permission")
    made = shop.acme.post("/v1/plans", json={"id": "tiers", "metric": "gb", "pricing": GRADUATED})
    assert made.status_code == 201, made.text
    assert made.json()["merchant_id"] == "acme"
    assert made.json()["pricing"]["tiers"][2] == {"up_to": None, "unit_price": "0.1", "flat": "0"}
    shop.rival.post("/v1/plans", json={"id": "theirs", "metric": "m", "pricing": PER_UNIT})
    assert [p["id"] for p in shop.acme.get("/v1/plans").json()["data"]] == ["calls", "tiers"]
    assert [p["id"] for p in shop.admin.get("/v1/plans").json()["data"]] == ["calls", "theirs", "tiers"]
    assert [p["id"] for p in shop.admin.get("/v1/plans?merchant_id=rival").json()["data"]] == ["theirs"]
    assert_error(shop.acme.get("/v1/plans?merchant_id=rival"), 404, "not_found", "merchant_not_found")
    assert_error(shop.admin.get("/v1/plans/nope"), 404, "not_found", "plan_not_found")


def test_plan_replay_and_conflict(shop: Shop) -> None:
    body = {"id": "calls", "merchant_id": "acme", "metric": "api_calls", "pricing": PER_UNIT}
    first = shop.admin.post("/v1/plans", json=body)
    again = shop.admin.post("/v1/plans", json={**body, "pricing": {"model": "per_unit", "unit_price": "0.000400"}})
    assert (first.status_code, again.status_code, again.headers["Idempotent-Replayed"]) == (201, 200, "true")
    assert again.json() == first.json()
    assert_error(shop.admin.post("/v1/plans", json={**body, "metric": "other"}), 409, "conflict")
    assert_error(shop.admin.post("/v1/plans", json={**body, "minimum": "1"}), 409, "conflict")


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"pricing": {"model": "per_unit", "unit_price": 0.0004}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "per_unit", "unit_price": "1e3"}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "per_unit", "unit_price": " 1"}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "per_unit", "unit_price": "0.0000000000001"}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "per_unit"}}, 400, "parameter_missing"),
        ({"pricing": {"model": "flat", "unit_price": "1"}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "per_unit", "unit_price": "1", "tiers": []}}, 400, "parameter_unknown"),
        ({"pricing": {"model": "package", "package_size": 10.0, "package_price": "1"}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "package", "package_size": 0, "package_price": "1"}}, 400, "parameter_invalid"),
        ({"pricing": {"model": "graduated", "tiers": [{"up_to": 5.0, "unit_price": "1"}]}}, 400, "parameter_invalid"),
        ({"pricing": {**PER_UNIT, "minimum": "2"}, "minimum": "3"}, 400, "parameter_invalid"),
        ({"merchant_id": None}, 400, "parameter_missing"),
        ({"metric": ""}, 400, "parameter_invalid"),
        ({"pricing": {"model": "per_unit", "unit_price": "1000000000001"}}, 422, "invalid_price"),
        (
            {
                "pricing": {
                    "model": "graduated",
                    "tiers": [{"up_to": 10, "unit_price": "1"}, {"up_to": 5, "unit_price": "1"}],
                }
            },
            422,
            "invalid_pricing",
        ),
        ({"merchant_id": "nobody"}, 404, "merchant_not_found"),
    ],
)
def test_bad_plans_are_refused(shop: Shop, change: dict[str, Any], status: int, code: str) -> None:
    body = {"id": "p", "merchant_id": "acme", "metric": "api_calls", "pricing": PER_UNIT, **change}
    body = {key: value for key, value in body.items() if value is not None}
    error_type = {400: "invalid_request", 404: "not_found", 422: "invalid_request"}[status]
    assert_error(shop.admin.post("/v1/plans", json=body), status, error_type, code)


def test_a_merchant_makes_plans_only_for_itself(shop: Shop) -> None:
    body = {"merchant_id": "rival", "metric": "m", "pricing": PER_UNIT}
    assert_error(shop.acme.post("/v1/plans", json=body), 404, "not_found", "merchant_not_found")
    assert_error(shop.alice.post("/v1/plans", json=body), 403, "permission")


# ----------------------------------------------------------------- one event
def test_events_are_rated_and_charged_at_once(shop: Shop) -> None:
    shop.plan("calls", PER_UNIT)
    amounts = []
    for index, quantity in enumerate([1_000, 1_000, 1_000, 2_000]):
        response = shop.event(shop.alice, id=f"e{index}", quantity=quantity)
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["status"], body["decline_code"]) == ("charged", None)
        assert set(body) >= {"id", "status", "amount", "decline_code", "period", "timestamp", "created_at"}
        amounts.append(body["amount"])
    assert amounts == [0, 0, 1, 1]  # 0.4, 0.8, 1.2, 2.0 cents
    usage = shop.usage(shop.alice, "alice", "calls").json()
    assert (usage["quantity"], usage["amount"]) == (5_000, 2)
    assert shop.wallet("alice") == 10_000 - 2


def test_a_declined_event_is_created_and_charges_nothing(shop: Shop) -> None:
    shop.plan("dear", {"model": "per_unit", "unit_price": "3"})
    response = shop.bob.post("/v1/usage_events", json={"id": "b1", "payer_id": "bob", "plan_id": "dear", "quantity": 2})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["amount"], body["decline_code"]) == ("declined", 0, "insufficient_funds")
    assert shop.usage(shop.bob, "bob", "dear").json()["quantity"] == 0
    assert shop.bob.get("/v1/usage_events/b1").json() == body


def test_event_replay_and_conflict(shop: Shop) -> None:
    shop.plan("calls", {"model": "per_unit", "unit_price": "0.5"})
    body = {"id": "e1", "quantity": 3, "timestamp": "2026-01-01T00:00:00Z"}
    del body["timestamp"]
    first = shop.event(shop.alice, **body)
    again = shop.event(shop.alice, **body)
    assert (first.status_code, again.status_code, again.headers["Idempotent-Replayed"]) == (201, 200, "true")
    assert again.json() == first.json() and first.json()["amount"] == 1
    assert shop.wallet("alice") == 10_000 - 1
    assert_error(shop.event(shop.alice, id="e1", quantity=4), 409, "conflict", "exists_with_different_fields")


def test_who_may_send_and_see_events(shop: Shop) -> None:
    shop.plan("calls", PER_UNIT)
    assert_error(shop.event(shop.bob, quantity=1), 404, "not_found", "payer_not_found")
    assert_error(shop.event(shop.acme, quantity=1), 403, "permission")
    assert_error(shop.event(shop.publisher, quantity=1), 403, "permission")
    made = shop.event(shop.admin, id="e1", quantity=1).json()
    assert shop.alice.get("/v1/usage_events/e1").json() == made
    assert shop.acme.get("/v1/usage_events/e1").json() == made  # the plan's merchant
    assert_error(shop.bob.get("/v1/usage_events/e1"), 404, "not_found", "usage_event_not_found")
    assert_error(shop.rival.get("/v1/usage_events/e1"), 404, "not_found", "usage_event_not_found")
    assert_error(shop.admin.get("/v1/usage_events/nope"), 404, "not_found", "usage_event_not_found")
    shop.event(shop.alice, id="e2", quantity=1)
    assert [e["id"] for e in shop.alice.get("/v1/usage_events").json()["data"]] == ["e1", "e2"]
    assert shop.bob.get("/v1/usage_events").json() == {"data": [], "has_more": False}
    assert [e["id"] for e in shop.admin.get("/v1/usage_events?limit=1").json()["data"]] == ["e1"]
    assert [e["id"] for e in shop.admin.get("/v1/usage_events?payer_id=alice&starting_after=e1").json()["data"]] == [
        "e2"
    ]
    assert_error(shop.bob.get("/v1/usage_events?payer_id=alice"), 404, "not_found", "payer_not_found")


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"quantity": 1.0}, 400, "parameter_invalid"),
        ({"quantity": 2.5}, 400, "parameter_invalid"),
        ({"quantity": "1"}, 400, "parameter_invalid"),
        ({"quantity": True}, 400, "parameter_invalid"),
        ({"quantity": 10**16}, 400, "parameter_invalid"),
        ({}, 400, "parameter_missing"),
        ({"quantity": 1, "timestamp": "yesterday"}, 400, "parameter_invalid"),
        ({"quantity": 1, "timestamp": "2026-03-01T00:00:00"}, 400, "parameter_invalid"),
        ({"quantity": 1, "extra": 1}, 400, "parameter_unknown"),
        ({"quantity": 0}, 422, "invalid_quantity"),
        ({"quantity": -1}, 422, "invalid_quantity"),
        ({"quantity": 1, "timestamp": "2100-01-01T00:00:00Z"}, 422, "timestamp_in_future"),
        ({"quantity": 1, "plan_id": "nope"}, 404, "plan_not_found"),
    ],
)
def test_bad_events_are_refused(shop: Shop, fields: dict[str, Any], status: int, code: str) -> None:
    shop.plan("calls", PER_UNIT)
    error_type = {400: "invalid_request", 404: "not_found", 422: "invalid_request"}[status]
    assert_error(shop.event(shop.admin, **fields), status, error_type, code)
    assert shop.wallet("alice") == 10_000


# ----------------------------------------------------------------- batches
def test_a_batch_answers_each_event_on_its_own(shop: Shop) -> None:
    shop.plan("calls", {"model": "per_unit", "unit_price": "0.5"})
    shop.plan("dear", {"model": "per_unit", "unit_price": "20000"})
    events = [
        {"id": "a", "payer_id": "alice", "plan_id": "calls", "quantity": 3},
        {"id": "a", "payer_id": "alice", "plan_id": "calls", "quantity": 3},
        {"id": "a", "payer_id": "alice", "plan_id": "calls", "quantity": 4},
        {"id": "b", "payer_id": "alice", "plan_id": "dear", "quantity": 1},
        {"id": "c", "payer_id": "alice", "plan_id": "nope", "quantity": 1},
        {"id": "d", "payer_id": "alice", "plan_id": "calls", "quantity": 0},
        {"id": "e", "payer_id": "alice", "plan_id": "calls", "quantity": 3},
        {"payer_id": "alice", "plan_id": "calls", "quantity": 2},
    ]
    response = shop.alice.post("/v1/usage_events/batch", json={"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["index"], r["result"], r["amount"]) for r in results] == [
        (0, "ok", 1),  # 1.5
        (1, "exists", 1),
        (2, "exists_with_different_fields", 0),
        (3, "insufficient_funds", 0),
        (4, "plan_not_found", 0),
        (5, "invalid_quantity", 0),
        (6, "ok", 2),  # 3.0
        (7, "ok", 1),  # 4.0
    ]
    assert results[3]["status"] == "declined" and results[3]["decline_code"] == "insufficient_funds"
    assert results[4]["status"] is None and results[7]["id"].startswith("ue_")
    assert [r["id"] for r in results[:7]] == ["a", "a", "a", "b", "c", "d", "e"]
    assert shop.wallet("alice") == 10_000 - 4
    usage = shop.usage(shop.alice, "alice", "calls").json()
    assert (usage["quantity"], usage["amount"]) == (8, 4)
    # The same batch again replays every event that was recorded, declined ones included.
    again = shop.alice.post("/v1/usage_events/batch", json={"events": events[:4] + events[6:7]}).json()["results"]
    assert [r["result"] for r in again] == ["exists", "exists", "exists_with_different_fields", "exists", "exists"]
    assert shop.wallet("alice") == 10_000 - 4


def test_a_payer_batch_holds_only_its_own_events(shop: Shop) -> None:
    shop.plan("calls", PER_UNIT)
    events = [
        {"id": "x1", "payer_id": "bob", "plan_id": "calls", "quantity": 1},
        {"id": "x2", "payer_id": "alice", "plan_id": "calls", "quantity": 1},
    ]
    results = shop.bob.post("/v1/usage_events/batch", json={"events": events}).json()["results"]
    assert [r["result"] for r in results] == ["ok", "payer_not_found"]
    assert_error(shop.bob.get("/v1/usage_events/x2"), 404, "not_found")
    assert_error(shop.acme.post("/v1/usage_events/batch", json={"events": events}), 403, "permission")


def test_a_malformed_event_fails_the_whole_batch(shop: Shop) -> None:
    shop.plan("calls", PER_UNIT)
    good = {"id": "g", "payer_id": "alice", "plan_id": "calls", "quantity": 1}
    error = assert_error(
        shop.admin.post("/v1/usage_events/batch", json={"events": [good, {**good, "id": "f", "quantity": 1.0}]}),
        400,
        "invalid_request",
    )
    assert error["param"] == "events[1].quantity"
    error = assert_error(
        shop.admin.post("/v1/usage_events/batch", json={"events": [good, {**good, "timestamp": "soon"}]}),
        400,
        "invalid_request",
    )
    assert error["param"] == "events[1].timestamp"
    assert_error(shop.admin.post("/v1/usage_events/batch", json={"events": []}), 400, "invalid_request")
    too_many = [{**good, "id": f"g{i}"} for i in range(8191)]
    assert_error(shop.admin.post("/v1/usage_events/batch", json={"events": too_many}), 400, "invalid_request")
    assert_error(shop.admin.get("/v1/usage_events/g"), 404, "not_found")


def test_the_largest_batch_charges_floor_of_the_price_of_its_total(shop: Shop) -> None:
    shop.plan("tiers", GRADUATED)
    quantities = [1 + (i * 7919) % 13 for i in range(8190)]
    events = [{"payer_id": "alice", "plan_id": "tiers", "quantity": q} for q in quantities]
    results = shop.admin.post("/v1/usage_events/batch", json={"events": events}).json()["results"]
    assert all(r["result"] == "ok" for r in results)
    total = sum(quantities)
    expected = math.floor(10 + 50 + 5 + 900 * Fraction(1, 4) + (total - 1000) * Fraction(1, 10))
    assert sum(r["amount"] for r in results) == expected
    assert shop.usage(shop.admin, "alice", "tiers").json()["amount"] == expected
    assert shop.wallet("alice") == 10_000 - expected


# ----------------------------------------------------------------- usage and closing a period
def test_usage_reads(shop: Shop) -> None:
    shop.plan("calls", PER_UNIT)
    shop.event(shop.alice, quantity=2_500)
    now_period = period_key("month", shop.engine.now_ns())
    usage = shop.usage(shop.alice, "alice", "calls", now_period).json()
    assert usage == {
        "payer_id": "alice",
        "plan_id": "calls",
        "period": now_period,
        "ledger": "USD",
        "quantity": 2_500,
        "amount": 1,
        "minimum_charged": 0,
        "closed": False,
    }
    assert shop.usage(shop.acme, "alice", "calls").json() == usage
    assert shop.usage(shop.alice, "alice", "calls", "2020-01").json()["quantity"] == 0
    assert_error(shop.usage(shop.rival, "alice", "calls"), 404, "not_found", "plan_not_found")
    assert_error(shop.usage(shop.bob, "alice", "calls"), 404, "not_found", "payer_not_found")
    assert_error(shop.usage(shop.admin, "nobody", "calls"), 404, "not_found", "payer_not_found")
    assert_error(shop.usage(shop.admin, "alice", "nope"), 404, "not_found", "plan_not_found")
    assert_error(shop.alice.get("/v1/payers/alice/usage"), 400, "invalid_request", "parameter_missing")
    assert_error(shop.usage(shop.alice, "alice", "calls", "2026-13"), 400, "invalid_request")
    assert_error(shop.publisher.get("/v1/payers/alice/usage?plan_id=calls"), 403, "permission")


def test_closing_a_period_trues_up_the_minimum_once(shop: Shop) -> None:
    moment, period = _last_month()
    shop.plan("calls", {"model": "per_unit", "unit_price": "0.5"}, minimum="300")
    assert shop.event(shop.alice, id="late", quantity=7, timestamp=moment).json()["amount"] == 3  # 3.5
    assert shop.event(shop.bob, payer_id="bob", quantity=1, timestamp=moment).json()["status"] == "charged"  # 0.5
    assert_error(shop.alice.post(f"/v1/plans/calls/periods/{period}/close"), 403, "permission")
    assert_error(shop.acme.post(f"/v1/plans/calls/periods/{period}/close"), 403, "permission")
    closed = shop.admin.post(f"/v1/plans/calls/periods/{period}/close")
    assert closed.status_code == 200, closed.text
    assert closed.json() == {
        "plan_id": "calls",
        "period": period,
        "status": "closed",
        "payers": 2,
        "minimum_charged": 297,
        "declined": [{"payer_id": "bob", "decline_code": "insufficient_funds"}],
    }
    assert shop.wallet("alice") == 10_000 - 300
    usage = shop.usage(shop.alice, "alice", "calls", period).json()
    assert (usage["amount"], usage["minimum_charged"], usage["closed"]) == (300, 297, True)
    assert period in shop.admin.get("/v1/plans/calls").json()["closed_periods"]
    assert_error(shop.event(shop.alice, quantity=1, timestamp=moment), 422, "invalid_request", "period_closed")
    batch = shop.admin.post(
        "/v1/usage_events/batch",
        json={"events": [{"payer_id": "alice", "plan_id": "calls", "quantity": 1, "timestamp": moment}]},
    )
    assert batch.json()["results"][0]["result"] == "period_closed"
    again = shop.admin.post(f"/v1/plans/calls/periods/{period}/close").json()
    assert again["minimum_charged"] == 297 and shop.wallet("alice") == 10_000 - 300
    assert shop.event(shop.alice, id="late", quantity=7, timestamp=moment).status_code == 200  # replays still answer


def test_closing_is_refused_for_the_current_period_and_unknown_plans(shop: Shop) -> None:
    shop.plan("calls", PER_UNIT)
    current = period_key("month", shop.engine.now_ns())
    assert_error(shop.admin.post(f"/v1/plans/calls/periods/{current}/close"), 422, "invalid_request", "period_not_over")
    assert_error(shop.admin.post("/v1/plans/nope/periods/2020-01/close"), 404, "not_found", "plan_not_found")
    assert_error(shop.admin.post("/v1/plans/calls/periods/2020-1/close"), 400, "invalid_request")
