"""Charges, refunds, vouchers and passes over HTTP: money moves as the contract says, declines
move nothing, replays move nothing twice, and each key sees only its own objects."""

from __future__ import annotations

from typing import Any

from api_support import assert_error
from payments_kit import Clock, Payments, post_concurrently, tick
from starlette.testclient import TestClient


def _balances(pay: Payments, payer_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    payer = pay.get(f"/v1/payers/{payer_id}")
    return payer["wallet"], payer["tab"]


def test_a_charge_pays_the_merchant_less_the_platform_fee(pay: Payments, admin: TestClient) -> None:
    pay.payer("p1")
    pay.merchant("m1", bps=250, fixed=3)
    pay.fund("p1", 1000)
    body = {"id": "c1", "payer_id": "p1", "merchant_id": "m1", "amount": 401, "description": "an article"}
    response = admin.post("/v1/charges", json={**body, "metadata": {"order": "42"}})
    assert response.status_code == 201, response.text
    charge = response.json()
    fee = min(401, 3 + 401 * 250 // 10_000)
    assert (charge["status"], charge["amount"], charge["platform_fee"], charge["merchant_amount"]) == (
        "succeeded",
        401,
        fee,
        401 - fee,
    )
    assert charge["sources"] == {"promo": 0, "wallet": 401, "tab": 0}
    assert (charge["description"], charge["metadata"], charge["amount_refunded"]) == ("an article", {"order": "42"}, 0)
    assert pay.get("/v1/charges/c1") == charge
    assert pay.get("/v1/payers/p1")["wallet"] == {"balance": 599, "promo_balance": 0, "available": 599}
    assert pay.get("/v1/merchants/m1")["balance"] == 401 - fee


def test_charge_replays_and_conflicts(pay: Payments, admin: TestClient) -> None:
    pay.payer("p1")
    pay.merchant("m1")
    pay.fund("p1", 1000)
    body = {"id": "c1", "payer_id": "p1", "merchant_id": "m1", "amount": 300}
    first = admin.post("/v1/charges", json=body)
    again = admin.post("/v1/charges", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 700
    assert_error(
        admin.post("/v1/charges", json={**body, "amount": 301}), 409, "conflict", "exists_with_different_fields"
    )
    assert_error(admin.post("/v1/charges", json={**body, "metadata": {"x": "y"}}), 409, "conflict")
    made = admin.post("/v1/charges", json={k: v for k, v in body.items() if k != "id"})
    assert made.status_code == 201 and made.json()["id"].startswith("ch_")


def test_identical_charges_racing_move_money_once(pay: Payments, app: Any, admin_key: str) -> None:
    pay.payer("p1")
    pay.merchant("m1")
    pay.fund("p1", 1000)
    body = {"id": "race", "payer_id": "p1", "merchant_id": "m1", "amount": 700}
    responses = post_concurrently(app, admin_key, "/v1/charges", [body] * 16)
    assert sorted(response.status_code for response in responses) == [200] * 15 + [201]
    assert all(response.json() == responses[0].json() for response in responses)
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 300


def test_fifty_concurrent_charges_against_a_wallet_funded_for_exactly_n(
    pay: Payments, app: Any, admin_key: str
) -> None:
    funded_for, amount = 23, 37
    pay.payer("p1")
    pay.merchant("m1", bps=500)
    pay.fund("p1", funded_for * amount)
    bodies = [{"id": f"c{i}", "payer_id": "p1", "merchant_id": "m1", "amount": amount} for i in range(50)]
    responses = post_concurrently(app, admin_key, "/v1/charges", bodies)
    statuses = [response.status_code for response in responses]
    assert statuses.count(201) == funded_for, statuses
    for response in responses:
        if response.status_code != 201:
            assert_error(response, 422, "payment_declined", "insufficient_funds")
    assert pay.get("/v1/payers/p1")["wallet"] == {"balance": 0, "promo_balance": 0, "available": 0}
    assert pay.get("/v1/merchants/m1")["balance"] == funded_for * (amount - amount * 500 // 10_000)
    assert len(pay.get("/v1/charges?payer_id=p1&limit=100")["data"]) == funded_for


def test_decline_codes_and_declines_move_nothing(pay: Payments, admin: TestClient) -> None:
    pay.merchant("m1")
    pay.payer("pre")
    pay.fund("pre", 100)
    pay.payer("post", "postpay", credit_limit=100)
    pay.payer("capped", "hybrid", credit_limit=1000, spend_caps=[{"period": "day", "amount": 150}])
    pay.payer("off")
    admin.patch("/v1/payers/off", json={"status": "suspended"})

    def declined(payer_id: str, amount: int, code: str) -> None:
        before = pay.get(f"/v1/payers/{payer_id}")
        response = admin.post("/v1/charges", json={"payer_id": payer_id, "merchant_id": "m1", "amount": amount})
        assert_error(response, 422, "payment_declined", code)
        assert pay.get(f"/v1/payers/{payer_id}") == before

    declined("pre", 101, "insufficient_funds")
    declined("post", 101, "credit_limit_exceeded")
    pay.charge("c1", "capped", "m1", 100)
    declined("capped", 51, "spend_cap_exceeded")
    declined("off", 1, "payer_suspended")
    assert pay.get("/v1/merchants/m1")["balance"] == 100
    assert_error(
        admin.post("/v1/charges", json={"payer_id": "pre", "merchant_id": "m1", "amount": 0}), 422, "invalid_request"
    )
    assert_error(
        admin.post("/v1/charges", json={"payer_id": "pre", "merchant_id": "m1", "amount": 1.0}), 400, "invalid_request"
    )
    assert_error(
        admin.post("/v1/charges", json={"payer_id": "pre", "merchant_id": "m9", "amount": 1}),
        404,
        "not_found",
        "merchant_not_found",
    )
    assert_error(
        admin.post("/v1/charges", json={"payer_id": "p9", "merchant_id": "m1", "amount": 1}),
        404,
        "not_found",
        "payer_not_found",
    )
    assert_error(admin.get("/v1/charges/nope"), 404, "not_found", "charge_not_found")


def test_postpay_and_hybrid_charges_use_the_tab(pay: Payments) -> None:
    pay.merchant("m1")
    pay.payer("post", "postpay", credit_limit=500)
    pay.payer("hyb", "hybrid", credit_limit=500)
    pay.fund("hyb", 100)
    assert pay.charge("c1", "post", "m1", 300)["sources"] == {"promo": 0, "wallet": 0, "tab": 300}
    assert pay.charge("c2", "hyb", "m1", 250)["sources"] == {"promo": 0, "wallet": 100, "tab": 150}
    assert _balances(pay, "post") == (
        {"balance": 0, "promo_balance": 0, "available": 0},
        {"owed": 300, "credit_limit": 500},
    )
    assert _balances(pay, "hyb")[1] == {"owed": 150, "credit_limit": 500}


def test_charges_by_role(pay: Payments) -> None:
    pay.merchant("m1")
    pay.merchant("m2")
    pay.payer("p1")
    pay.payer("p2")
    pay.fund("p1", 1000)
    pay.fund("p2", 1000)
    as_m1 = pay.client("merchant", "m1")
    as_p1 = pay.client("payer", "p1")
    made = as_m1.post("/v1/charges", json={"id": "a", "payer_id": "p2", "merchant_id": "m1", "amount": 10})
    assert made.status_code == 201, made.text
    mine = as_p1.post("/v1/charges", json={"id": "b", "payer_id": "p1", "merchant_id": "m2", "amount": 20})
    assert mine.status_code == 201, mine.text
    pay.charge("c", "p1", "m1", 30)
    pay.charge("d", "p2", "m2", 40)
    # Charging for another merchant, or from another payer, looks like charging one that does not exist.
    other = {"payer_id": "p2", "merchant_id": "m2", "amount": 1}
    assert_error(as_m1.post("/v1/charges", json=other), 404, "not_found", "merchant_not_found")
    assert_error(as_p1.post("/v1/charges", json=other), 404, "not_found", "payer_not_found")
    assert_error(pay.client("publisher", "pub1").post("/v1/charges", json=other), 403, "permission")
    # One payer's or merchant's charges: newest first (from the ledger's history); all: by id.
    assert [c["id"] for c in as_m1.get("/v1/charges").json()["data"]] == ["c", "a"]
    assert [c["id"] for c in as_p1.get("/v1/charges").json()["data"]] == ["c", "b"]
    assert [c["id"] for c in pay.get("/v1/charges?merchant_id=m2")["data"]] == ["d", "b"]
    assert [c["id"] for c in pay.get("/v1/charges?payer_id=p2")["data"]] == ["d", "a"]
    assert [c["id"] for c in pay.get("/v1/charges?limit=3")["data"]] == ["a", "b", "c"]
    page = pay.get("/v1/charges?payer_id=p1&limit=1")
    assert [c["id"] for c in page["data"]] == ["c"] and page["has_more"] is True
    page = pay.get("/v1/charges?payer_id=p1&limit=1&starting_after=c")
    assert [c["id"] for c in page["data"]] == ["b"] and page["has_more"] is False
    page = pay.get("/v1/charges?payer_id=p1&starting_after=a")  # not one of p1's charges
    assert page == {"data": [], "has_more": False}
    assert as_m1.get("/v1/charges/a").status_code == 200
    assert_error(as_m1.get("/v1/charges/d"), 404, "not_found", "charge_not_found")
    assert_error(as_p1.get("/v1/charges/d"), 404, "not_found", "charge_not_found")
    assert_error(as_p1.get("/v1/charges?payer_id=p2"), 404, "not_found")
    assert_error(as_m1.get("/v1/charges?merchant_id=m2"), 404, "not_found")
    assert_error(pay.admin.get("/v1/charges?payer_id=p1&merchant_id=m1"), 400, "invalid_request")


# ----------------------------------------------------------------- refunds
def test_refunds_full_partial_and_past_the_charge(pay: Payments, admin: TestClient) -> None:
    pay.merchant("m1", bps=1000)
    pay.payer("p1")
    pay.fund("p1", 1000)
    pay.charge("c1", "p1", "m1", 400)
    part = admin.post("/v1/charges/c1/refunds", json={"id": "r1", "amount": 150})
    assert part.status_code == 201, part.text
    assert (part.json()["amount"], part.json()["charge_id"], part.json()["status"]) == (150, "c1", "succeeded")
    assert part.json()["sources"] == {"promo": 0, "wallet": 150, "tab": 0}
    again = admin.post("/v1/charges/c1/refunds", json={"id": "r1", "amount": 150})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert_error(admin.post("/v1/charges/c1/refunds", json={"id": "r1", "amount": 10}), 409, "conflict")
    too_much = admin.post("/v1/charges/c1/refunds", json={"amount": 251})
    assert_error(too_much, 422, "invalid_request", "refund_exceeds_charge")
    rest = admin.post("/v1/charges/c1/refunds", json={"id": "r2"})
    assert rest.status_code == 201 and rest.json()["amount"] == 250
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 1000
    charge = pay.get("/v1/charges/c1")
    assert (charge["amount_refunded"], charge["refunds"]) == (400, ["r1", "r2"])
    assert pay.get("/v1/refunds/r1") == part.json()
    listed = pay.get("/v1/charges/c1/refunds")
    assert [r["id"] for r in listed["data"]] == ["r1", "r2"]
    assert [r["id"] for r in pay.get("/v1/charges/c1/refunds?starting_after=r1")["data"]] == ["r2"]
    assert_error(
        admin.post("/v1/charges/c1/refunds", json={"amount": 1}), 422, "invalid_request", "refund_exceeds_charge"
    )
    assert_error(admin.post("/v1/charges/zz/refunds", json={}), 404, "not_found", "charge_not_found")
    assert_error(admin.get("/v1/refunds/zz"), 404, "not_found", "refund_not_found")
    assert_error(admin.post("/v1/charges/c1/refunds", json={"amount": 1.5}), 400, "invalid_request")


def test_refunds_by_role(pay: Payments) -> None:
    pay.merchant("m1")
    pay.merchant("m2")
    pay.payer("p1")
    pay.payer("p2")
    pay.fund("p1", 100)
    pay.fund("p2", 100)
    pay.charge("c1", "p1", "m1", 50)
    pay.charge("c2", "p2", "m2", 50)
    as_m1 = pay.client("merchant", "m1")
    assert as_m1.post("/v1/charges/c1/refunds", json={"id": "r1", "amount": 5}).status_code == 201
    assert_error(as_m1.post("/v1/charges/c2/refunds", json={"amount": 5}), 404, "not_found", "charge_not_found")
    assert pay.get("/v1/charges/c2")["amount_refunded"] == 0
    as_p1 = pay.client("payer", "p1")
    assert_error(as_p1.post("/v1/charges/c1/refunds", json={"amount": 5}), 403, "permission")
    assert as_p1.get("/v1/refunds/r1").status_code == 200
    assert_error(pay.client("payer", "p2").get("/v1/refunds/r1"), 404, "not_found", "refund_not_found")
    assert_error(pay.client("merchant", "m2").get("/v1/refunds/r1"), 404, "not_found", "refund_not_found")
    assert_error(pay.client("payer", "p2").get("/v1/charges/c1/refunds"), 404, "not_found", "charge_not_found")


# ----------------------------------------------------------------- vouchers and promo credit
def test_vouchers_give_promo_credit_spent_first(pay: Payments, admin: TestClient, clock: Clock) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    pay.payer("p2")
    pay.fund("p1", 100)
    expires = "2026-06-28T00:00:00Z"
    made = admin.post("/v1/vouchers", json={"code": "WELCOME-5", "ledger": "USD", "amount": 50, "expires_at": expires})
    assert made.status_code == 201, made.text
    voucher = made.json()
    assert (voucher["amount"], voucher["redeemed"], voucher["expires_at"]) == (50, False, "2026-06-28T00:00:00.000000Z")
    assert "WELCOME" not in made.text
    replay = admin.post(
        "/v1/vouchers", json={"code": "WELCOME-5", "ledger": "USD", "amount": 50, "expires_at": expires}
    )
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert_error(
        admin.post("/v1/vouchers", json={"code": "WELCOME-5", "ledger": "USD", "amount": 51, "expires_at": expires}),
        409,
        "conflict",
    )

    redeemed = pay.client("payer", "p1").post("/v1/payers/p1/vouchers/redeem", json={"code": "WELCOME-5"})
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["wallet"] == {"balance": 100, "promo_balance": 50, "available": 150}
    assert redeemed.json()["voucher"]["redeemed_by"] == "p1"
    again = admin.post("/v1/payers/p1/vouchers/redeem", json={"code": "WELCOME-5"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["wallet"]["promo_balance"] == 50
    used = admin.post("/v1/payers/p2/vouchers/redeem", json={"code": "WELCOME-5"})
    assert_error(used, 422, "invalid_request", "voucher_already_redeemed")
    assert_error(
        admin.post("/v1/payers/p2/vouchers/redeem", json={"code": "NOPE-123"}), 404, "not_found", "voucher_not_found"
    )

    assert pay.charge("c1", "p1", "m1", 70)["sources"] == {"promo": 50, "wallet": 20, "tab": 0}
    assert pay.get("/v1/payers/p1")["wallet"] == {"balance": 80, "promo_balance": 0, "available": 80}

    admin.post(
        "/v1/vouchers", json={"code": "SHORT-1", "ledger": "USD", "amount": 5, "expires_at": "2026-05-28T20:30:00Z"}
    )
    clock.advance(3600)
    assert_error(
        admin.post("/v1/payers/p2/vouchers/redeem", json={"code": "SHORT-1"}), 422, "invalid_request", "voucher_expired"
    )

    assert pay.get(f"/v1/vouchers/{voucher['id']}")["redeemed"] is True
    assert len(pay.get("/v1/vouchers")["data"]) == 2
    first = pay.get("/v1/vouchers?limit=1")
    rest = pay.get(f"/v1/vouchers?starting_after={first['data'][0]['id']}")
    assert first["has_more"] and len(rest["data"]) == 1 and rest["data"][0]["id"] != first["data"][0]["id"]
    assert_error(admin.get("/v1/vouchers/vch_0000000000000000"), 404, "not_found", "voucher_not_found")
    assert_error(pay.client("payer", "p1").post("/v1/vouchers", json={}), 403, "permission")
    assert_error(
        pay.client("payer", "p2").post("/v1/payers/p1/vouchers/redeem", json={"code": "X-1234"}), 404, "not_found"
    )


def test_voucher_expiry_must_be_rfc3339(pay: Payments, admin: TestClient) -> None:
    for expires in ("2026-06-28", "2026-06-28T00:00:00", "tomorrow", 1780000000):
        body = {"code": "ABCD-1", "ledger": "USD", "amount": 5, "expires_at": expires}
        error = assert_error(admin.post("/v1/vouchers", json=body), 400, "invalid_request")
        assert error["param"] == "expires_at"
    body = {"code": "ABCD-1", "ledger": "USD", "amount": 5, "expires_at": "2026-06-28T02:00:00+02:00"}
    assert admin.post("/v1/vouchers", json=body).json()["expires_at"] == "2026-06-28T00:00:00.000000Z"
    assert_error(admin.post("/v1/vouchers", json={**body, "code": "ABC"}), 422, "invalid_request", "invalid_code")


def test_expired_promo_is_swept_by_the_settler(pay: Payments, admin: TestClient, clock: Clock) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    admin.post(
        "/v1/vouchers", json={"code": "SOON-1", "ledger": "USD", "amount": 60, "expires_at": "2026-05-28T21:00:00Z"}
    )
    admin.post("/v1/payers/p1/vouchers/redeem", json={"code": "SOON-1"})
    pay.charge("c1", "p1", "m1", 20)
    assert tick(admin.app).handled["promo_due"] == 0
    clock.advance(3600)
    assert pay.get("/v1/payers/p1")["wallet"]["promo_balance"] == 0  # expired: no longer spendable
    assert pay.get("/v1/accounts/payer:p1:promo:USD")["balance"] == 40  # ...but not yet swept
    assert tick(admin.app).handled["promo_due"] == 1
    assert pay.get("/v1/accounts/payer:p1:promo:USD")["balance"] == 0
    assert pay.get("/v1/accounts/platform:promo_expired:USD")["balance"] == 40
    # A refund returns promo credit to its (expired) grant; the settler sweeps that too.
    pay.admin.post("/v1/charges/c1/refunds", json={})
    assert pay.get("/v1/accounts/payer:p1:promo:USD")["balance"] == 20
    clock.advance(1)
    assert tick(admin.app).handled["promo_due"] == 1
    assert pay.get("/v1/accounts/payer:p1:promo:USD")["balance"] == 0
    assert tick(admin.app).total == 0


# ----------------------------------------------------------------- passes
def test_passes_are_active_for_their_duration(pay: Payments, admin: TestClient, clock: Clock) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    pay.fund("p1", 100)
    bought = pay.client("payer", "p1").post(
        "/v1/passes", json={"id": "day", "payer_id": "p1", "merchant_id": "m1", "price": 60, "duration_s": 86_400}
    )
    assert bought.status_code == 201, bought.text
    day = bought.json()
    assert day["active"] is True and day["charge_id"] == "pass:day"
    assert day["valid_from"] == "2026-05-28T20:26:40.000000Z" and day["valid_until"] == "2026-05-29T20:26:40.000000Z"
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 40
    assert pay.get("/v1/charges/pass:day")["kind"] == "pass"
    body = {"id": "day", "payer_id": "p1", "merchant_id": "m1", "price": 60, "duration_s": 86_400}
    replay = admin.post("/v1/passes", json=body)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert_error(admin.post("/v1/passes", json={**body, "price": 61}), 409, "conflict")
    declined = admin.post("/v1/passes", json={**body, "id": "week", "duration_s": 7 * 86_400})
    assert_error(declined, 422, "payment_declined", "insufficient_funds")
    assert_error(
        admin.post("/v1/passes", json={**body, "id": "x", "duration_s": 0}), 422, "invalid_request", "invalid_duration"
    )
    assert_error(admin.post("/v1/passes", json={**body, "id": "x", "price": 1.5}), 400, "invalid_request")
    clock.advance(86_400)
    assert pay.get("/v1/passes/day")["active"] is False
    assert [p["id"] for p in pay.client("merchant", "m1").get("/v1/passes").json()["data"]] == ["day"]
    assert [p["id"] for p in pay.get("/v1/passes?payer_id=p1")["data"]] == ["day"]
    assert_error(pay.client("payer", "p2").get("/v1/passes"), 404, "not_found", "payer_not_found")
    pay.payer("p2")
    assert pay.client("payer", "p2").get("/v1/passes").json()["data"] == []
    assert_error(pay.client("payer", "p2").get("/v1/passes/day"), 404, "not_found", "pass_not_found")
    assert_error(
        pay.client("merchant", "m2").post("/v1/passes", json={**body, "id": "y"}),
        404,
        "not_found",
        "merchant_not_found",
    )
    assert_error(pay.client("publisher", "x").get("/v1/passes"), 403, "permission")


def test_charge_batch_answers_each_charge_as_alone(pay: Payments, admin: TestClient) -> None:
    pay.merchant("m1", bps=1000)
    pay.merchant("m2")
    pay.payer("p1")
    pay.fund("p1", 100)
    pay.charge("before", "p1", "m1", 10)
    charges = [
        {"id": "before", "payer_id": "p1", "merchant_id": "m1", "amount": 10},
        {"id": "a", "payer_id": "p1", "merchant_id": "m1", "amount": 50, "metadata": {"n": "1"}},
        {"id": "b", "payer_id": "p1", "merchant_id": "m1", "amount": 41},  # 40 left after "a"
        {"id": "c", "payer_id": "p1", "merchant_id": "m2", "amount": 40},
        {"id": "d", "payer_id": "p9", "merchant_id": "m1", "amount": 1},
        {"id": "before", "payer_id": "p1", "merchant_id": "m1", "amount": 11},
    ]
    response = admin.post("/v1/charges/batch", json={"charges": charges})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["index"], r["id"], r["result"]) for r in results] == [
        (0, "before", "exists"),
        (1, "a", "ok"),
        (2, "b", "insufficient_funds"),
        (3, "c", "ok"),
        (4, "d", "payer_not_found"),
        (5, "before", "exists_with_different_fields"),
    ]
    assert results[1]["charge"]["platform_fee"] == 5 and results[1]["charge"]["metadata"] == {"n": "1"}
    assert results[2]["charge"] is None
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 0
    assert pay.get("/v1/charges/a")["metadata"] == {"n": "1"}
    as_m2 = pay.client("merchant", "m2")
    mixed = as_m2.post(
        "/v1/charges/batch",
        json={
            "charges": [
                {"payer_id": "p1", "merchant_id": "m1", "amount": 1},
                {"payer_id": "p1", "merchant_id": "m2", "amount": 1},
            ]
        },
    ).json()["results"]
    assert [r["result"] for r in mixed] == ["merchant_not_found", "insufficient_funds"]
    assert_error(admin.post("/v1/charges/batch", json={"charges": []}), 400, "invalid_request")
    assert_error(
        admin.post("/v1/charges/batch", json={"charges": [{"payer_id": "p1", "merchant_id": "m1", "amount": 1.5}]}),
        400,
        "invalid_request",
    )
    assert_error(pay.client("publisher", "x").post("/v1/charges/batch", json={"charges": []}), 403, "permission")
