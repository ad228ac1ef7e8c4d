"""Ledger core over HTTP: ledgers, accounts, transfers, batches, idempotent replays, pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from api_support import assert_error
from starlette.testclient import TestClient

Account = Callable[..., dict[str, Any]]

ACCOUNT_FIELDS = {
    "id",
    "ledger",
    "flags",
    "credit_limit",
    "debits_posted",
    "credits_posted",
    "debits_pending",
    "credits_pending",
    "balance",
    "available",
    "metadata",
    "created_at",
}
TRANSFER_FIELDS = {
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "ledger",
    "code",
    "flags",
    "pending_id",
    "timeout_s",
    "metadata",
    "timestamp",
    "created_at",
}


def transfer(**fields: Any) -> dict[str, Any]:
    return {"ledger": "USD", "flags": [], **fields}


def balance(admin: TestClient, account_id: str) -> dict[str, Any]:
    response = admin.get(f"/v1/accounts/{account_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ----------------------------------------------------------------- ledgers
def test_ledger_create_replay_conflict_and_read(admin: TestClient) -> None:
    created = admin.post("/v1/ledgers", json={"code": "USD", "scale": 2})
    assert created.status_code == 201
    assert created.json()["code"] == "USD" and created.json()["scale"] == 2
    assert created.json()["created_at"].endswith("Z")
    again = admin.post("/v1/ledgers", json={"code": "USD", "scale": 2})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == created.json()
    assert "Idempotent-Replayed" not in created.headers
    assert_error(
        admin.post("/v1/ledgers", json={"code": "USD", "scale": 6}), 409, "conflict", "exists_with_different_fields"
    )
    assert admin.get("/v1/ledgers/USD").json() == created.json()
    assert_error(admin.get("/v1/ledgers/EUR"), 404, "not_found", "ledger_not_found")


def test_ledger_list_pages(admin: TestClient) -> None:
    for code in ("AAA", "BBB", "CCC", "DDD", "EEE"):
        assert admin.post("/v1/ledgers", json={"code": code, "scale": 0}).status_code == 201
    first = admin.get("/v1/ledgers", params={"limit": 2}).json()
    assert [ledger["code"] for ledger in first["data"]] == ["AAA", "BBB"] and first["has_more"] is True
    rest = admin.get("/v1/ledgers", params={"limit": 3, "starting_after": "BBB"}).json()
    assert [ledger["code"] for ledger in rest["data"]] == ["CCC", "DDD", "EEE"] and rest["has_more"] is False


# ----------------------------------------------------------------- accounts
def test_account_shape_and_balances(admin: TestClient, usd: Account) -> None:
    alice = usd("alice", flags=["debits_must_not_exceed_credits"], credit_limit=500)
    assert set(alice) == ACCOUNT_FIELDS
    assert alice["flags"] == ["debits_must_not_exceed_credits"]
    assert alice["credit_limit"] == 500 and alice["available"] == 500 and alice["balance"] == 0
    usd("bank")
    assert (
        admin.post(
            "/v1/transfers", json=transfer(id="t1", debit_account_id="bank", credit_account_id="alice", amount=1000)
        ).status_code
        == 201
    )
    pending = transfer(id="t2", debit_account_id="alice", credit_account_id="bank", amount=300, flags=["pending"])
    assert admin.post("/v1/transfers", json=pending).status_code == 201
    alice = balance(admin, "alice")
    assert (alice["credits_posted"], alice["debits_pending"], alice["balance"]) == (1000, 300, 1000)
    assert alice["available"] == 1000 - 300 + 500


def test_account_replay_and_conflicts(admin: TestClient, usd: Account) -> None:
    body = {"id": "acc-1", "ledger": "USD", "flags": [], "credit_limit": 10, "metadata": {"owner": "x"}}
    assert admin.post("/v1/accounts", json=body).status_code == 201
    again = admin.post("/v1/accounts", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["metadata"] == {"owner": "x"}
    for changed in ({"credit_limit": 11}, {"flags": ["credits_must_not_exceed_debits"]}, {"metadata": {}}):
        assert_error(
            admin.post("/v1/accounts", json={**body, **changed}), 409, "conflict", "exists_with_different_fields"
        )
    error = assert_error(admin.post("/v1/accounts", json={"id": "acc-2", "ledger": "EUR"}), 404, "not_found")
    assert error["code"] == "ledger_not_found" and error["param"] == "ledger"


def test_account_without_id_gets_one(admin: TestClient, usd: Account) -> None:
    first = admin.post("/v1/accounts", json={"ledger": "USD"})
    second = admin.post("/v1/accounts", json={"ledger": "USD"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]


def test_patch_credit_limit(admin: TestClient, usd: Account) -> None:
    usd("alice", flags=["debits_must_not_exceed_credits"])
    usd("shop")
    assert_error(
        admin.post(
            "/v1/transfers", json=transfer(id="t1", debit_account_id="alice", credit_account_id="shop", amount=5)
        ),
        422,
        "invalid_request",
        "exceeds_credits",
    )
    patched = admin.patch("/v1/accounts/alice", json={"credit_limit": 100})
    assert patched.status_code == 200 and patched.json()["credit_limit"] == 100
    moved = admin.post(
        "/v1/transfers", json=transfer(id="t1", debit_account_id="alice", credit_account_id="shop", amount=80)
    )
    assert moved.status_code == 201
    assert_error(
        admin.patch("/v1/accounts/alice", json={"credit_limit": 50}), 422, "invalid_request", "credit_limit_below_usage"
    )
    assert_error(admin.patch("/v1/accounts/ghost", json={"credit_limit": 50}), 404, "not_found", "account_not_found")
    assert_error(admin.get("/v1/accounts/ghost"), 404, "not_found", "account_not_found")


def test_account_list_pages(admin: TestClient, usd: Account) -> None:
    for index in range(5):
        usd(f"acc-{index}")
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"starting_after": after} if after else {})
        page = admin.get("/v1/accounts", params=params).json()
        seen += [account["id"] for account in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == [f"acc-{index}" for index in range(5)]
    assert len(admin.get("/v1/accounts").json()["data"]) == 5
    assert_error(admin.get("/v1/accounts", params={"limit": 1001}), 400, "invalid_request")
    assert_error(admin.get("/v1/accounts", params={"limit": 0}), 400, "invalid_request")


# ----------------------------------------------------------------- transfers
def test_transfer_create_replay_conflict(admin: TestClient, usd: Account) -> None:
    usd("a")
    usd("b")
    body = transfer(id="t1", debit_account_id="a", credit_account_id="b", amount=250, code=7, metadata={"order": "42"})
    created = admin.post("/v1/transfers", json=body)
    assert created.status_code == 201, created.text
    moved = created.json()
    assert set(moved) == TRANSFER_FIELDS
    assert (moved["amount"], moved["code"], moved["flags"], moved["pending_id"]) == (250, 7, [], None)
    assert moved["metadata"] == {"order": "42"} and moved["created_at"].endswith("Z")
    again = admin.post("/v1/transfers", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == moved
    assert_error(
        admin.post("/v1/transfers", json={**body, "amount": 251}), 409, "conflict", "exists_with_different_fields"
    )
    assert balance(admin, "b")["credits_posted"] == 250
    assert admin.get("/v1/transfers/t1").json() == moved
    assert_error(admin.get("/v1/transfers/nope"), 404, "not_found", "transfer_not_found")


def test_transfer_result_codes(admin: TestClient, usd: Account) -> None:
    usd("a")
    usd("b")
    assert admin.post("/v1/ledgers", json={"code": "EUR", "scale": 2}).status_code == 201
    assert admin.post("/v1/accounts", json={"id": "e", "ledger": "EUR"}).status_code == 201
    cases = [
        (transfer(id="x1", debit_account_id="a", credit_account_id="a", amount=1), 422, "accounts_must_be_different"),
        (transfer(id="x2", debit_account_id="zz", credit_account_id="b", amount=1), 404, "debit_account_not_found"),
        (transfer(id="x3", debit_account_id="a", credit_account_id="zz", amount=1), 404, "credit_account_not_found"),
        (transfer(id="x4", debit_account_id="a", credit_account_id="e", amount=1), 422, "ledger_mismatch"),
        (transfer(id="x5", debit_account_id="a", credit_account_id="b", amount=0), 422, "amount_must_be_positive"),
        (transfer(id="x6", debit_account_id="a", credit_account_id="b", amount=-5), 422, "amount_must_be_positive"),
        (transfer(id="x7", pending_id="nope", flags=["post_pending"]), 404, "pending_transfer_not_found"),
        (
            transfer(id="x8", debit_account_id="a", credit_account_id="b", amount=1, flags=["linked"]),
            422,
            "linked_event_chain_open",
        ),
    ]
    for body, status, code in cases:
        assert_error(
            admin.post("/v1/transfers", json=body), status, "not_found" if status == 404 else "invalid_request", code
        )
        assert admin.get(f"/v1/transfers/{body['id']}").status_code == 404
    assert balance(admin, "a")["debits_posted"] == 0


def test_pending_post_and_void(admin: TestClient, usd: Account) -> None:
    usd("payer", flags=["debits_must_not_exceed_credits"], credit_limit=1000)
    usd("shop")
    hold = transfer(
        id="p1", debit_account_id="payer", credit_account_id="shop", amount=600, flags=["pending"], timeout_s=3600
    )
    assert admin.post("/v1/transfers", json=hold).status_code == 201
    assert balance(admin, "payer")["available"] == 400
    assert_error(
        admin.post(
            "/v1/transfers", json=transfer(id="p2", debit_account_id="payer", credit_account_id="shop", amount=500)
        ),
        422,
        "invalid_request",
        "exceeds_credits",
    )
    post = {"id": "p1-post", "pending_id": "p1", "amount": 450, "flags": ["post_pending"]}
    posted = admin.post("/v1/transfers", json=post)
    assert posted.status_code == 201, posted.text
    assert posted.json()["amount"] == 450 and posted.json()["debit_account_id"] == "payer"
    assert posted.json()["pending_id"] == "p1" and posted.json()["flags"] == ["post_pending"]
    payer = balance(admin, "payer")
    assert (payer["debits_posted"], payer["debits_pending"], payer["available"]) == (450, 0, 550)
    assert_error(
        admin.post("/v1/transfers", json={"id": "p1-void", "pending_id": "p1", "flags": ["void_pending"]}),
        422,
        "invalid_request",
        "pending_transfer_already_posted",
    )
    hold2 = {**hold, "id": "p3", "amount": 100}
    assert admin.post("/v1/transfers", json=hold2).status_code == 201
    assert (
        admin.post("/v1/transfers", json={"id": "p3-void", "pending_id": "p3", "flags": ["void_pending"]}).status_code
        == 201
    )
    assert balance(admin, "payer")["debits_pending"] == 0


def test_balancing_debit_moves_what_fits(admin: TestClient, usd: Account) -> None:
    usd("payer", flags=["debits_must_not_exceed_credits"], credit_limit=70)
    usd("shop")
    body = transfer(id="bal", debit_account_id="payer", credit_account_id="shop", amount=100, flags=["balancing_debit"])
    moved = admin.post("/v1/transfers", json=body)
    assert moved.status_code == 201 and moved.json()["amount"] == 70


def test_batch_results_and_linked_chains(admin: TestClient, usd: Account) -> None:
    usd("a", flags=["debits_must_not_exceed_credits"], credit_limit=100)
    usd("b")
    transfers = [
        transfer(id="b1", debit_account_id="a", credit_account_id="b", amount=10),
        transfer(id="b2", debit_account_id="a", credit_account_id="b", amount=10, flags=["linked"]),
        transfer(id="b3", debit_account_id="a", credit_account_id="b", amount=1000),
        transfer(id="b4", debit_account_id="a", credit_account_id="zz", amount=1),
        transfer(id="b1", debit_account_id="a", credit_account_id="b", amount=10),
        transfer(id="b5", debit_account_id="a", credit_account_id="b", amount=5, flags=["linked"]),
    ]
    response = admin.post("/v1/transfers/batch", json={"transfers": transfers})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["id"] for r in results] == ["b1", "b2", "b3", "b4", "b1", "b5"]
    assert [r["result"] for r in results] == [
        "ok",
        "linked_event_failed",
        "exceeds_credits",
        "credit_account_not_found",
        "exists",
        "linked_event_chain_open",
    ]
    assert balance(admin, "a")["debits_posted"] == 10


def test_full_batch_of_8190(admin: TestClient, usd: Account) -> None:
    usd("a")
    usd("b")
    transfers = [transfer(id=f"f{i}", debit_account_id="a", credit_account_id="b", amount=1) for i in range(8190)]
    response = admin.post("/v1/transfers/batch", json={"transfers": transfers})
    assert response.status_code == 200
    assert {r["result"] for r in response.json()["results"]} == {"ok"}
    assert balance(admin, "b")["credits_posted"] == 8190
    too_many = admin.post("/v1/transfers/batch", json={"transfers": [*transfers, transfers[0]]})
    assert_error(too_many, 400, "invalid_request")
    assert_error(admin.post("/v1/transfers/batch", json={"transfers": []}), 400, "invalid_request")


def test_batch_item_missing_field_names_its_index(admin: TestClient, usd: Account) -> None:
    usd("a")
    usd("b")
    transfers = [
        transfer(id="m1", debit_account_id="a", credit_account_id="b", amount=1),
        {"id": "m2", "ledger": "USD"},
    ]
    error = assert_error(admin.post("/v1/transfers/batch", json={"transfers": transfers}), 400, "invalid_request")
    assert error["code"] == "parameter_missing" and error["param"] == "transfers[1].debit_account_id"
    assert admin.get("/v1/transfers/m1").status_code == 404


def test_account_transfers_newest_first_and_paged(admin: TestClient, usd: Account) -> None:
    usd("a")
    usd("b")
    usd("c")
    for index in range(7):
        body = transfer(
            id=f"h{index}", debit_account_id="a", credit_account_id="b" if index % 2 else "c", amount=index + 1
        )
        assert admin.post("/v1/transfers", json=body).status_code == 201
    ids: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"starting_after": after} if after else {})
        page = admin.get("/v1/accounts/a/transfers", params=params).json()
        ids += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        after = ids[-1]
    assert ids == [f"h{index}" for index in reversed(range(7))]
    b_ids = [item["id"] for item in admin.get("/v1/transfers", params={"account_id": "b"}).json()["data"]]
    assert b_ids == ["h5", "h3", "h1"]
    exact = admin.get("/v1/accounts/b/transfers", params={"limit": 3}).json()
    assert exact["has_more"] is False
    assert_error(admin.get("/v1/accounts/ghost/transfers"), 404, "not_found", "account_not_found")
    assert_error(admin.get("/v1/accounts/b/transfers", params={"starting_after": "h2"}), 404, "not_found")
    assert_error(admin.get("/v1/transfers"), 400, "invalid_request", "parameter_missing")
