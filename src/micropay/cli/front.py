"""A front process of ``micropay serve --front-processes N``: it owns the client connections.

The server process holds the engine and the app, and the interpreter lock it runs them under is
shared by everything it does: reading sockets, parsing requests, writing answers. A front
process takes the sockets off it. It accepts connections on the server's listening socket and
reads requests with a strict parser of its own (``parse_head``). Over the link to the server
(``micropay.cli.front_wire``), a whole request then goes

- to a direct lane (``micropay.api.direct``: ``POST /v1/transfers``, ``POST /v1/charges``) if
  it is a plain one: the server's lane answers it with its own checks and answer;
- to the server's own HTTP protocol if it is any other plainly framed request (or one the lane
  declines): the server answers it through an in-memory transport;

and the answer comes back to be written here: the connection stays with the front. Anything
the strict parser is not sure of is handed over: the connection's descriptor goes to the server
with the bytes read from it so far, and the server's protocol serves it from then on, exactly as
if it had accepted it.

Plainly framed means: ``HTTP/1.1``, an origin-form target, well-formed header lines, at most one
``Content-Length`` (of at most the body limit), no ``Transfer-Encoding``, ``Expect`` or
``Upgrade``, and a ``Connection`` header (if any) of ``keep-alive`` or ``close``; a body of at
most ``RELAY_BODY_BYTES_MAX`` (a batch, larger, is handed over with its connection). A plain lane
request also has one ``Content-Type``, one ``Authorization`` and a body of at most the lane's
limit. One request per connection is in flight at a time; bytes pipelined behind it wait here
until it is answered.

Limits: a head of at most ``HEAD_BYTES_MAX`` (a longer one is handed over); at most
``BUFFERED_BYTES_MAX`` read ahead per connection before reading pauses; an idle connection is
closed ``--keep-alive-s`` after its last answer. The process exits when the link closes (the
server stopped or died), and on ``STOP`` once what is in flight is answered.

    python -m micropay.cli.front --listen-fd N --link-fd M --lane /v1/transfers --lane /v1/charges
        --lane-body-bytes-max 16384 --relay-body-bytes-max 65536 --keep-alive-s 5
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import re
import signal
import socket
import sys
from collections import deque
from typing import NamedTuple

from micropay.cli.front_wire import (
    ANSWER,
    ANSWER_FIELDS,
    CONNECTION_NUMBER_MAX,
    HAND_OVER,
    LANE,
    LANE_FIELDS,
    READ_BYTES,
    RELAY,
    STOP,
    WireError,
    frame,
    frames,
)
from micropay.runtime import tune_garbage_collector

HEAD_BYTES_MAX = 8192
"""Longest request head read here (a longer one is handed over, and the server decides)."""
RELAY_BODY_BYTES_MAX = 64 * 1024
"""Largest body of a request relayed to the server (a larger one, such as a batch, is handed
over with its connection: the server's own protocol then serves it as well as the front would,
without copying the body and the answer across the link)."""
BUFFERED_BYTES_MAX = 64 * 1024
"""Bytes read ahead on a connection while its request is in flight, before reading pauses."""
IDLE_CHECK_S = 1.0
REMEMBERED_HEADS_MAX = 4096
"""Request heads whose reading is remembered (all are forgotten when this many are)."""
REMEMBERED_HEAD_BYTES_MAX = 1024
LINK_BACKLOG_BYTES_MAX = 64 * 1024 * 1024
"""Unsent bytes the link may hold before the front stops reading requests (the server is not
reading its end)."""

_HEADER_LINES = re.compile(
    rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[ \t]*(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?[ \t]*\r\n)*"
)
"""Header lines as RFC 9110 has them (a token, a colon, a value of visible characters with inner
spaces), each ending in CRLF: no folded lines, no bare CR or LF, no control characters."""


class Head(NamedTuple):
    """What the front read from a request's head."""

    lane: int  # the lane's number, or -1: a request for the server's protocol (relayed)
    keep_alive: bool
    content_type: bytes
    authorization: bytes
    body_bytes: int


def parse_head(
    head: bytes, lanes: dict[bytes, int], lane_body_bytes_max: int, relay_body_bytes_max: int
) -> Head | None:
    """What the front makes of a request with this ``head`` (request line, header lines, empty
    line): a lane request, a request to relay, or None: one to hand over with its connection."""
    line_end = head.find(b"\r\n")
    parts = head[:line_end].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1].startswith(b"/"):
        return None
    block = head[line_end + 2 : -2]
    if not _HEADER_LINES.fullmatch(block):
        return None
    length = -1
    content_type: bytes | None = None
    authorization: bytes | None = None
    keep_alive = True
    single = True
    for line in block.split(b"\r\n")[:-1]:
        name, _, value = line.partition(b":")
        name = name.lower()
        value = value.strip(b" \t")
        if name == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > 9:
                return None
            length = int(value)
        elif name == b"content-type":
            single = single and content_type is None
            content_type = value
        elif name == b"authorization":
            single = single and authorization is None
            authorization = value
        elif name == b"connection":
            token = value.lower()
            if token == b"close":
                keep_alive = False
            elif token != b"keep-alive":
                return None
        elif name == b"transfer-encoding" or name == b"expect" or name == b"upgrade":
            return None
    body_bytes = max(length, 0)
    lane = lanes.get(parts[1], -1) if parts[0] == b"POST" else -1
    if (
        lane >= 0
        and single
        and content_type is not None
        and authorization is not None
        and 0 < body_bytes <= lane_body_bytes_max
    ):
        return Head(lane, keep_alive, content_type, authorization, body_bytes)
    if body_bytes > relay_body_bytes_max:
        return None
    return Head(-1, keep_alive, b"", b"", body_bytes)


class Link:
    """The front's end of the link: frames out, coalesced per turn of the loop (a handed-over
    descriptor rides with its own frame), frames in, dispatched to the front."""

    def __init__(self, sock: socket.socket, front: Front) -> None:
        self._sock = sock
        self._front = front
        self._loop = asyncio.get_running_loop()
        self._out: deque[tuple[bytes, int | None]] = deque()
        self._out_bytes = 0
        self._flush_scheduled = False
        self._writing = False
        self._in = bytearray()
        self.closed = False
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    @property
    def backlogged(self) -> bool:
        return self._out_bytes > LINK_BACKLOG_BYTES_MAX

    def send(self, data: bytes, descriptor: int | None = None) -> None:
        if self.closed:
            if descriptor is not None:
                os.close(descriptor)
            return
        self._out.append((data, descriptor))
        self._out_bytes += len(data)
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        while out:
            data, descriptor = out[0]
            if descriptor is None and len(out) > 1 and out[1][1] is None:
                plain = [out.popleft()[0]]
                while out and out[0][1] is None:
                    plain.append(out.popleft()[0])
                data = b"".join(plain)
                out.appendleft((data, None))
            try:
                if descriptor is None:
                    sent = self._sock.send(data)
                else:
                    rights = (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [descriptor]))
                    sent = self._sock.sendmsg([data], [rights])
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if descriptor is not None and sent:
                os.close(descriptor)  # the server holds it now
                descriptor = None
            self._out_bytes -= sent
            if sent < len(data):
                out[0] = (data[sent:], descriptor)
                if not self._writing:
                    self._writing = True
                    self._loop.add_writer(self._sock.fileno(), self._writable)
                return
            out.popleft()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())
            self._front.link_drained()

    def _writable(self) -> None:
        self._flush()

    def _readable(self) -> None:
        try:
            data = self._sock.recv(READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._in += data
        try:
            received = frames(self._in)
        except WireError:
            self.close()
            return
        front = self._front
        for kind, connection, payload in received:
            if kind == ANSWER:
                (close,) = ANSWER_FIELDS.unpack_from(payload)
                front.answer(connection, payload[ANSWER_FIELDS.size :], bool(close))
            elif kind == STOP:
                front.stop()
            else:
                self.close()
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        for _, descriptor in self._out:
            if descriptor is not None:
                os.close(descriptor)
        self._out.clear()
        self._sock.close()
        self._front.link_closed()


class Connection(asyncio.Protocol):
    """One client connection, served until it closes or is handed over."""

    __slots__ = ("active_at", "buffer", "front", "in_flight", "keep_alive", "number", "paused", "transport")

    def __init__(self, front: Front, number: int) -> None:
        self.front = front
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_flight: bytes | None = None  # the request the server has, as it arrived
        self.keep_alive = True
        self.paused = False
        self.active_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.active_at = self.front.loop.time()
        self.front.connections[self.number] = self

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.pop(self.number, None)
        self.front.connection_gone()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.active_at = self.front.loop.time()
        if self.in_flight is None and not self.front.link.backlogged:
            self.serve()
        elif len(self.buffer) > BUFFERED_BYTES_MAX and not self.paused:
            self.paused = True
            self._transport().pause_reading()

    def _transport(self) -> asyncio.Transport:
        transport = self.transport
        if transport is None:
            raise RuntimeError("connection used before it was made")
        return transport

    def serve(self) -> None:
        """Forward the next request if it is whole, hand the connection over if it is not a
        lane's, or wait for more bytes."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n", 0, HEAD_BYTES_MAX)
        if end < 0:
            if len(buffer) >= HEAD_BYTES_MAX:
                self.hand_over()
            return
        front = self.front
        head_bytes = end + 4
        head = front.read_head(bytes(buffer[:head_bytes]))
        if head is None:
            self.hand_over()
            return
        whole = head_bytes + head.body_bytes
        if len(buffer) < whole:
            return
        message = bytes(buffer[:whole])
        del buffer[:whole]
        self.in_flight = message
        self.keep_alive = head.keep_alive
        if head.lane < 0:
            front.link.send(frame(RELAY, self.number, message))
            return
        fields = LANE_FIELDS.pack(
            head.lane, head.keep_alive, len(head.content_type), len(head.authorization), head_bytes
        )
        payload = b"".join((fields, head.content_type, head.authorization, message))
        front.link.send(frame(LANE, self.number, payload))

    def answer(self, response: bytes, close: bool) -> None:
        self.in_flight = None
        transport = self._transport()
        transport.write(response)
        if close or not self.keep_alive or self.front.stopping:
            transport.close()
            return
        self.active_at = self.front.loop.time()
        self.resume()

    def resume(self) -> None:
        """Read again, and serve what was read meanwhile."""
        if self.paused:
            self.paused = False
            self._transport().resume_reading()
        if self.buffer and not self.front.link.backlogged:
            self.serve()

    def hand_over(self) -> None:
        """Send this connection, with every byte read from it that no answer consumed, to the
        server; this process then forgets it."""
        transport = self._transport()
        transport.pause_reading()
        raw = (self.in_flight or b"") + bytes(self.buffer)
        self.in_flight = None
        self.buffer = bytearray()
        sock = transport.get_extra_info("socket")
        try:
            descriptor = os.dup(sock.fileno())
        except OSError:
            transport.abort()
            return
        self.front.link.send(frame(HAND_OVER, self.number, raw), descriptor)
        transport.abort()  # closes this process's descriptor only: the server holds the other

    def close_if_idle(self, idle_before: float) -> None:
        if self.in_flight is None and self.active_at < idle_before:
            self._transport().close()


class Front:
    """The front process: the listening socket's connections, and the link to the server."""

    def __init__(
        self, lanes: list[bytes], lane_body_bytes_max: int, relay_body_bytes_max: int, keep_alive_s: float
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.lanes = {path: number for number, path in enumerate(lanes)}
        self.lane_body_bytes_max = lane_body_bytes_max
        self.relay_body_bytes_max = relay_body_bytes_max
        self.keep_alive_s = keep_alive_s
        self.connections: dict[int, Connection] = {}
        self.stopping = False
        self.done = asyncio.Event()
        self._numbers = 0
        self._heads: dict[bytes, Head | None] = {}
        self._server: asyncio.AbstractServer | None = None
        self.link: Link

    def read_head(self, head: bytes) -> Head | None:
        """``parse_head``, remembered: a client's requests mostly repeat their heads (the same
        key, type and host; a few body lengths)."""
        heads = self._heads
        if head in heads:
            return heads[head]
        parsed = parse_head(head, self.lanes, self.lane_body_bytes_max, self.relay_body_bytes_max)
        if len(head) <= REMEMBERED_HEAD_BYTES_MAX:
            if len(heads) >= REMEMBERED_HEADS_MAX:
                heads.clear()
            heads[head] = parsed
        return parsed

    async def start(self, listening: socket.socket, link: socket.socket) -> None:
        self.link = Link(link, self)
        self._server = await self.loop.create_server(self._connection, sock=listening)
        self.loop.call_later(IDLE_CHECK_S, self._close_idle)

    def _connection(self) -> Connection:
        self._numbers = self._numbers + 1 if self._numbers < CONNECTION_NUMBER_MAX else 1
        return Connection(self, self._numbers)

    def answer(self, number: int, response: bytes, close: bool) -> None:
        connection = self.connections.get(number)
        if connection is not None and connection.in_flight is not None:
            connection.answer(response, close)

    def link_drained(self) -> None:
        """The link sent what it held: serve the requests that waited for it."""
        for connection in list(self.connections.values()):
            if connection.in_flight is None:
                connection.resume()

    def stop(self) -> None:
        """Stop accepting; close idle connections now and the others once answered."""
        if self.stopping:
            return
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            if connection.in_flight is None:
                connection._transport().close()
        self.connection_gone()

    def connection_gone(self) -> None:
        if self.stopping and not self.connections:
            self.done.set()

    def link_closed(self) -> None:
        """The server is gone (or stopped us): nothing here can be answered any more."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections.values()):
            connection._transport().abort()
        self.done.set()

    def _close_idle(self) -> None:
        if self.done.is_set():
            return
        idle_before = self.loop.time() - self.keep_alive_s
        for connection in list(self.connections.values()):
            connection.close_if_idle(idle_before)
        self.loop.call_later(IDLE_CHECK_S, self._close_idle)


async def _serve(arguments: argparse.Namespace) -> None:
    listening = socket.socket(fileno=arguments.listen_fd)
    link = socket.socket(fileno=arguments.link_fd)
    front = Front(
        [path.encode("ascii") for path in arguments.lane],
        arguments.lane_body_bytes_max,
        arguments.relay_body_bytes_max,
        arguments.keep_alive_s,
    )
    await front.start(listening, link)
    await front.done.wait()
    if not front.link.closed:
        front.link.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m micropay.cli.front", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen-fd", type=int, required=True, help="The listening socket's descriptor.")
    parser.add_argument("--link-fd", type=int, required=True, help="The link to the server's descriptor.")
    parser.add_argument("--lane", action="append", default=[], help="A lane's path, in the server's lane order.")
    parser.add_argument("--lane-body-bytes-max", type=int, required=True, help="Largest lane request body.")
    parser.add_argument("--relay-body-bytes-max", type=int, required=True, help="Largest relayed request body.")
    parser.add_argument("--keep-alive-s", type=float, required=True, help="Idle time before a connection closes.")
    arguments = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us (STOP), not Ctrl-C's group signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_garbage_collector()
    import uvloop

    uvloop.run(_serve(arguments))
    return 0


if __name__ == "__main__":
    sys.exit(main())
