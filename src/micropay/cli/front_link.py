"""The server's side of its front processes (``micropay.cli.front``).

``Fronts`` starts the front processes on the server's listening socket and keeps one ``Link``
to each. A lane request arriving on a link goes to the lane it names, as the HTTP protocol
would offer it (``Lane.take``); its answer (``FrontReply``) is made exactly as the protocol
makes it and sent back, coalesced with the turn's other answers into one write. A request the
lane declines, and any other request a front relays, is answered by the server's own HTTP
protocol over an in-memory transport (``RelayTransport``): the connection stays with the front.
A handed-over connection is adopted: the server's own HTTP protocol is made for it as uvicorn
makes one for a connection it accepts, and reads the bytes the front had read first.

A front that dies takes its connections with it, and another is started in its place; fronts that
keep dying (more than ``RESTARTS_MAX`` exits within ``RESTART_WINDOW_S``) stop the server, rather
than have it go on restarting them.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response
from starlette.types import Scope

from micropay.api.direct import BODY_BYTES_MAX, DirectLanes, Headers, Lane
from micropay.cli.front import RELAY_BODY_BYTES_MAX
from micropay.cli.front_wire import (
    ANSWER,
    ANSWER_FIELDS,
    FRAME_BYTES_MAX,
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
from micropay.cli.protocol import LaneProtocol, lane_scope, response_bytes

logger = logging.getLogger("micropay.front")

FRONT_PROCESSES_MAX = 8
STOP_S_MAX = 30.0
"""Longest the server waits for a stopping front to answer what it has in flight and exit."""
RESTARTS_MAX = 5
RESTART_WINDOW_S = 60.0
"""A front that exits is replaced, up to ``RESTARTS_MAX`` times within this window; one more
exit in it stops the server."""
_DESCRIPTORS_PER_READ_MAX = 8

ProtocolFactory = Callable[[], asyncio.Protocol]


@dataclass(frozen=True, slots=True)
class _Serving:
    """What the fronts' links need of the running server."""

    create_protocol: ProtocolFactory
    server_state: Any
    app_state: dict[str, Any]
    keep_alive_s: float
    on_lost: Callable[[], None]


class FrontReply:
    """Where a lane's answer to a request from a front goes (the lane's ``Reply``)."""

    __slots__ = ("_done", "_head", "_keep_alive", "_link", "_number", "_path")

    def __init__(self, link: Link, number: int, path: str, keep_alive: bool, head: bytes) -> None:
        self._link = link
        self._number = number
        self._path = path
        self._keep_alive = keep_alive
        self._head = head
        self._done = False

    def respond(self, response: Response) -> None:
        if self._done:
            return
        self._done = True
        link = self._link
        keep_alive = self._keep_alive and not link.stopping
        server_state = link.serving.server_state
        link.answer(self._number, response_bytes(response, server_state.default_headers, keep_alive), keep_alive)
        server_state.total_requests += 1

    def scope(self) -> Scope:
        """The scope uvicorn would have made for this request (for rendering a refusal)."""
        link = self._link
        return lane_scope(
            self._path,
            self._path.encode("ascii"),
            _headers(self._head),
            http_version="1.1",
            server=link.server_address,
            client=None,
            state=link.serving.app_state,
        )


class RelayTransport(asyncio.Transport):
    """The transport of a relayed request: the server's protocol reads the request from the
    front, and what it writes is the answer, sent to the front once the response is complete
    (or the protocol closes the connection). Then the protocol is done with."""

    def __init__(self, link: Link, number: int, protocol: LaneProtocol) -> None:
        super().__init__()
        self._link = link
        self._number = number
        self._protocol = protocol
        self._written: list[bytes] = []
        self._closing = False
        self._finishing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._written.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True
        self._finish_soon()

    def abort(self) -> None:
        self.close()

    def response_complete(self) -> None:
        self._finish_soon()

    def _finish_soon(self) -> None:
        # After the turn's own callbacks: the protocol's held writes are flushed by then.
        if not self._finishing:
            self._finishing = True
            asyncio.get_running_loop().call_soon(self._finish)

    def _finish(self) -> None:
        answer = b"".join(self._written)
        self._written = []
        self._link.answer(self._number, answer, not self._closing)
        self._closing = True
        self._protocol.connection_lost(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._link.server_address
        return default

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_reading(self) -> bool:
        return not self._closing

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def can_write_eof(self) -> bool:
        return False


def _headers(head: bytes) -> Headers:
    """A head's header lines as the protocol reads them (names in lower case, in order)."""
    lines = head.split(b"\r\n")[1:-2]
    headers: Headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.lower(), value.strip(b" \t")))
    return headers


class Link:
    """The server's end of the link to one front process."""

    def __init__(
        self,
        sock: socket.socket,
        lanes: list[Lane[Any]],
        serving: _Serving,
        server_address: tuple[str, int],
        on_lost: Callable[[], None],
    ) -> None:
        self._sock = sock
        self._lanes = lanes
        self.serving = serving
        self.server_address = server_address
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._in = bytearray()
        self._descriptors: deque[int] = deque()
        self._out: list[bytes] = []
        self._unsent = b""
        self._flush_scheduled = False
        self._writing = False
        self._adopting: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.handed_over = 0
        self.closed = asyncio.Event()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._readable)

    # ----------------------------------------------------------------- out
    def send(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        self._out.append(data)
        if not self._flush_scheduled and not self._writing:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed.is_set():
            return
        data = self._unsent + b"".join(self._out)
        self._out = []
        try:
            sent = self._sock.send(data) if data else 0
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close()
            return
        self._unsent = data[sent:]
        if self._unsent and not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._flush)
        elif not self._unsent and self._writing:
            self._writing = False
            self._loop.remove_writer(self._sock.fileno())

    def answer(self, number: int, response: bytes, keep_alive: bool) -> None:
        """Send a request's whole answer to the front (which closes the connection after it
        unless ``keep_alive``)."""
        if len(response) + ANSWER_FIELDS.size > FRAME_BYTES_MAX:
            logger.error("an answer of %d bytes is over the link's frame limit; closing its connection", len(response))
            response, keep_alive = b"", False
        self.send(frame(ANSWER, number, ANSWER_FIELDS.pack(not keep_alive) + response))

    def stop(self) -> None:
        """Ask the front to stop (it answers what is in flight, then closes the link)."""
        self.stopping = True
        self.send(frame(STOP, 0, b""))

    # ----------------------------------------------------------------- in
    def _readable(self) -> None:
        try:
            data, ancillary, flags, _ = self._sock.recvmsg(
                READ_BYTES, socket.CMSG_SPACE(_DESCRIPTORS_PER_READ_MAX * array.array("i").itemsize)
            )
        except BlockingIOError:
            return
        except OSError:
            data, ancillary, flags = b"", [], 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
                self._descriptors.extend(received)
        if flags & socket.MSG_CTRUNC:
            logger.error("front link: descriptors were cut off; closing the link")
            self._close()
            return
        if not data:
            self._close()
            return
        self._in += data
        try:
            received_frames = frames(self._in)
        except WireError as error:
            logger.error("front link: %s; closing the link", error)
            self._close()
            return
        for kind, number, payload in received_frames:
            if kind not in (LANE, RELAY, HAND_OVER):
                logger.error("front link: unknown frame kind %d; closing the link", kind)
                self._close()
                return
            try:
                if kind == LANE:
                    self._lane_request(number, payload)
                elif kind == RELAY:
                    self._relay(number, payload)
                else:
                    self._adopt(payload)
            except Exception:  # one request's fault: its connection closes, the others go on
                logger.exception("serving a request from a front failed; its connection is closed")
                if kind != HAND_OVER:
                    self.answer(number, b"", keep_alive=False)

    def _relay(self, number: int, request: bytes) -> None:
        """Answer ``request`` with the server's own protocol, its answer going to the front."""
        protocol = self.serving.create_protocol()
        if not isinstance(protocol, LaneProtocol):
            raise TypeError("front processes need the lane protocol")
        transport = RelayTransport(self, number, protocol)
        protocol.response_listener = transport.response_complete
        protocol.connection_made(transport)
        protocol.data_received(request)

    def _lane_request(self, number: int, payload: bytes) -> None:
        lane_number, keep_alive, type_bytes, key_bytes, head_bytes = LANE_FIELDS.unpack_from(payload)
        start = LANE_FIELDS.size
        content_type = payload[start : start + type_bytes]
        start += type_bytes
        authorization = payload[start : start + key_bytes]
        start += key_bytes
        head = payload[start : start + head_bytes]
        body = payload[start + head_bytes :]
        if lane_number >= len(self._lanes):
            self._relay(number, payload[start:])
            return
        lane = self._lanes[lane_number]
        reply = FrontReply(self, number, lane.path, bool(keep_alive), head)
        headers = [(b"content-type", content_type), (b"authorization", authorization)]
        try:
            taken = lane.take(headers, body, reply)
        except Exception:  # a fault of the lane's own: the app answers the request instead
            logger.exception("direct lane failed; the request goes through the app")
            taken = False
        if not taken:
            self._relay(number, payload[start:])

    def _adopt(self, raw: bytes) -> None:
        if not self._descriptors:
            logger.error("front link: a connection handed over without its descriptor; closing the link")
            self._close()
            return
        sock = socket.socket(fileno=self._descriptors.popleft())
        self.handed_over += 1
        task = self._loop.create_task(self._serve_adopted(sock, raw))
        self._adopting.add(task)
        task.add_done_callback(self._adopting.discard)

    async def _serve_adopted(self, sock: socket.socket, raw: bytes) -> None:
        protocol = self.serving.create_protocol()
        protocol.adopted_bytes = raw  # type: ignore[attr-defined]  # read first (see OneWriteHttpToolsProtocol)
        try:
            sock.setblocking(False)
            await self._loop.connect_accepted_socket(lambda: protocol, sock)
        except OSError:
            sock.close()

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._loop.remove_writer(self._sock.fileno())
        while self._descriptors:
            os.close(self._descriptors.popleft())
        self._sock.close()
        if not self.stopping:
            self._on_lost()


class Fronts:
    """The front processes of one server and their links. A front that exits while serving is
    replaced (its connections are lost with it, as with any crash; what the server acknowledged
    is durable); after ``RESTARTS_MAX`` exits within ``RESTART_WINDOW_S``, the server stops."""

    def __init__(self, listening: socket.socket, count: int, lanes: DirectLanes, body_bytes_max: int) -> None:
        """Fronts accepting on ``listening``, which they own from now on (``close``)."""
        if not 1 <= count <= FRONT_PROCESSES_MAX:
            raise ValueError(f"front processes: 1 to {FRONT_PROCESSES_MAX}")
        self._listening = listening
        address = listening.getsockname()
        self._address = (str(address[0]), int(address[1]))
        self._count = count
        self._lanes = list(lanes)
        self._body_bytes_max = body_bytes_max
        self._processes: list[subprocess.Popen[bytes]] = []
        self._links: list[Link] = []
        self._serving: _Serving | None = None
        self._exits: deque[float] = deque()
        self._handed_over_before = 0
        self.restarts = 0

    def start(
        self,
        create_protocol: ProtocolFactory,
        server_state: Any,
        app_state: dict[str, Any],
        keep_alive_s: float,
        on_lost: Callable[[], None],
    ) -> None:
        """Start the processes (in the running loop, once the app is ready to serve);
        ``on_lost`` is called if they keep exiting."""
        self._serving = _Serving(create_protocol, server_state, app_state, keep_alive_s, on_lost)
        for slot in range(self._count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        serving = self._serving
        if serving is None:
            raise RuntimeError("front processes spawned before start")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [
            sys.executable,
            "-m",
            "micropay.cli.front",
            "--listen-fd",
            str(self._listening.fileno()),
            "--link-fd",
            str(theirs.fileno()),
            "--lane-body-bytes-max",
            str(min(BODY_BYTES_MAX, self._body_bytes_max)),
            "--relay-body-bytes-max",
            str(min(RELAY_BODY_BYTES_MAX, self._body_bytes_max)),
            "--keep-alive-s",
            str(serving.keep_alive_s),
        ]
        for lane in self._lanes:
            command += ["--lane", lane.path]
        try:
            process = subprocess.Popen(command, pass_fds=(self._listening.fileno(), theirs.fileno()))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        link = Link(ours, self._lanes, serving, self._address, lambda: self._lost(slot))
        if slot < len(self._processes):
            self._processes[slot] = process
            self._handed_over_before += self._links[slot].handed_over
            self._links[slot] = link
        else:
            self._processes.append(process)
            self._links.append(link)

    def _lost(self, slot: int) -> None:
        """The front in ``slot`` closed its link while serving: it exited (or is made to)."""
        serving = self._serving
        if serving is None:
            return
        process = self._processes[slot]
        if process.poll() is None:
            process.kill()
        status = process.wait()
        now_s = time.monotonic()
        exits = self._exits
        exits.append(now_s)
        while exits and exits[0] < now_s - RESTART_WINDOW_S:
            exits.popleft()
        if len(exits) > RESTARTS_MAX:
            logger.error(
                "front process %d exited (status %s), the %d. within %g s: not starting another",
                process.pid,
                status,
                len(exits),
                RESTART_WINDOW_S,
            )
            serving.on_lost()
            return
        logger.error("front process %d exited (status %s); starting another", process.pid, status)
        self.restarts += 1
        self._spawn(slot)

    async def stop(self) -> None:
        """Have every front answer what it has in flight and exit (killed past ``STOP_S_MAX``)."""
        for link in self._links:
            link.stop()
        deadline = time.monotonic() + STOP_S_MAX
        for link in self._links:
            try:
                await asyncio.wait_for(link.closed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                logger.error("a front process did not stop in time")
        for process in self._processes:
            while process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if process.poll() is None:
                process.kill()
                process.wait()
        self.close()

    def close(self) -> None:
        """Close the listening socket (idempotent)."""
        self._listening.close()

    @property
    def port(self) -> int:
        return self._address[1]

    @property
    def count(self) -> int:
        return self._count

    @property
    def handed_over(self) -> int:
        """Connections the fronts have handed over to this process so far."""
        return self._handed_over_before + sum(link.handed_over for link in self._links)
