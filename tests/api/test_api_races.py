"""Identical requests racing: the first answers 201, the others replay it, money moves once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2
from starlette.testclient import TestClient

from micropay.engine import Engine

Account = Callable[..., dict[str, Any]]
RACERS = 16


async def _race(app: Any, admin_key: str, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
    transport = httpx2.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {admin_key}"}
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
        return list(await asyncio.gather(*(client.post(path, json=body) for body in bodies)))


def test_identical_transfers_racing_move_money_once(app: Any, admin_key: str, admin: TestClient, usd: Account) -> None:
    usd("payer", flags=["debits_must_not_exceed_credits"], credit_limit=1000)
    usd("shop")
    body = {"id": "race-1", "debit_account_id": "payer", "credit_account_id": "shop", "amount": 700, "ledger": "USD"}
    responses = asyncio.run(_race(app, admin_key, "/v1/transfers", [body] * RACERS))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (RACERS - 1) + [201]
    first = next(response for response in responses if response.status_code == 201)
    for response in responses:
        assert response.json() == first.json()
        if response.status_code == 200:
            assert response.headers["Idempotent-Replayed"] == "true"
    payer = admin.get("/v1/accounts/payer").json()
    assert payer["debits_posted"] == 700 and payer["available"] == 300
    assert len(admin.get("/v1/accounts/payer/transfers").json()["data"]) == 1


def test_same_id_different_bodies_racing_one_wins(app: Any, admin_key: str, admin: TestClient, usd: Account) -> None:
    usd("a")
    usd("b")
    bodies = [
        {"id": "race-2", "debit_account_id": "a", "credit_account_id": "b", "amount": amount, "ledger": "USD"}
        for amount in range(1, RACERS + 1)
    ]
    responses = asyncio.run(_race(app, admin_key, "/v1/transfers", bodies))
    assert sorted(response.status_code for response in responses) == [201] + [409] * (RACERS - 1)
    won = next(response for response in responses if response.status_code == 201).json()["amount"]
    assert admin.get("/v1/accounts/b").json()["credits_posted"] == won


def test_identical_accounts_and_ledgers_racing(app: Any, admin_key: str, admin: TestClient) -> None:
    ledgers = asyncio.run(_race(app, admin_key, "/v1/ledgers", [{"code": "KRW", "scale": 0}] * RACERS))
    assert sorted(response.status_code for response in ledgers) == [200] * (RACERS - 1) + [201]
    body = {"id": "acct-race", "ledger": "KRW", "credit_limit": 5}
    accounts = asyncio.run(_race(app, admin_key, "/v1/accounts", [body] * RACERS))
    assert sorted(response.status_code for response in accounts) == [200] * (RACERS - 1) + [201]
    assert admin.get("/v1/accounts", params={"limit": 1000}).json()["data"][0]["id"] == "acct-race"


def test_concurrent_distinct_transfers_share_batches(
    app: Any, admin_key: str, admin: TestClient, usd: Account, engine: Engine
) -> None:
    usd("a")
    usd("b")
    batches_before = engine.stats.batches
    bodies = [
        {"id": f"many-{index}", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "ledger": "USD"}
        for index in range(200)
    ]
    responses = asyncio.run(_race(app, admin_key, "/v1/transfers", bodies))
    assert {response.status_code for response in responses} == {201}
    assert admin.get("/v1/accounts/b").json()["credits_posted"] == 200
    assert engine.stats.batches - batches_before < 200  # group commit: requests shared batches
