"""Payers, top-ups and merchants over HTTP: shapes, replays, errors, who sees what."""

from __future__ import annotations

from api_support import assert_error
from payments_kit import BANK_DELAY_S, Clock, Payments, card_fee, tick
from starlette.testclient import TestClient


def test_a_new_payer_is_active_with_an_empty_wallet(pay: Payments) -> None:
    payer = pay.payer("p1", spend_caps=[{"period": "day", "amount": 1000}], metadata={"tier": "gold"})
    assert set(payer) >= {"id", "ledger", "mode", "status", "wallet", "wallets", "tab", "caps", "created_at"}
    assert (payer["id"], payer["ledger"], payer["mode"], payer["status"]) == ("p1", "USD", "prepay", "active")
    assert payer["wallet"] == {"balance": 0, "promo_balance": 0, "available": 0}
    assert payer["wallets"] == [{"ledger": "USD", "balance": 0, "promo_balance": 0, "available": 0}]
    assert payer["tab"] == {"owed": 0, "credit_limit": 0}
    assert payer["caps"] == [{"period": "day", "amount": 1000, "used": 0}]
    assert payer["metadata"] == {"tier": "gold"}
    assert payer["created_at"].endswith("Z")
    assert pay.get("/v1/payers/p1") == payer


def test_payer_create_replays_and_conflicts(pay: Payments, admin: TestClient) -> None:
    body = {"id": "p1", "ledger": "USD", "mode": "postpay", "credit_limit": 500}
    assert admin.post("/v1/payers", json=body).status_code == 201
    again = admin.post("/v1/payers", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["tab"] == {"owed": 0, "credit_limit": 500}
    assert_error(
        admin.post("/v1/payers", json={**body, "credit_limit": 600}), 409, "conflict", "exists_with_different_fields"
    )
    assert_error(admin.post("/v1/payers", json={**body, "metadata": {"a": "b"}}), 409, "conflict")
    # A PATCH changes the payer, not what it was created with: the create still replays.
    assert admin.patch("/v1/payers/p1", json={"credit_limit": 900}).json()["tab"]["credit_limit"] == 900
    assert admin.post("/v1/payers", json=body).status_code == 200
    made = admin.post("/v1/payers", json={"ledger": "USD", "mode": "prepay"})
    assert made.status_code == 201 and made.json()["id"].startswith("payer_")


def test_payer_requests_are_checked(pay: Payments, admin: TestClient) -> None:
    assert_error(admin.post("/v1/payers", json={"id": "p1", "ledger": "USD", "mode": "later"}), 400, "invalid_request")
    float_limit = {"id": "p1", "ledger": "USD", "mode": "postpay", "credit_limit": 10.0}
    assert_error(admin.post("/v1/payers", json=float_limit), 400, "invalid_request")
    huge = {"id": "p1", "ledger": "USD", "mode": "postpay", "credit_limit": 10**30}
    assert_error(admin.post("/v1/payers", json=huge), 400, "invalid_request")
    prepay_credit = {"id": "p1", "ledger": "USD", "mode": "prepay", "credit_limit": 5}
    assert_error(admin.post("/v1/payers", json=prepay_credit), 422, "invalid_request", "credit_limit_not_allowed")
    assert_error(
        admin.post("/v1/payers", json={"id": "p1", "ledger": "EUR", "mode": "prepay"}),
        404,
        "not_found",
        "ledger_not_found",
    )
    caps = {"id": "p1", "ledger": "USD", "mode": "prepay", "spend_caps": [{"period": "week", "amount": 1}]}
    assert_error(admin.post("/v1/payers", json=caps), 400, "invalid_request")
    two_days = [{"period": "day", "amount": 1}, {"period": "day", "amount": 2}]
    body = {"id": "p1", "ledger": "USD", "mode": "prepay", "spend_caps": two_days}
    assert_error(admin.post("/v1/payers", json=body), 422, "invalid_request", "invalid_spend_caps")
    assert_error(admin.get("/v1/payers/nobody"), 404, "not_found", "payer_not_found")
    assert_error(admin.patch("/v1/payers/nobody", json={"status": "suspended"}), 404, "not_found", "payer_not_found")


def test_patch_changes_limit_caps_and_status(pay: Payments, admin: TestClient) -> None:
    pay.payer("p1", "postpay", credit_limit=1000)
    pay.merchant("m1")
    pay.charge("c1", "p1", "m1", 700)
    assert pay.get("/v1/payers/p1")["tab"] == {"owed": 700, "credit_limit": 1000}
    error = assert_error(admin.patch("/v1/payers/p1", json={"credit_limit": 600}), 422, "invalid_request")
    assert error["code"] == "credit_limit_below_usage"
    patched = admin.patch(
        "/v1/payers/p1", json={"spend_caps": [{"period": "month", "amount": 5000}], "status": "suspended"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "suspended"
    assert patched.json()["caps"] == [{"period": "month", "amount": 5000, "used": 0}]  # counted from now on
    assert_error(admin.patch("/v1/payers/p1", json={"status": "gone"}), 400, "invalid_request")
    assert admin.patch("/v1/payers/p1", json={"status": "active"}).json()["status"] == "active"
    pay.charge("c2", "p1", "m1", 100)
    assert pay.get("/v1/payers/p1")["caps"] == [{"period": "month", "amount": 5000, "used": 100}]


def test_payer_keys_see_only_their_payer(pay: Payments) -> None:
    pay.payer("p1")
    pay.payer("p2")
    own = pay.client("payer", "p1")
    assert own.get("/v1/payers/p1").status_code == 200
    assert_error(own.get("/v1/payers/p2"), 404, "not_found", "payer_not_found")
    assert [payer["id"] for payer in own.get("/v1/payers").json()["data"]] == ["p1"]
    assert_error(own.patch("/v1/payers/p1", json={"status": "active"}), 403, "permission")
    assert_error(own.post("/v1/payers", json={"id": "p3", "ledger": "USD", "mode": "prepay"}), 403, "permission")
    assert_error(pay.client("merchant", "m1").get("/v1/payers/p1"), 403, "permission")


def test_payers_list_in_pages(pay: Payments) -> None:
    for index in range(5):
        pay.payer(f"p{index}")
    first = pay.get("/v1/payers?limit=2")
    assert [p["id"] for p in first["data"]] == ["p0", "p1"] and first["has_more"] is True
    rest = pay.get("/v1/payers?limit=10&starting_after=p1")
    assert [p["id"] for p in rest["data"]] == ["p2", "p3", "p4"] and rest["has_more"] is False


# ----------------------------------------------------------------- top-ups
def test_card_topup_credits_the_wallet_in_full(pay: Payments, admin: TestClient) -> None:
    pay.payer("p1")
    response = admin.post("/v1/payers/p1/topups", json={"id": "t1", "amount": 1000, "rail": "card"})
    assert response.status_code == 201, response.text
    topup = response.json()
    assert (topup["status"], topup["amount"], topup["fee"], topup["rail"]) == (
        "succeeded",
        1000,
        card_fee(1000),
        "card",
    )
    assert topup["payer_id"] == "p1" and topup["failure_code"] is None
    assert pay.get("/v1/payers/p1")["wallet"] == {"balance": 1000, "promo_balance": 0, "available": 1000}
    again = admin.post("/v1/payers/p1/topups", json={"id": "t1", "amount": 1000, "rail": "card"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == topup
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 1000
    assert_error(admin.post("/v1/payers/p1/topups", json={"id": "t1", "amount": 999, "rail": "card"}), 409, "conflict")
    assert pay.get("/v1/topups/t1") == topup


def test_a_declined_card_topup_moves_nothing(pay: Payments, admin: TestClient) -> None:
    pay.payer("p1")
    body = {"id": "t1", "amount": 1000, "rail": "card", "simulate_failure": True}
    topup = admin.post("/v1/payers/p1/topups", json=body).json()
    assert (topup["status"], topup["failure_code"], topup["fee"]) == ("failed", "card_declined", 0)
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 0


def test_bank_topup_is_pending_until_the_settler_books_it(pay: Payments, admin: TestClient, clock: Clock) -> None:
    pay.payer("p1")
    topup = admin.post("/v1/payers/p1/topups", json={"id": "t1", "amount": 1000, "rail": "bank"}).json()
    assert topup["status"] == "pending" and topup["settles_at"] is not None
    assert tick(admin.app).handled["topup_due"] == 0  # not due yet
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 0
    clock.advance(BANK_DELAY_S + 1)
    assert tick(admin.app).handled["topup_due"] == 1
    assert pay.get("/v1/topups/t1")["status"] == "succeeded"
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 1000
    assert tick(admin.app).handled["topup_due"] == 0  # the cursor moved past it


def test_topup_errors(pay: Payments, admin: TestClient) -> None:
    pay.payer("p1")
    assert_error(admin.post("/v1/payers/p1/topups", json={"amount": 10.5, "rail": "card"}), 400, "invalid_request")
    assert_error(
        admin.post("/v1/payers/p1/topups", json={"amount": 0, "rail": "card"}),
        422,
        "invalid_request",
        "amount_must_be_positive",
    )
    assert_error(
        admin.post("/v1/payers/p1/topups", json={"amount": 5, "rail": "wire"}), 404, "not_found", "rail_not_found"
    )
    assert_error(
        admin.post("/v1/payers/p9/topups", json={"amount": 5, "rail": "card"}), 404, "not_found", "payer_not_found"
    )
    assert_error(admin.get("/v1/topups/nope"), 404, "not_found", "topup_not_found")
    admin.patch("/v1/payers/p1", json={"status": "suspended"})
    declined = admin.post("/v1/payers/p1/topups", json={"amount": 5, "rail": "card"})
    assert_error(declined, 422, "payment_declined", "payer_suspended")


def test_topups_by_role(pay: Payments) -> None:
    pay.payer("p1")
    pay.payer("p2")
    pay.fund("p1", 100, "t-a")
    pay.fund("p2", 100, "t-b")
    own = pay.client("payer", "p1")
    made = own.post("/v1/payers/p1/topups", json={"id": "t-c", "amount": 50, "rail": "card"})
    assert made.status_code == 201
    assert_error(
        own.post("/v1/payers/p2/topups", json={"amount": 50, "rail": "card"}), 404, "not_found", "payer_not_found"
    )
    assert_error(own.get("/v1/topups/t-b"), 404, "not_found", "topup_not_found")
    assert [t["id"] for t in own.get("/v1/topups").json()["data"]] == ["t-a", "t-c"]
    assert_error(own.get("/v1/topups?payer_id=p2"), 404, "not_found")
    assert [t["id"] for t in pay.get("/v1/topups?payer_id=p2")["data"]] == ["t-b"]
    assert [t["id"] for t in pay.get("/v1/topups?limit=2")["data"]] == ["t-a", "t-b"]
    assert_error(pay.client("merchant", "m1").get("/v1/topups"), 403, "permission")


# ----------------------------------------------------------------- merchants
def test_merchant_shape_and_available_with_holds(pay: Payments, admin: TestClient) -> None:
    merchant = pay.merchant("m1", bps=1000, fixed=5, hold_days=2)
    assert merchant["fee"] == {"percent_bps": 1000, "fixed": 5}
    assert merchant["payout"] == {"threshold": 0, "hold_days": 2}
    assert (merchant["balance"], merchant["available"]) == (0, 0)
    pay.merchant("m2")
    pay.payer("p1")
    pay.fund("p1", 1000)
    pay.charge("c1", "p1", "m1", 200)  # fee 5 + 20 = 25; the merchant nets 175, all on hold
    pay.charge("c2", "p1", "m2", 100)
    held = pay.get("/v1/merchants/m1")
    assert (held["balance"], held["available"]) == (175, 0)
    free = pay.get("/v1/merchants/m2")
    assert (free["balance"], free["available"]) == (100, 100)
    replay = admin.post("/v1/merchants", json={"id": "m2", "ledger": "USD"})
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert_error(
        admin.post("/v1/merchants", json={"id": "m2", "ledger": "USD", "fee": {"percent_bps": 1}}), 409, "conflict"
    )
    assert_error(
        admin.post("/v1/merchants", json={"ledger": "USD", "fee": {"percent_bps": 10_001}}), 400, "invalid_request"
    )
    assert_error(admin.post("/v1/merchants", json={"ledger": "USD", "fee": {"fixed": 1.5}}), 400, "invalid_request")
    assert_error(admin.get("/v1/merchants/m9"), 404, "not_found", "merchant_not_found")
    assert [m["id"] for m in pay.get("/v1/merchants")["data"]] == ["m1", "m2"]


def test_merchant_keys_see_only_their_merchant(pay: Payments) -> None:
    pay.merchant("m1")
    pay.merchant("m2")
    own = pay.client("merchant", "m1")
    assert own.get("/v1/merchants/m1").status_code == 200
    assert_error(own.get("/v1/merchants/m2"), 404, "not_found", "merchant_not_found")
    assert [m["id"] for m in own.get("/v1/merchants").json()["data"]] == ["m1"]
    assert_error(own.post("/v1/merchants", json={"ledger": "USD"}), 403, "permission")
    assert_error(pay.client("payer", "p1").get("/v1/merchants/m1"), 403, "permission")
