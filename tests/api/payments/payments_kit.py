"""Helpers shared by the payment API tests (the fixtures are in this directory's conftest):
a settable engine clock, a client-side helper for setting up payers and merchants, and
concurrent posting through the ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2
from starlette.testclient import TestClient

from micropay.models.settler import Settler, TickReport

NS = 1_000_000_000
START_NS = 1_780_000_000 * NS  # 2026-05-28T20:26:40Z
"""Tests start here (a Thursday mid-month, not near a UTC day boundary)."""
BANK_DELAY_S = 2
CARD_FIXED_CENTS = 30
CARD_BPS = 290


def card_fee(amount: int) -> int:
    """The simulated card rail's fee in cents (0.30 + 2.9 %, rounded up), computed independently."""
    return CARD_FIXED_CENTS + (amount * CARD_BPS + 9_999) // 10_000


class Clock:
    """The engine clock: it moves only when a test moves it."""

    def __init__(self, start_ns: int = START_NS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * NS)


def tick(app: Any) -> TickReport:
    settler: Settler = app.state.settler
    return settler.tick()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Payments:
    """Set-up shorthands through the admin client; each asserts its create answered 201."""

    def __init__(self, admin: TestClient, make_key: Callable[..., str]) -> None:
        self.admin = admin
        self.make_key = make_key
        assert admin.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201

    def _created(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.admin.post(path, json=body)
        assert response.status_code == 201, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def payer(self, payer_id: str, mode: str = "prepay", **fields: Any) -> dict[str, Any]:
        return self._created("/v1/payers", {"id": payer_id, "ledger": "USD", "mode": mode, **fields})

    def merchant(self, merchant_id: str, *, bps: int = 0, fixed: int = 0, hold_days: int = 0) -> dict[str, Any]:
        body = {
            "id": merchant_id,
            "ledger": "USD",
            "fee": {"percent_bps": bps, "fixed": fixed},
            "payout": {"threshold": 0, "hold_days": hold_days},
        }
        return self._created("/v1/merchants", body)

    def fund(self, payer_id: str, amount: int, topup_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"amount": amount, "rail": "card"}
        if topup_id is not None:
            body["id"] = topup_id
        topup = self._created(f"/v1/payers/{payer_id}/topups", body)
        assert topup["status"] == "succeeded"
        return topup

    def charge(self, charge_id: str, payer_id: str, merchant_id: str, amount: int) -> dict[str, Any]:
        body = {"id": charge_id, "payer_id": payer_id, "merchant_id": merchant_id, "amount": amount}
        return self._created("/v1/charges", body)

    def get(self, path: str) -> dict[str, Any]:
        response = self.admin.get(path)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def client(self, role: str, subject_id: str) -> TestClient:
        """A client sending a key of ``role`` acting as ``subject_id`` (same app)."""
        client = TestClient(self.admin.app, headers=bearer(self.make_key(role, subject_id)))
        return client


async def _post_all(app: Any, key: str, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://testserver", headers=bearer(key)) as client:
        return list(await asyncio.gather(*(client.post(path, json=body) for body in bodies)))


def post_concurrently(app: Any, key: str, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
    """POST every body at once (one asyncio task each) through the ASGI app; the responses in order."""
    return asyncio.run(_post_all(app, key, path, bodies))
