"""Post-pay statements over HTTP, and the background settler that concludes what waits on time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from api_support import assert_error
from payments_kit import BANK_DELAY_S, Clock, Payments, bearer, card_fee, tick
from starlette.testclient import TestClient

from micropay.api import Settings, create_app
from micropay.engine import Engine
from micropay.models.settler import Settler


def _owing(pay: Payments, clock: Clock) -> str:
    """A post-pay payer p1 owing 300 and a hybrid payer h1 owing 50; closes now, answers p1's statement id."""
    pay.merchant("m1")
    pay.payer("p1", "postpay", credit_limit=1000)
    pay.payer("h1", "hybrid", credit_limit=1000)
    pay.payer("pre")
    pay.fund("pre", 100)
    pay.charge("c1", "p1", "m1", 100)
    pay.charge("c2", "p1", "m1", 200)
    pay.charge("c3", "h1", "m1", 50)
    pay.charge("c4", "pre", "m1", 10)
    clock.advance(1)
    closed = pay.admin.post("/v1/statements/close", json={"period_end": "2026-05-28T20:26:41Z"})
    assert closed.status_code == 201, closed.text
    statements = {statement["payer_id"]: statement for statement in closed.json()["data"]}
    assert set(statements) == {"p1", "h1"}
    assert (statements["p1"]["amount_due"], statements["p1"]["status"]) == (300, "open")
    assert statements["h1"]["amount_due"] == 50
    return str(statements["p1"]["id"])


def test_close_bills_usage_before_the_period_end(pay: Payments, clock: Clock) -> None:
    statement_id = _owing(pay, clock)
    statement = pay.get(f"/v1/statements/{statement_id}")
    assert statement["period_end"] == "2026-05-28T20:26:41.000000Z" and statement["attempts"] == 0
    assert [s["id"] for s in pay.get("/v1/statements?payer_id=p1")["data"]] == [statement_id]
    assert len(pay.get("/v1/statements")["data"]) == 2
    # Closing the same period again answers the same statements; closing moves no money.
    again = pay.admin.post("/v1/statements/close", json={"period_end": "2026-05-28T20:26:41Z"})
    assert sorted(s["id"] for s in again.json()["data"]) == sorted(s["id"] for s in pay.get("/v1/statements")["data"])
    assert pay.get("/v1/payers/p1")["tab"]["owed"] == 300


def test_close_now_bills_everything_so_far(pay: Payments, admin: TestClient, clock: Clock) -> None:
    pay.merchant("m1")
    pay.payer("p1", "postpay", credit_limit=1000)
    pay.charge("c1", "p1", "m1", 120)
    clock.advance(0.001)  # the same minute: billed all the same, since nothing was used after it
    closed = admin.post("/v1/statements/close", json={})
    assert closed.status_code == 201, closed.text
    assert [s["amount_due"] for s in closed.json()["data"]] == [120]


def test_close_errors(pay: Payments, admin: TestClient) -> None:
    assert_error(
        admin.post("/v1/statements/close", json={"period_end": "2027-01-01T00:00:00Z"}),
        422,
        "invalid_request",
        "period_end_in_future",
    )
    assert_error(admin.post("/v1/statements/close", json={"period_end": "soon"}), 400, "invalid_request")
    assert admin.post("/v1/statements/close", json={}).json() == {"data": [], "has_more": False}
    assert_error(admin.get("/v1/statements/st_nope"), 404, "not_found", "statement_not_found")
    assert_error(
        admin.post("/v1/statements/st_nope/settle", json={"rail": "card"}), 404, "not_found", "statement_not_found"
    )
    assert_error(pay.client("payer", "p1").post("/v1/statements/close", json={}), 403, "permission")


def test_settle_by_card_pays_the_tab(pay: Payments, clock: Clock) -> None:
    statement_id = _owing(pay, clock)
    paid = pay.client("payer", "p1").post(f"/v1/statements/{statement_id}/settle", json={"rail": "card"})
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["attempts"], paid.json()["rail"]) == ("paid", 1, "card")
    assert paid.json()["paid_at"] is not None
    assert pay.get("/v1/payers/p1")["tab"]["owed"] == 0
    assert pay.get("/v1/accounts/platform:rail_fees:USD")["balance"] == -(card_fee(100) + card_fee(300))
    again = pay.admin.post(f"/v1/statements/{statement_id}/settle", json={"rail": "card"})
    assert again.json()["status"] == "paid" and again.json()["attempts"] == 1


def test_a_failed_settlement_goes_past_due_and_suspends_until_paid(pay: Payments, clock: Clock) -> None:
    statement_id = _owing(pay, clock)
    failed = pay.admin.post(f"/v1/statements/{statement_id}/settle", json={"rail": "card", "simulate_failure": True})
    assert failed.status_code == 200, failed.text
    assert (failed.json()["status"], failed.json()["failure_code"]) == ("failed", "card_declined")
    assert pay.get(f"/v1/statements/{statement_id}")["status"] == "past_due"
    assert pay.get("/v1/payers/p1")["status"] == "suspended"
    declined = pay.admin.post("/v1/charges", json={"payer_id": "p1", "merchant_id": "m1", "amount": 1})
    assert_error(declined, 422, "payment_declined", "payer_suspended")
    paid = pay.admin.post(f"/v1/statements/{statement_id}/settle", json={"rail": "card"})
    assert paid.json()["status"] == "paid" and paid.json()["attempts"] == 2
    assert pay.get("/v1/payers/p1")["status"] == "active"
    assert pay.charge("c9", "p1", "m1", 1)["status"] == "succeeded"


def test_bank_settlement_is_concluded_by_the_settler(pay: Payments, clock: Clock) -> None:
    statement_id = _owing(pay, clock)
    processing = pay.admin.post(f"/v1/statements/{statement_id}/settle", json={"rail": "bank"})
    assert processing.json()["status"] == "processing"
    assert tick(pay.admin.app).handled["statement_due"] == 0
    clock.advance(BANK_DELAY_S + 1)
    assert tick(pay.admin.app).handled["statement_due"] == 1
    assert pay.get(f"/v1/statements/{statement_id}")["status"] == "paid"
    assert pay.get("/v1/payers/p1")["tab"]["owed"] == 0


def test_a_failed_bank_settlement_suspends_the_payer(pay: Payments, clock: Clock) -> None:
    statement_id = _owing(pay, clock)
    pay.admin.post(f"/v1/statements/{statement_id}/settle", json={"rail": "bank", "simulate_failure": True})
    clock.advance(BANK_DELAY_S + 1)
    tick(pay.admin.app)
    assert pay.get(f"/v1/statements/{statement_id}")["status"] == "past_due"
    assert pay.get("/v1/payers/p1")["status"] == "suspended"


def test_statements_by_role(pay: Payments, clock: Clock) -> None:
    statement_id = _owing(pay, clock)
    as_p1, as_h1 = pay.client("payer", "p1"), pay.client("payer", "h1")
    assert as_p1.get(f"/v1/statements/{statement_id}").status_code == 200
    assert_error(as_h1.get(f"/v1/statements/{statement_id}"), 404, "not_found", "statement_not_found")
    assert_error(as_h1.post(f"/v1/statements/{statement_id}/settle", json={"rail": "card"}), 404, "not_found")
    assert pay.get(f"/v1/statements/{statement_id}")["status"] == "open"
    assert [s["payer_id"] for s in as_h1.get("/v1/statements").json()["data"]] == ["h1"]
    assert_error(as_h1.get("/v1/statements?payer_id=p1"), 404, "not_found", "payer_not_found")
    assert_error(pay.client("merchant", "m1").get("/v1/statements"), 403, "permission")


# ----------------------------------------------------------------- the settler
def test_the_settler_handles_a_bounded_page_per_tick(pay: Payments, app: Any, engine: Engine, clock: Clock) -> None:
    pay.payer("p1")
    for index in range(7):
        pay.admin.post("/v1/payers/p1/topups", json={"id": f"t{index}", "amount": 100, "rail": "bank"})
    clock.advance(BANK_DELAY_S + 1)
    settler = Settler(engine, app.state.services.rails, page_size=3)
    assert [settler.tick().handled["topup_due"] for _ in range(4)] == [3, 3, 1, 0]
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 700


@pytest.fixture
def fast_settling_app(engine: Engine) -> Any:
    return create_app(engine, settings=Settings(settle_interval_s=0.02))


def test_the_settler_runs_on_its_own_while_the_server_runs(
    fast_settling_app: Any, make_key: Callable[..., str], clock: Clock
) -> None:
    settler: Settler = fast_settling_app.state.settler
    with TestClient(fast_settling_app, headers=bearer(make_key("admin"))) as client:
        client.post("/v1/ledgers", json={"code": "USD", "scale": 2})
        client.post("/v1/payers", json={"id": "p1", "ledger": "USD", "mode": "prepay"})
        assert client.post("/v1/payers/p1/topups", json={"id": "t1", "amount": 100, "rail": "bank"}).status_code == 201
        clock.advance(BANK_DELAY_S + 1)
        deadline = time.monotonic() + 10
        while client.get("/v1/topups/t1").json()["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/v1/topups/t1").json()["status"] == "succeeded"
        assert client.get("/v1/payers/p1").json()["wallet"]["balance"] == 100
    ticks = settler.ticks
    time.sleep(0.1)
    assert settler.ticks == ticks  # stopped with the app
