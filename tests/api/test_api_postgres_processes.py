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
import subprocess
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


def _stop_all(servers: list[Server]) -> None:
    """Stop every server; one that does not stop in time is killed, and the rest still stop."""
    for server in servers:
        try:
            _stop(server)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _start_servers(count: int, db_url: str, key_file: Path, log: IO[str], *, fronts: bool = False) -> list[Server]:
    """Start ``count`` servers one after another (the first creates the admin key file the
    others then read); if one fails to start, stop those already running. With ``fronts``,
    every second server runs behind a front process (``--front-processes 1``)."""
    servers: list[Server] = []
    try:
        for index in range(count):
            extra_args = ["--front-processes", "1"] if fronts and index % 2 else []
            servers.append(_start(db_url, key_file, log, extra_args))
    except BaseException:
        _stop_all(servers)
        raise
    return servers


def _set_up(server: Server, key: str) -> None:
    with httpx2.Client(base_url=server.url, headers=_headers(key), timeout=TIMEOUT_S) as http:
        assert http.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
        for account_id in ACCOUNTS:
            flags = ["debits_must_not_exceed_credits"] if account_id.startswith("wallet") else []
            response = http.post("/v1/accounts", json={"id": account_id, "ledger": "USD", "flags": flags})
            assert response.status_code == 201, response.text
        funding = [
            {
                "id": f"seed-{w}",
                "debit_account_id": "mint",
                "credit_account_id": w,
                "amount": WALLET_FUNDS,
                "ledger": "USD",
            }
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
    servers = _start_servers(SERVERS, postgres_url, tmp_path / "admin.key", log, fronts=True)
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
        _stop_all(servers)


@pytest.mark.slow
def test_a_server_killed_mid_batch_loses_nothing_it_acknowledged(
    postgres_url: str, tmp_path: Path, log: IO[str]
) -> None:
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
        _stop_all([survivor])


def _post_all(jobs: list[tuple[Server, str, dict[str, Any]]], key: str) -> list[httpx2.Response]:
    """POST every (server, path, body) at once, each from its own thread."""
    results: list[httpx2.Response | None] = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def send(index: int) -> None:
        server, path, body = jobs[index]
        with httpx2.Client(base_url=server.url, headers=_headers(key), timeout=TIMEOUT_S) as http:
            start.wait()
            results[index] = http.post(path, json=body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S * 2)
    assert None not in results
    return [r for r in results if r is not None]


@pytest.mark.slow
def test_payment_models_stay_exact_across_server_processes(postgres_url: str, tmp_path: Path, log: IO[str]) -> None:
    servers = _start_servers(2, postgres_url, tmp_path / "admin.key", log)
    try:
        key = (tmp_path / "admin.key").read_text().strip()
        with httpx2.Client(base_url=servers[0].url, headers=_headers(key), timeout=TIMEOUT_S) as http:
            assert http.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
            for payer_id in ("p1", "p2"):
                payer = {"id": payer_id, "ledger": "USD", "mode": "prepay"}
                assert http.post("/v1/payers", json=payer).status_code == 201
            merchant = {"id": "m1", "ledger": "USD", "fee": {"percent_bps": 0, "fixed": 0}, "payout": {"threshold": 0}}
            assert http.post("/v1/merchants", json=merchant).status_code == 201
            topup = http.post("/v1/payers/p1/topups", json={"id": "t1", "amount": 1000, "rail": "card"})
            assert topup.status_code == 201 and topup.json()["status"] == "succeeded", topup.text
            voucher = {"code": "GIFT-2026", "ledger": "USD", "amount": 50, "expires_at": "2099-01-01T00:00:00Z"}
            assert http.post("/v1/vouchers", json=voucher).status_code == 201

        # 40 different charges of 100 against a wallet of 1000, through both processes: exactly 10.
        charges = [
            (servers[n % 2], "/v1/charges", {"id": f"c{n}", "payer_id": "p1", "merchant_id": "m1", "amount": 100})
            for n in range(40)
        ]
        answers = _post_all(charges, key)
        assert sorted(r.status_code for r in answers) == [201] * 10 + [422] * 30
        assert {r.json()["error"]["code"] for r in answers if r.status_code == 422} == {"insufficient_funds"}

        # The same top-up sent to both processes at once: the wallet is credited once.
        topups = [(server, "/v1/payers/p1/topups", {"id": "t2", "amount": 200, "rail": "card"}) for server in servers]
        answers = _post_all(topups * 2, key)
        assert all(r.status_code in (200, 201) for r in answers), [r.text for r in answers]
        # The same charge sent to both processes at once; one voucher redeemed by two payers at once.
        replays = [(server, "/v1/charges", {"id": "again", "payer_id": "p1", "merchant_id": "m1", "amount": 30})
                   for server in servers for _ in range(4)]  # fmt: skip
        redeem = [(servers[n], f"/v1/payers/p{n + 1}/vouchers/redeem", {"code": "GIFT-2026"}) for n in range(2)]
        answers = _post_all(replays + redeem, key)
        charged = answers[: len(replays)]
        assert all(r.status_code in (200, 201) for r in charged), [r.text for r in charged]
        assert {r.json()["charged_at"] if "charged_at" in r.json() else r.json()["created_at"] for r in charged} == {
            charged[0].json().get("charged_at", charged[0].json()["created_at"])
        }  # every answer is the one charge
        redeemed = answers[len(replays) :]
        assert sorted(r.status_code for r in redeemed) == [200, 422], [r.text for r in redeemed]
        winner = next(n for n, r in enumerate(redeemed) if r.status_code == 200)
        assert redeemed[1 - winner].json()["error"]["code"] == "voucher_already_redeemed"

        with httpx2.Client(base_url=servers[1].url, headers=_headers(key), timeout=TIMEOUT_S) as http:
            wallets = [http.get(f"/v1/payers/p{n + 1}").json()["wallet"] for n in range(2)]
            # 1000 + 200 topped up once each, 10 x 100 + 30 charged once (promo credit first), 50 promo once.
            funds = [w["balance"] + w["promo_balance"] for w in wallets]
            assert funds == [1200 - 1030 + (50 if winner == 0 else 0), 50 if winner == 1 else 0], wallets
            merchant_account = http.get("/v1/accounts/merchant:m1").json()
            assert merchant_account["credits_posted"] - merchant_account["debits_posted"] == 1030
    finally:
        _stop_all(servers)
