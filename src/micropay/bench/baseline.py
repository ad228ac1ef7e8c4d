"""The floor of one HTTP request on this machine: a bare asyncio protocol answering a constant.

``micropay bench http`` runs the same load generator against it as against the server, so a
figure measured on a machine whose speed drifts can be read as a ratio to what the machine did
at the time (``single_vs_baseline``). Runs in its own process, on 127.0.0.1 only, and stops by
itself after ``--lifetime-s``:

    python -m micropay.bench.baseline --port P --lifetime-s 30
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop

LOOPBACK = "127.0.0.1"
LIFETIME_S_MAX = 300.0
BODY = b'{"result":"ok"}'
ANSWER = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)


class ConstantAnswer(asyncio.Protocol):
    """Parses each request (httptools, as uvicorn does) and answers it with ``ANSWER``."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.close()

    def on_message_complete(self) -> None:
        if self._transport is not None:
            self._transport.write(ANSWER)


async def _serve(port: int, lifetime_s: float) -> None:
    server = await asyncio.get_running_loop().create_server(ConstantAnswer, LOOPBACK, port)
    async with server:
        await asyncio.sleep(lifetime_s)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not 0 < args.lifetime_s <= LIFETIME_S_MAX:
        parser.error(f"--lifetime-s must be in (0, {LIFETIME_S_MAX}]")
    uvloop.run(_serve(args.port, args.lifetime_s))


if __name__ == "__main__":
    main()
