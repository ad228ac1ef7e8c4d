"""Collaborative pools over HTTP: publishers, sites, content, pools, joins, reads,
distributions and earnings, with the roles that may call each."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from api_support import assert_error
from starlette.testclient import TestClient

from micropay.engine import Engine
from micropay.models import payments
from micropay.models.rules import period_key
from micropay.settlement.rails import Rails

SPLIT = {"owner": 7000, "host": 1500, "referrer": 500, "platform": 1000}


def _stamp(ns: int) -> str:
    seconds, rest = divmod(ns, 10**9)
    moment = dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"


@pytest.fixture
def client_for(app: Any, make_key: Callable[..., str]) -> Iterator[Callable[..., TestClient]]:
    """Clients acting with a key of a role and subject."""
    clients: list[TestClient] = []

    def make(role: str, subject_id: str | None = None) -> TestClient:
        client = TestClient(app, headers={"Authorization": f"Bearer {make_key(role, subject_id)}"})
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def world(admin: TestClient, engine: Engine) -> dict[str, Any]:
    """USD; publishers pubA, pubB, pubC, each with site-X and art-X; pool1 (price 1000,
    70/15/5/10); prepay payers r0, r1, r2 holding 5000 each. Now: the engine's clock."""
    assert admin.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
    for publisher_id in ("pubA", "pubB", "pubC"):
        assert admin.post("/v1/publishers", json={"id": publisher_id, "ledger": "USD"}).status_code == 201
        site = admin.post("/v1/sites", json={"id": f"site-{publisher_id}", "publisher_id": publisher_id})
        assert site.status_code == 201, site.text
        content = admin.post("/v1/content", json={"id": f"art-{publisher_id}", "publisher_id": publisher_id})
        assert content.status_code == 201, content.text
    pool = admin.post("/v1/pools", json={"id": "pool1", "ledger": "USD", "price": 1000, "split_bps": SPLIT})
    assert pool.status_code == 201, pool.text
    rails = Rails()
    for payer_id in ("r0", "r1", "r2"):
        engine.call(payments.create_payer(payments.PayerRequest(payer_id, "USD", "prepay"), rails))
        engine.call(payments.topup(payments.TopupRequest(f"t-{payer_id}", payer_id, 5000, "card"), rails))
    return {"pool": pool.json()}


def _read(client: TestClient, read_id: str, payer: str, content: str, host: str, referrer: str | None, ns: int) -> Any:
    body: dict[str, Any] = {
        "id": read_id,
        "pool_id": "pool1",
        "payer_id": payer,
        "content_id": content,
        "host_site_id": host,
        "timestamp": _stamp(ns),
    }
    if referrer:
        body["referrer_site_id"] = referrer
    return client.post("/v1/reads", json=body)


def test_pool_end_to_end(
    admin: TestClient, world: dict[str, Any], client_for: Callable[..., TestClient], engine: Engine
) -> None:
    assert world["pool"]["split_bps"] == SPLIT and world["pool"]["balance"] == 0
    payer = client_for("payer", "r0")
    joined = payer.post("/v1/pools/pool1/members", json={})
    assert joined.status_code == 200, joined.text
    assert joined.json()["id"] == "pool1" and joined.json()["balance"] == 1000
    membership = joined.json()["membership"]
    assert (membership["payer_id"], membership["fee"]) == ("r0", 1000)
    again = payer.post("/v1/pools/pool1/members", json={"payer_id": "r0"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["balance"] == 1000  # charged once
    for payer_id in ("r1", "r2"):
        assert admin.post("/v1/pools/pool1/members", json={"payer_id": payer_id}).status_code == 200

    now = engine.call(lambda ctx: ctx.now_ns)
    first = _read(payer, "rd1", "r0", "art-pubA", "site-pubB", "site-pubC", now)
    assert first.status_code == 201, first.text
    assert first.json()["counted"] is True and first.json()["reason"] is None
    assert first.json()["referrer_site_id"] == "site-pubC"
    assert _read(payer, "rd2", "r0", "art-pubB", "site-pubB", None, now).status_code == 201
    repeat = _read(payer, "rd3", "r0", "art-pubB", "site-pubB", None, now + 1000)
    assert repeat.status_code == 201 and repeat.json()["counted"] is False and repeat.json()["reason"] == "repeat"
    replay = _read(payer, "rd3", "r0", "art-pubB", "site-pubB", None, now + 1000)
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert_error(_read(payer, "rd3", "r0", "art-pubC", "site-pubB", None, now), 409, "conflict")
    assert _read(admin, "rd4", "r1", "art-pubC", "site-pubA", None, now).status_code == 201

    period = period_key("month", now)
    created = admin.post("/v1/pools/pool1/distributions", json={"period": period})
    assert created.status_code == 201, created.text
    distribution = created.json()
    assert distribution["period"] == period and distribution["total"] == 2000
    assert distribution["id"] == f"pool1_{period}"
    lines = {(line["recipient_id"], line["role"]): line["amount"] for line in distribution["lines"]}
    assert lines == {
        ("platform", "platform"): 200,
        ("pubA", "host"): 150,
        ("pubA", "owner"): 350,
        ("pubB", "host"): 150,
        ("pubB", "owner"): 375,
        ("pubC", "owner"): 750,
        ("pubC", "referrer"): 25,
    }
    assert sum(lines.values()) == distribution["total"]
    assert (distribution["carried_out"], distribution["members"], distribution["members_paid"]) == (1000, 3, 2)
    assert admin.get(f"/v1/pools/pool1/distributions/{period}").json() == distribution
    assert admin.get("/v1/pools/pool1/distributions").json()["data"] == [distribution]
    assert admin.get("/v1/publishers/pubC").json()["balance"] == 775
    pool = admin.get("/v1/pools/pool1").json()
    assert (pool["balance"], pool["carried"], pool["distributed_periods"]) == (1000, 1000, [period])

    # Closed: distributing again, joining and reading answer as the contract says.
    again_distributed = admin.post("/v1/pools/pool1/distributions", json={"period": period})
    assert_error(again_distributed, 409, "conflict", "already_distributed")
    assert_error(payer.post("/v1/pools/pool1/members", json={}), 422, "invalid_request", "period_closed")
    assert_error(_read(payer, "rd9", "r0", "art-pubC", "site-pubA", None, now), 422, "invalid_request", "period_closed")

    # Publishers see what each member's fee paid them.
    publisher = client_for("publisher", "pubA")
    earnings = publisher.get(f"/v1/publishers/pubA/earnings?period={period}")
    assert earnings.status_code == 200, earnings.text
    body = earnings.json()
    assert (body["total"], body["balance"], body["has_more"]) == (500, 500, False)
    [entry] = body["data"]
    assert entry["pool_id"] == "pool1" and entry["network"] == []
    assert sorted((p["payer_id"], p["role"], p["amount"]) for p in entry["members"]) == [
        ("r0", "owner", 350),
        ("r1", "host", 150),
    ]
    assert publisher.get("/v1/publishers/pubA/earnings").json()["total"] == 500
    assert admin.get("/v1/publishers/pubA/earnings?period=2001-01").json()["data"] == []
    assert_error(publisher.get("/v1/publishers/pubB/earnings"), 404, "not_found", "publisher_not_found")
    assert_error(payer.get("/v1/publishers/pubA/earnings"), 403, "permission")
    assert_error(publisher.get("/v1/publishers/pubA/earnings?period=2026-13"), 400, "invalid_request")
    engine.verify()


def test_named_distribution_replays(admin: TestClient, world: dict[str, Any], engine: Engine) -> None:
    period = engine.call(lambda ctx: period_key("month", ctx.now_ns))
    first = admin.post("/v1/pools/pool1/distributions", json={"id": "march", "period": period})
    assert first.status_code == 201 and first.json()["id"] == "march" and first.json()["total"] == 0
    again = admin.post("/v1/pools/pool1/distributions", json={"id": "march", "period": period})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert_error(admin.post("/v1/pools/pool1/distributions", json={"period": period}), 409, "conflict")


def test_creates_replay_and_conflict(admin: TestClient, world: dict[str, Any]) -> None:
    body = {"id": "pubD", "ledger": "USD", "metadata": {"name": "D"}}
    assert admin.post("/v1/publishers", json=body).status_code == 201
    again = admin.post("/v1/publishers", json=body)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["metadata"] == {"name": "D"}
    assert_error(admin.post("/v1/publishers", json={**body, "metadata": {}}), 409, "conflict")
    pool = {"id": "pool1", "ledger": "USD", "price": 1000, "split_bps": SPLIT}
    assert admin.post("/v1/pools", json=pool).status_code == 200
    assert_error(admin.post("/v1/pools", json={**pool, "price": 5}), 409, "conflict", "exists_with_different_fields")
    assert_error(admin.post("/v1/sites", json={"id": "site-pubA", "publisher_id": "pubB"}), 409, "conflict")
    made = admin.post("/v1/content", json={"publisher_id": "pubA"})
    assert made.status_code == 201 and made.json()["id"].startswith("content_")
    listed = admin.get("/v1/content?limit=2").json()
    assert len(listed["data"]) == 2 and listed["has_more"] is True


def test_bad_requests(admin: TestClient, world: dict[str, Any]) -> None:
    uneven = {**SPLIT, "platform": 999}
    error = assert_error(
        admin.post("/v1/pools", json={"ledger": "USD", "price": 1000, "split_bps": uneven}),
        422,
        "invalid_request",
        "invalid_split",
    )
    assert error["param"] == "split_bps"
    assert_error(
        admin.post("/v1/pools", json={"ledger": "USD", "price": 10.0, "split_bps": SPLIT}), 400, "invalid_request"
    )
    assert_error(admin.post("/v1/pools", json={"ledger": "USD", "price": 1000}), 400, "invalid_request")
    partial = {"owner": 10000, "host": 0, "referrer": 0}
    assert_error(
        admin.post("/v1/pools", json={"ledger": "USD", "price": 1, "split_bps": partial}), 400, "invalid_request"
    )
    assert_error(
        admin.post("/v1/pools", json={"ledger": "USD", "price": 0, "split_bps": SPLIT}),
        422,
        "invalid_request",
        "invalid_price",
    )
    assert_error(admin.post("/v1/publishers", json={"ledger": "EUR"}), 404, "not_found", "ledger_not_found")
    assert_error(admin.post("/v1/sites", json={"publisher_id": "nobody"}), 404, "not_found", "publisher_not_found")
    assert_error(admin.post("/v1/pools/nopool/members", json={"payer_id": "r0"}), 404, "not_found", "pool_not_found")
    assert_error(admin.post("/v1/pools/pool1/members", json={}), 400, "invalid_request", "parameter_missing")
    assert_error(admin.post("/v1/pools/pool1/distributions", json={"period": "2026-3"}), 400, "invalid_request")
    assert_error(
        admin.post("/v1/pools/pool1/distributions", json={"period": "2999-01"}),
        422,
        "invalid_request",
        "period_not_started",
    )
    assert_error(admin.get("/v1/pools/pool1/distributions/2001-01"), 404, "not_found", "distribution_not_found")
    assert_error(admin.get("/v1/pools/nopool/distributions/2001-01"), 404, "not_found", "pool_not_found")
    assert_error(admin.post("/v1/publishers", json={"id": "platform", "ledger": "USD"}), 422, "invalid_request")


def test_read_refusals(admin: TestClient, world: dict[str, Any], engine: Engine) -> None:
    now = engine.call(lambda ctx: ctx.now_ns)
    error = assert_error(
        _read(admin, "x1", "r0", "art-pubA", "site-pubA", None, now), 422, "invalid_request", "not_a_member"
    )
    assert error["param"] == "payer_id"
    admin.post("/v1/pools/pool1/members", json={"payer_id": "r0"})
    assert_error(_read(admin, "x2", "r0", "nope", "site-pubA", None, now), 404, "not_found", "content_not_found")
    assert_error(_read(admin, "x3", "r0", "art-pubA", "nope", None, now), 404, "not_found", "site_not_found")
    future = now + 3600 * 10**9
    assert_error(_read(admin, "x4", "r0", "art-pubA", "site-pubA", None, future), 422, "invalid_request")
    bad = {"pool_id": "pool1", "payer_id": "r0", "content_id": "a", "host_site_id": "b", "timestamp": "yesterday"}
    assert_error(admin.post("/v1/reads", json=bad), 400, "invalid_request", "parameter_invalid")
    naive = {**bad, "timestamp": "2026-03-01T00:00:00"}
    assert_error(admin.post("/v1/reads", json=naive), 400, "invalid_request", "parameter_invalid")


def test_who_sees_what(
    admin: TestClient, world: dict[str, Any], client_for: Callable[..., TestClient], engine: Engine
) -> None:
    now = engine.call(lambda ctx: ctx.now_ns)
    r0, r1 = client_for("payer", "r0"), client_for("payer", "r1")
    publisher, merchant = client_for("publisher", "pubA"), client_for("merchant", "m1")
    # A payer acts only for itself: another payer's id is not found.
    assert_error(r0.post("/v1/pools/pool1/members", json={"payer_id": "r1"}), 404, "not_found", "payer_not_found")
    assert r0.post("/v1/pools/pool1/members", json={}).status_code == 200
    assert r1.post("/v1/pools/pool1/members", json={}).status_code == 200
    assert_error(_read(r0, "y0", "r1", "art-pubA", "site-pubA", None, now), 404, "not_found", "payer_not_found")
    assert _read(r0, "y1", "r0", "art-pubA", "site-pubA", None, now).status_code == 201
    assert _read(r1, "y2", "r1", "art-pubB", "site-pubA", None, now).status_code == 201
    assert r0.get("/v1/reads/y1").json()["id"] == "y1"
    assert_error(r0.get("/v1/reads/y2"), 404, "not_found", "read_not_found")
    assert [read["id"] for read in r0.get("/v1/reads").json()["data"]] == ["y1"]
    assert [read["id"] for read in admin.get("/v1/reads").json()["data"]] == ["y1", "y2"]
    assert [m["payer_id"] for m in r0.get("/v1/pools/pool1/members").json()["data"]] == ["r0"]
    assert [m["payer_id"] for m in admin.get("/v1/pools/pool1/members").json()["data"]] == ["r0", "r1"]
    assert [m["payer_id"] for m in admin.get("/v1/pools/pool1/members?starting_after=r0").json()["data"]] == ["r1"]
    # Pool terms are readable by payers and publishers; merchants are not part of pools.
    assert r0.get("/v1/pools/pool1").json()["price"] == 1000
    assert [pool["id"] for pool in publisher.get("/v1/pools").json()["data"]] == ["pool1"]
    assert_error(merchant.get("/v1/pools"), 403, "permission", "role_not_allowed")
    # Publishers read themselves, their sites and content; not others'.
    assert [p["id"] for p in publisher.get("/v1/publishers").json()["data"]] == ["pubA"]
    assert publisher.get("/v1/sites/site-pubA").json()["publisher_id"] == "pubA"
    assert_error(publisher.get("/v1/sites/site-pubB"), 404, "not_found", "site_not_found")
    assert_error(publisher.get("/v1/content/art-pubB"), 404, "not_found", "content_not_found")
    assert_error(publisher.get("/v1/publishers/pubB"), 404, "not_found", "publisher_not_found")
    # Only admin creates and distributes.
    assert_error(r0.post("/v1/pools", json={"ledger": "USD", "price": 1, "split_bps": SPLIT}), 403, "permission")
    assert_error(publisher.post("/v1/reads", json={}), 403, "permission")
    assert_error(publisher.post("/v1/sites", json={"publisher_id": "pubA"}), 403, "permission")
    assert_error(r0.post("/v1/pools/pool1/distributions", json={"period": "2026-01"}), 403, "permission")
    assert_error(publisher.get("/v1/pools/pool1/distributions"), 403, "permission")
