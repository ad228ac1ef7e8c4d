"""The HTTP/1.1 protocol ``micropay serve`` runs: uvicorn's httptools protocol, with one write
per response and the direct lanes for single transfers and charges in front of it.

uvicorn's protocol builds, for every request, an ASGI scope, a request cycle with its event, a
keep-alive timer and a task running the app. ``LaneProtocol`` reads each request's head itself
first. A request a lane wants (``micropay.api.direct``) stays with it: once its body is in,
the lane takes it, and its answer is written here, with no scope, cycle, task or timer; or the
lane declines it, and the request goes to uvicorn as it arrived. Every other request is handed
to uvicorn as soon as its head is in, and from then on uvicorn's own code serves it: bodies
streamed, ``100 Continue``, upgrades, pipelining, the concurrency limit.

The hand-over replays the head into uvicorn's parser callbacks (``on_message_begin``,
``on_url``, ``on_header``, ``on_headers_complete``) in the order the parser made them, so
uvicorn sees exactly what it would have seen. While a lane request waits for its answer, a
``LaneCycle`` stands where uvicorn keeps the request in progress: a request pipelined behind it
is queued by uvicorn as behind any other, and started once the lane has answered.

Keep-alive: uvicorn arms a timer after every response and cancels it on every read; here one
timer per connection checks, when it fires, how long the connection has been idle, and arms
itself again for the rest. An idle connection is still closed ``timeout_keep_alive`` seconds
after its last response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, cast

from starlette.responses import Response
from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from micropay.api.direct import DirectLanes, Headers, Lane


class CoalescingTransport:
    """A transport that sends what one turn of the event loop writes to it as one write.

    uvicorn writes a response's head and its body separately: two system calls, two TCP
    segments, two wake-ups of the client. Held until the end of the turn (or a close), they
    go as one. Everything else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def write_whole(self, data: bytes) -> None:
        """Write ``data``, a whole response, now (after anything held)."""
        if self._held:
            self.write(data)
            self.flush()
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held:
            self._held = []
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a ``CoalescingTransport``: one write per response."""

    _writer: CoalescingTransport

    adopted_bytes = b""
    """Bytes a front process read from this connection before handing it over
    (``micropay.cli.front``): read first, as if they had just arrived."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._writer = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, self._writer))
        adopted = self.adopted_bytes
        if adopted:
            self.adopted_bytes = b""
            self.data_received(adopted)


_default_lines: tuple[list[tuple[bytes, bytes]], bytes] = ([], b"")
"""uvicorn's default headers (a new list each second: the Date changes), and their lines."""


def _default_header_lines(headers: list[tuple[bytes, bytes]]) -> bytes:
    global _default_lines
    known, lines = _default_lines
    if headers is not known:
        lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        _default_lines = (headers, lines)
    return lines


def response_bytes(response: Response, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    """``response`` as uvicorn writes one with a Content-Length: its status line, uvicorn's
    default headers, the response's own, ``connection: close`` unless the connection is kept."""
    content: list[bytes | memoryview] = [STATUS_LINE[response.status_code], _default_header_lines(default_headers)]
    for name, value in response.raw_headers:
        content += (name, b": ", value, b"\r\n")
    if not keep_alive:
        content.append(b"connection: close\r\n")
    content += (b"\r\n", response.body)
    return b"".join(content)


class _NoEvent:
    """What uvicorn sets on a request in progress when its connection is lost (nothing waits)."""

    __slots__ = ()

    def set(self) -> None:
        return None


class LaneCycle:
    """A request the lane took, from the moment it took it until its answer is written: the
    lane's ``Reply``, and what uvicorn finds where it keeps the request in progress."""

    __slots__ = (
        "_headers",
        "_http_version",
        "_path",
        "_protocol",
        "_url",
        "disconnected",
        "keep_alive",
        "response_complete",
    )

    message_event = _NoEvent()

    def __init__(
        self, protocol: LaneProtocol, path: str, url: bytes, headers: Headers, http_version: str, keep_alive: bool
    ) -> None:
        self._protocol = protocol
        self._path = path
        self._url = url
        self._headers = headers
        self._http_version = http_version
        self.keep_alive = keep_alive  # uvicorn clears it when the server shuts down
        self.disconnected = False  # uvicorn sets it when the connection is lost
        self.response_complete = False

    def respond(self, response: Response) -> None:
        """Write ``response`` as uvicorn writes one with a Content-Length (its default headers,
        ``connection: close`` when the connection will not be kept), then go on as uvicorn does
        once a response is complete."""
        if self.response_complete:
            return
        self.response_complete = True
        protocol = self._protocol
        transport = protocol.transport
        if self.disconnected or transport.is_closing():
            return
        protocol._writer.write_whole(response_bytes(response, protocol.server_state.default_headers, self.keep_alive))
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()

    def scope(self) -> Scope:
        """The scope uvicorn would have made for this request."""
        protocol = self._protocol
        return lane_scope(
            self._path,
            self._url,
            self._headers,
            http_version=self._http_version,
            server=protocol.server,
            client=protocol.client,
            scheme=protocol.scheme,
            root_path=protocol.root_path,
            state=protocol.app_state,
            asgi_version=protocol.asgi_version,
        )


def lane_scope(
    path: str,
    raw_path: bytes,
    headers: Headers,
    *,
    http_version: str,
    server: tuple[str, int | None] | None,
    client: tuple[str, int] | None,
    state: dict[str, Any],
    scheme: str | None = "http",
    root_path: str = "",
    asgi_version: str = "3.0",
) -> Scope:
    """The scope uvicorn makes for a lane's request (a ``POST`` without a query string), for
    rendering a refusal through the app's exception handlers."""
    return {
        "type": "http",
        "asgi": {"version": asgi_version, "spec_version": "2.3"},
        "http_version": http_version,
        "server": server,
        "client": client,
        "scheme": scheme,
        "root_path": root_path,
        "headers": headers,
        "state": state.copy(),
        "method": "POST",
        "path": path,
        "raw_path": raw_path,
        "query_string": b"",
    }


class LaneProtocol(OneWriteHttpToolsProtocol):
    """The protocol with the direct lanes in front of uvicorn's (see the module)."""

    lanes: DirectLanes
    response_listener: Callable[[], None] | None = None
    """Called as each response is complete (a relayed request's, ``micropay.cli.front_link``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._url = b""
        self._head: Headers = []
        self._body = b""
        self._lane: Lane[Any] | None = None  # the lane the message being parsed stays with
        self._keep_alive = True
        self._http_version = "1.1"
        self._idle_since: float | None = None  # None: a request is being read or served

    # ----------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._head = []
        self._body = b""
        self._lane = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        lane = self.lanes.wants(parser.get_method(), self._url, self._head) if self._lane_may_take() else None
        if lane is not None:
            self._lane = lane
            version = parser.get_http_version()
            self._http_version = version
            self._keep_alive = version != "1.0" and parser.should_keep_alive()
            return
        self._hand_head_to_uvicorn()

    def on_body(self, body: bytes) -> None:
        if self._lane is not None:
            self._body += body
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        lane = self._lane
        if lane is None:
            super().on_message_complete()
            return
        self._lane = None
        url, head, body = self._url, self._head, self._body
        self._body = b""
        cycle = LaneCycle(self, lane.path, url, head, self._http_version, self._keep_alive)
        try:
            taken = lane.take(head, body, cycle)
        except Exception:  # a fault of the lane's own: the app answers the request instead
            self.logger.exception("direct lane failed; the request goes through the app")
            taken = False
        if taken:
            self.cycle = cycle  # type: ignore[assignment]  # stands in for uvicorn's cycle (see LaneCycle)
            return
        self._hand_head_to_uvicorn()
        super().on_body(body)
        super().on_message_complete()

    def _lane_may_take(self) -> bool:
        """Whether uvicorn would start this request at once as a plain HTTP request: nothing
        before it still in progress, no upgrade, no root path, under the concurrency limit."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return False
        if self.root_path or self.parser.should_upgrade():
            return False
        limit = self.limit_concurrency
        return limit is None or (len(self.connections) < limit and len(self.tasks) < limit)

    def _hand_head_to_uvicorn(self) -> None:
        super().on_message_begin()
        super().on_url(self._url)
        for name, value in self._head:
            super().on_header(name, value)
        super().on_headers_complete()

    # ----------------------------------------------------------------- keep-alive
    def _unset_keepalive_if_required(self) -> None:
        """On every read (and when the connection is lost): the connection is not idle."""
        self._idle_since = None

    def on_response_complete(self) -> None:
        listener = self.response_listener
        if listener is not None:
            listener()
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self._check_idle)

    def _check_idle(self) -> None:
        self.timeout_keep_alive_task = None
        idle_since = self._idle_since
        if idle_since is None or self.transport.is_closing():
            return  # busy: the next complete response arms the check again
        left_s = idle_since + self.timeout_keep_alive - self.loop.time()
        if left_s <= 0:
            self.transport.close()
        else:
            self.timeout_keep_alive_task = self.loop.call_later(left_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None


def http_protocol(lanes: DirectLanes | None) -> type[HttpToolsProtocol]:
    """The protocol class to serve with: with the direct lanes when there are any."""
    if lanes is None:
        return OneWriteHttpToolsProtocol
    return type("LaneProtocol", (LaneProtocol,), {"lanes": lanes})
