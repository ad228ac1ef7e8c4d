"""Several ``micropay serve`` processes on one PostgreSQL database, as production runs.

The bank test: four server processes, 32 clients moving money through all of them at once;
afterwards every acknowledged transfer is readable through every server, each account's totals
are exactly what the acknowledged transfers add up to, limits hold and the books balance. The
crash test: a server killed with SIGKILL while batches are in flight loses nothing it
acknowledged and leaves no half-written batch.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx2
import pytest
from test_api_serve import Server, _start, _stop

SERVERS = 4
CLIENTS = 32
SECONDS = 6.0
WALLETS = [f"wallet-{i}" for i in range(16)]
SHOPS = [f"shop-{i}" for i in range(4)]
ACCOUNTS = ["mint", *WALLETS, *SHOPS]
WALLET_FUNDS = 500
TIMEOUT_S = 30.0


@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[str]]:
    with open(tmp_path / "servers.log", "w", encoding="utf-8") as handle:
        yield handle


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _start_servers(count: int, db_url: str, key_file: Path, log: IO[str]) -> list[Server]:
    first = _start(db_url, key_file, log)  # creates the admin key file the others then read
    return [first, *(_start(db_url, key_file, log) for _ in range(count - 1))]


def _set_up(server: Server, key: str) -> None:
    with httpx2.Client(base_url=server.url, headers=_headers(key), timeout=TIMEOUT_S) as http:
        assert http.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
        for account_id in ACCOUNTS:
            flags = ["debits_must_not_exceed_credits"] if account_id.startswith("wallet") else []
            response = http.post("/v1/accounts", json={"id": account_id, "ledger": "USD", "flags": flags})
            assert response.status_code == 201, response.text
        funding = [
            {"id": f"seed-{w}", "debit_account_id": "mint", "credit_account_id": w, "amount": WALLET_FUNDS, "ledger": "USD"}
            for w in WALLETS
        ]
        response = http.post("/v1/transfers/batch", json={"transfers": funding})
        assert [r["result"] for r in response.json()["results"]] == ["ok"] * len(WALLETS)


class Client(threading.Thread):
    """Sends random single transfers and small batches to one server until the deadline."""

    def __init__(self, number: int, server: Server, key: str, deadline: float) -> None:
        super().__init__(name=f"client-{number}")
        self.number = number
        self.server = server
        self.key = key
        self.deadline = deadline
        self.rng = random.Random(number)
        self.acked: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []
        self.error: BaseException | None = None
        self.serial = 0

    def random_transfer(self) -> dict[str, Any]:
        self.serial += 1
        debit = self.rng.choice(WALLETS)
        credit = self.rng.choice([a for a in [*WALLETS, *SHOPS] if a != debit])
        return {
            "id": f"c{self.number}-{self.serial}",
            "debit_account_id": debit,
            "credit_account_id": credit,
            "amount": self.rng.randrange(1, 60),
            "ledger": "USD",
        }

    def run(self) -> None:
        try:
            with httpx2.Client(base_url=self.server.url, headers=_headers(self.key), timeout=TIMEOUT_S) as http:
                while time.monotonic() < self.deadline:
                    if self.rng.random() < 0.7:
                        self.single(http)
                    else:
                        self.batch(http)
        except BaseException as error:
            self.error = error

    def single(self, http: httpx2.Client) -> None:
        body = self.random_transfer()
        response = http.post("/v1/transfers", json=body)
        if response.status_code == 201:
            self.acked[body["id"]] = body
        else:
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "exceeds_credits", response.text
            self.refused.append(body["id"])

    def batch(self, http: httpx2.Client) -> None:
        bodies = [self.random_transfer() for _ in range(self.rng.randrange(2, 20))]
        response = http.post("/v1/transfers/batch", json={"transfers": bodies})
        assert response.status_code == 200, response.text
        for body, result in zip(bodies, response.json()["results"], strict=True):
            if result["result"] == "ok":
                self.acked[body["id"]] = body
            else:
                assert result["result"] == "exceeds_credits", result
                self.refused.append(body["id"])


def _expected_balances(acked: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    totals = {account_id: [0, 0] for account_id in ACCOUNTS}
    for wallet in WALLETS:
        totals["mint"][0] += WALLET_FUNDS
        totals[wallet][1] += WALLET_FUNDS
    for body in acked:
        totals[body["debit_account_id"]][0] += body["amount"]
        totals[body["credit_account_id"]][1] += body["amount"]
    return {account_id: (debits, credits) for account_id, (debits, credits) in totals.items()}


def _balances(http: httpx2.Client) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for account_id in ACCOUNTS:
        account = http.get(f"/v1/accounts/{account_id}").json()
        assert account["debits_pending"] == account["credits_pending"] == 0
        found[account_id] = (account["debits_posted"], account["credits_posted"])
    return found


@pytest.mark.slow
def test_four_server_processes_and_32_clients_keep_every_invariant(
    postgres_url: str, tmp_path: Path, log: IO[str]
) -> None:
    servers = _start_servers(SERVERS, postgres_url, tmp_path / "admin.key", log)
    try:
        key = (tmp_path / "admin.key").read_text().strip()
        _set_up(servers[0], key)
        deadline = time.monotonic() + SECONDS
        clients = [Client(n, servers[n % SERVERS], key, deadline) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(SECONDS + 120)
        assert [c.error for c in clients] == [None] * CLIENTS
        acked = [body for c in clients for body in c.acked.values()]
        refused = [transfer_id for c in clients for transfer_id in c.refused]
        assert len(acked) > 300 and refused, (len(acked), len(refused))

        expected = _expected_balances(acked)
        for server in servers:  # every process sees the same books
            with httpx2.Client(base_url=server.url, headers=_headers(key), timeout=TIMEOUT_S) as http:
                balances = _balances(http)
                assert balances == expected
        assert sum(d for d, _ in balances.values()) == sum(c for _, c in balances.values())
        for debits, credits in (balances[w] for w in WALLETS):
            assert debits <= credits  # debits_must_not_exceed_credits held under contention
        rng = random.Random(1)
        with httpx2.Client(base_url=servers[-1].url, headers=_headers(key), timeout=TIMEOUT_S) as http:
            for body in rng.sample(acked, 200):
                stored = http.get(f"/v1/transfers/{body['id']}").json()
                assert (stored["debit_account_id"], stored["amount"]) == (body["debit_account_id"], body["amount"])
            for transfer_id in rng.sample(refused, min(50, len(refused))):
                assert http.get(f"/v1/transfers/{transfer_id}").status_code == 404
    finally:
        for server in servers:
            _stop(server)


@pytest.mark.slow
def test_a_server_killed_mid_batch_loses_nothing_it_acknowledged(postgres_url: str, tmp_path: Path, log: IO[str]) -> None:
    victim, survivor = _start_servers(2, postgres_url, tmp_path / "admin.key", log)
    try:
        key = (tmp_path / "admin.key").read_text().strip()
        _set_up(survivor, key)
        deadline = time.monotonic() + 8
        clients = [Client(n, victim if n % 2 else survivor, key, deadline) for n in range(16)]
        for client in clients:
            client.start()
        time.sleep(2.0)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=30)
        for client in clients:
            client.join(60)
        survivors = [c for c in clients if c.server is survivor]
        assert [c.error for c in survivors] == [None] * len(survivors)
        assert all(c.error is not None for c in clients if c.server is victim)  # their server went away

        acked = [body for c in clients for body in c.acked.values()]
        with httpx2.Client(base_url=survivor.url, headers=_headers(key), timeout=TIMEOUT_S) as http:
            for body in acked:
                assert http.get(f"/v1/transfers/{body['id']}").status_code == 200, body
            # What the victim may have committed without answering is whole or absent:
            # the books balance and equal the stored transfers' sum.
            balances = _balances(http)
            assert sum(d for d, _ in balances.values()) == sum(c for _, c in balances.values())
            stored: list[dict[str, Any]] = []
            for account_id in WALLETS:
                params: dict[str, Any] = {"limit": 1000}
                while True:
                    page = http.get(f"/v1/accounts/{account_id}/transfers", params=params).json()
                    stored.extend(t for t in page["data"] if t["debit_account_id"] == account_id)
                    if not page["has_more"]:
                        break
                    params["starting_after"] = page["data"][-1]["id"]
            assert {t["id"] for t in stored} >= {body["id"] for body in acked}
            debited = {w: 0 for w in WALLETS}
            for t in stored:
                debited[t["debit_account_id"]] += t["amount"]
            assert all(balances[w][0] == debited[w] for w in WALLETS)
    finally:
        _stop(survivor)
