"""``micropay serve`` and ``micropay keys create`` as real processes on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx2
import pytest

MICROPAY = str(Path(sys.executable).with_name("micropay"))
STARTUP_S_MAX = 30.0


@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str
    lines: list[str]


def _start(db_url: str, key_file: Path, log: IO[str], extra_args: Sequence[str] = ()) -> Server:
    process = subprocess.Popen(
        [
            MICROPAY,
            "serve",
            "--db",
            db_url,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--admin-key-file",
            str(key_file),
            *extra_args,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "MICROPAY_DB": "sqlite:///never-used.db"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + STARTUP_S_MAX
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Admin key file:"):
            match = re.search(r"listening on (http://\S+)", "\n".join(lines))
            assert match, lines
            return Server(process, match.group(1), lines)
    process.kill()
    raise AssertionError(f"server did not start: {lines}")


def _stop(server: Server) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=30)


def _keys_create(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MICROPAY, "keys", "create", *args, "--db", db_url], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[tuple[str, Path, IO[str]]]:
    with open(tmp_path / "server.log", "w", encoding="utf-8") as log:
        yield f"sqlite:///{tmp_path / 'live.db'}", tmp_path / "keys" / "admin.key", log


def test_serve_end_to_end(paths: tuple[str, Path, IO[str]]) -> None:
    db_url, key_file, log = paths
    server = _start(db_url, key_file, log)
    try:
        assert any(line == f"API docs: {server.url}/docs" for line in server.lines), server.lines
        assert str(key_file) in server.lines[-1]
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx2.Client(base_url=server.url, headers=headers, timeout=30) as client:
            assert client.get("/openapi.json").status_code == 200
            assert client.get("/docs").status_code == 200
            assert client.get("/v1/ledgers", headers={"Authorization": ""}).status_code == 401
            assert client.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
            for account_id in ("payer", "shop"):
                assert client.post("/v1/accounts", json={"id": account_id, "ledger": "USD"}).status_code == 201
            body = {
                "id": "live-1",
                "debit_account_id": "payer",
                "credit_account_id": "shop",
                "amount": 5,
                "ledger": "USD",
            }

            def post(_: int) -> Any:
                with httpx2.Client(base_url=server.url, headers=headers, timeout=30) as own:
                    return own.post("/v1/transfers", json=body)

            with ThreadPoolExecutor(max_workers=8) as pool:
                responses = list(pool.map(post, range(8)))
            assert sorted(response.status_code for response in responses) == [200] * 7 + [201]
            assert client.get("/v1/accounts/shop").json()["credits_posted"] == 5
            error = client.post("/v1/transfers", json={**body, "id": "live-2", "amount": 1.5}).json()["error"]
            assert error["type"] == "invalid_request" and error["param"] == "amount"

        locked = _keys_create(db_url, "--role", "admin")
        assert locked.returncode == 1
        assert "locked by a running Micropay server" in locked.stderr
    finally:
        assert _stop(server) == 0

    created = _keys_create(db_url, "--role", "merchant", "--subject", "m-1")
    assert created.returncode == 0, created.stderr
    merchant_key = created.stdout.strip().splitlines()[-1]
    assert merchant_key.startswith("mpk_") and " " not in merchant_key
    assert _keys_create(db_url, "--role", "payer").returncode == 2
    from_env = subprocess.run(
        [MICROPAY, "keys", "create", "--role", "admin"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "MICROPAY_DB": db_url},
    )
    assert from_env.returncode == 0, from_env.stderr  # $MICROPAY_DB names the database when --db is absent

    server = _start(db_url, key_file, log)  # same key file: kept, still valid; the data survived
    try:
        assert "WARNING" not in server.lines[-1]
        with httpx2.Client(base_url=server.url, timeout=30) as client:
            headers = {"Authorization": f"Bearer {key_file.read_text().strip()}"}
            assert client.get("/v1/transfers/live-1", headers=headers).json()["amount"] == 5
            merchant = client.get("/v1/ledgers", headers={"Authorization": f"Bearer {merchant_key}"})
            assert merchant.status_code == 403
    finally:
        assert _stop(server) == 0
