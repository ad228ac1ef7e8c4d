"""A bounded HTTP/1.1 load generator for the benchmarks, run in its own process.

Keep-alive connections to 127.0.0.1 only, each sending one request at a time and timing it;
stops by itself after ``duration_s``. Prints one JSON summary on stdout.

    python -m micropay.bench.loadgen --port P --key K --mode single --connections 64 --duration-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

import orjson

LOOPBACK = "127.0.0.1"
CONNECTIONS_MAX = 512
DURATION_S_MAX = 120.0
RESPONSE_BYTES_MAX = 64 * 1024 * 1024


@dataclass(slots=True)
class ConnectionResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transfers_ok: int = 0
    errors: int = 0


def _request_bytes(path: str, key: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:].strip())
    if length > RESPONSE_BYTES_MAX:
        raise ValueError(f"response of {length} bytes is over the bound")
    body = await reader.readexactly(length) if length else b""
    return status, body


def _transfer(rng: random.Random, transfer_id: str, accounts: int, ledger: str) -> dict[str, object]:
    debit = rng.randrange(accounts)
    credit = rng.randrange(accounts - 1)
    credit += credit >= debit
    return {
        "id": transfer_id,
        "debit_account_id": f"acct-{debit}",
        "credit_account_id": f"acct-{credit}",
        "amount": rng.randrange(1, 1000),
        "ledger": ledger,
    }


async def _connection(index: int, args: argparse.Namespace, deadline: float, result: ConnectionResult) -> None:
    rng = random.Random(args.seed * 1000 + index)
    reader, writer = await asyncio.open_connection(LOOPBACK, args.port)
    sequence = 0
    try:
        while time.perf_counter() < deadline:
            if args.mode == "single":
                path = "/v1/transfers"
                body = orjson.dumps(_transfer(rng, f"{args.prefix}-{index}-{sequence}", args.accounts, args.ledger))
                count = 1
            else:
                path = "/v1/transfers/batch"
                transfers = [
                    _transfer(rng, f"{args.prefix}-{index}-{sequence}-{i}", args.accounts, args.ledger)
                    for i in range(args.batch_size)
                ]
                body = orjson.dumps({"transfers": transfers})
                count = args.batch_size
            sequence += 1
            started = time.perf_counter()
            writer.write(_request_bytes(path, args.key, body))
            status, answer = await _read_response(reader)
            result.latencies_s.append(time.perf_counter() - started)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status in (200, 201):
                if count == 1:
                    result.transfers_ok += 1
                else:
                    results = orjson.loads(answer)["results"]
                    result.transfers_ok += sum(1 for item in results if item["result"] == "ok")
    except (OSError, asyncio.IncompleteReadError, ValueError):
        result.errors += 1
    finally:
        writer.close()


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(fraction * len(sorted_values)))
    return sorted_values[index]


async def _run(args: argparse.Namespace) -> dict[str, object]:
    results = [ConnectionResult() for _ in range(args.connections)]
    started = time.perf_counter()
    deadline = started + args.duration_s
    await asyncio.gather(*(_connection(i, args, deadline, results[i]) for i in range(args.connections)))
    elapsed = time.perf_counter() - started
    latencies = sorted(latency for result in results for latency in result.latencies_s)
    statuses: dict[str, int] = {}
    for result in results:
        for status, count in result.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    return {
        "elapsed_s": elapsed,
        "requests": len(latencies),
        "transfers_ok": sum(result.transfers_ok for result in results),
        "p50_ms": _percentile(latencies, 0.50) * 1000,
        "p99_ms": _percentile(latencies, 0.99) * 1000,
        "statuses": statuses,
        "connection_errors": sum(result.errors for result in results),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--mode", choices=("single", "batch"), default="single")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--ledger", default="USD")
    parser.add_argument("--batch-size", type=int, default=8190)
    parser.add_argument("--prefix", default="load")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not 0 < args.connections <= CONNECTIONS_MAX or not 0 < args.duration_s <= DURATION_S_MAX:
        parser.error(f"connections 1..{CONNECTIONS_MAX}, duration 0..{DURATION_S_MAX} s")
    import uvloop  # comes with uvicorn[standard]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        summary = runner.run(_run(args))
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")


if __name__ == "__main__":
    main()
