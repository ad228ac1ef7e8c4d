"""A bounded HTTP/1.1 load generator for the benchmarks, run in its own process.

Keep-alive connections to 127.0.0.1 only, each sending one request at a time and timing it;
stops by itself after ``duration_s``. Prints one JSON summary on stdout.

    python -m micropay.bench.loadgen --port P [--port P2 ...] --key K --mode single --connections 64 --duration-s 10

It shares the machine with the server it measures, so it stays lean: each connection is an
asyncio protocol (no stream objects), and request bodies are made from pre-rendered parts (the
random account pairs and amounts are drawn once; only the ids change from request to request).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

LOOPBACK = "127.0.0.1"
CONNECTIONS_MAX = 512
DURATION_S_MAX = 120.0
RESPONSE_BYTES_MAX = 64 * 1024 * 1024
HEAD_BYTES_MAX = 64 * 1024
SINGLE_BODIES_PER_CONNECTION = 1024
"""Random transfer bodies drawn per connection in single mode (used in turn, each with a new id)."""
BATCH_BODIES_PER_CONNECTION = 2
"""Random batch bodies drawn per connection in batch mode (used in turn, each with new ids)."""
_ID_MARK = b"\x00id\x00"
"""Stands for the request's id prefix in a pre-rendered batch body (never valid JSON text)."""


@dataclass(slots=True)
class ConnectionResult:
    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transfers_ok: int = 0
    errors: int = 0


def _transfer_tail(rng: random.Random, accounts: int, ledger: str) -> bytes:
    """A transfer's fields after its id: ``","debit_account_id":...}``."""
    debit = rng.randrange(accounts)
    credit = rng.randrange(accounts - 1)
    credit += credit >= debit
    fields = {
        "debit_account_id": f"acct-{debit}",
        "credit_account_id": f"acct-{credit}",
        "amount": rng.randrange(1, 1000),
        "ledger": ledger,
    }
    return b'",' + orjson.dumps(fields)[1:]


def _json_text(text: str) -> bytes:
    """``text`` as it goes between the quotes of a JSON string."""
    return orjson.dumps(text)[1:-1]


def _head(path: str, key: str) -> bytes:
    """A request's head up to the value of Content-Length."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: "
    ).encode()


RequestMaker = Callable[[], tuple[bytes, int]]
"""Makes the next request: its bytes and how many transfers it carries."""


def single_requests(args: argparse.Namespace, index: int) -> RequestMaker:
    rng = random.Random(args.seed * 1000 + index)
    tails = [_transfer_tail(rng, args.accounts, args.ledger) for _ in range(SINGLE_BODIES_PER_CONNECTION)]
    head = _head("/v1/transfers", args.key)
    prefix = b'{"id":"' + _json_text(f"{args.prefix}-{index}-")
    sequence = 0

    def make() -> tuple[bytes, int]:
        nonlocal sequence
        body = b"%s%d%s" % (prefix, sequence, tails[sequence % len(tails)])
        sequence += 1
        return b"%s%d\r\n\r\n%s" % (head, len(body), body), 1

    return make


def batch_requests(args: argparse.Namespace, index: int) -> RequestMaker:
    rng = random.Random(args.seed * 1000 + index)
    bodies = [
        b'{"transfers":['
        + b",".join(
            b'{"id":"%s-%d%s' % (_ID_MARK, i, _transfer_tail(rng, args.accounts, args.ledger))
            for i in range(args.batch_size)
        )
        + b"]}"
        for _ in range(BATCH_BODIES_PER_CONNECTION)
    ]
    head = _head("/v1/transfers/batch", args.key)
    sequence = 0

    def make() -> tuple[bytes, int]:
        nonlocal sequence
        ids = _json_text(f"{args.prefix}-{index}-{sequence}")
        body = bodies[sequence % len(bodies)].replace(_ID_MARK, ids)
        sequence += 1
        return b"%s%d\r\n\r\n%s" % (head, len(body), body), args.batch_size

    return make


def _content_length(head: bytes) -> int:
    at = head.lower().find(b"\r\ncontent-length:")
    if at < 0:
        return 0
    end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17 : end if end >= 0 else len(head)])
    if length > RESPONSE_BYTES_MAX:
        raise ValueError(f"response of {length} bytes is over the bound")
    return length


class LoadConnection(asyncio.Protocol):
    """One keep-alive connection: send a request, read its whole answer, time it, repeat."""

    def __init__(self, make: RequestMaker, deadline: float, result: ConnectionResult, done: asyncio.Future[None]):
        self._make = make
        self._deadline = deadline
        self._result = result
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._body_at = -1
        self._length = 0
        self._status = 0
        self._count = 0
        self._started = 0.0
        self._waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if time.perf_counter() >= self._deadline:
            transport.close()
            return
        request, self._count = self._make()
        self._waiting = True
        self._started = time.perf_counter()
        transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            while self._answer(buffer):
                pass
        except ValueError:
            self._result.errors += 1
            self._waiting = False
            if self._transport is not None:
                self._transport.close()

    def _answer(self, buffer: bytearray) -> bool:
        """Take one whole answer off ``buffer`` if there is one (and send the next request)."""
        if self._body_at < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > HEAD_BYTES_MAX:
                    raise ValueError("response head over the bound")
                return False
            head = bytes(buffer[:end])
            self._length = _content_length(head)
            self._status = int(head[9:12])
            self._body_at = end + 4
        end = self._body_at + self._length
        if len(buffer) < end:
            return False
        finished = time.perf_counter()
        result = self._result
        result.latencies_s.append(finished - self._started)
        status = self._status
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if status in (200, 201):
            if self._count == 1:
                result.transfers_ok += 1
            else:
                answer = orjson.loads(bytes(buffer[self._body_at : end]))
                result.transfers_ok += sum(1 for item in answer["results"] if item["result"] == "ok")
        del buffer[:end]
        self._body_at = -1
        self._waiting = False
        self._send()
        return bool(buffer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if exc is not None or self._waiting:
            self._result.errors += 1
        if not self._done.done():
            self._done.set_result(None)


async def _connection(index: int, args: argparse.Namespace, deadline: float, result: ConnectionResult) -> None:
    loop = asyncio.get_running_loop()
    make = single_requests(args, index) if args.mode == "single" else batch_requests(args, index)
    done: asyncio.Future[None] = loop.create_future()
    try:
        port = args.port[index % len(args.port)]  # connections spread over the servers in turn
        await loop.create_connection(lambda: LoadConnection(make, deadline, result, done), LOOPBACK, port)
    except OSError:
        result.errors += 1
        return
    await done


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
    parser.add_argument("--port", type=int, required=True, action="append", help="Repeat for several servers.")
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
    if args.accounts < 2 or args.batch_size < 1:
        parser.error("accounts >= 2, batch size >= 1")
    import uvloop  # comes with uvicorn[standard]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        summary = runner.run(_run(args))
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")


if __name__ == "__main__":
    main()
