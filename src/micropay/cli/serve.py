"""``micropay serve``: the API on uvicorn (uvloop, httptools) over one engine, and its admin key file."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, cast

import typer
import uvicorn
from starlette.responses import Response
from starlette.types import Scope
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from micropay.api import Settings, create_app
from micropay.api.app import MicropayApi
from micropay.api.direct import DirectTransfers
from micropay.api.keys import issue_key, verify_key
from micropay.engine import Engine

ADMIN_KEY_FILE_MODE = 0o600


def ensure_admin_key_file(engine: Engine, path: Path) -> str:
    """Create an admin key into ``path`` (mode 0600) unless the file exists; say which happened."""
    if path.exists():
        key = path.read_text(encoding="utf-8").strip()
        record = verify_key(engine, key)
        if record is None or record.role != "admin":
            return f"{path} (WARNING: it holds no valid admin key for this database; delete it to make a new one)"
        return f"{path}"
    path.parent.mkdir(parents=True, exist_ok=True)
    record, key = issue_key(engine, "admin")
    partial = path.with_name(path.name + ".tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, ADMIN_KEY_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(partial, ADMIN_KEY_FILE_MODE)
    os.replace(partial, path)
    return f"{path} (new admin key {record.id}, mode 0600)"


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._writer = CoalescingTransport(cast(asyncio.Transport, transport), self.loop)
        super().connection_made(cast(asyncio.Transport, self._writer))


class DirectLaneProtocol(OneWriteHttpToolsProtocol):
    """The protocol, handing plain single transfers to the direct lane (``micropay.api.direct``).

    uvicorn makes a request's cycle when its head is in and starts the app's task at once. For
    a request the lane ``wants`` (and only in that standard case: not a pipelined request, not
    one over the concurrency limit, not one waiting for ``100 Continue``) the task is held back
    until the body is in; then the lane takes the request, or the task starts as it would
    have, the body waiting in the cycle. A taken request's answer is written as uvicorn's
    ``send`` writes a response with a Content-Length (its default headers, ``connection:
    close`` when the connection will not be kept), and the cycle then completes as uvicorn's
    does, so keep-alive, pipelining and graceful shutdown go on unchanged. Taken requests are
    not in the access log: ``run_server`` serves with the lane only while access logging is off.
    """

    lane: DirectTransfers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heads_in = False
        self._held: tuple[RequestResponseCycle, ASGI3Application] | None = None

    def on_headers_complete(self) -> None:
        self._heads_in = True
        try:
            super().on_headers_complete()
        finally:
            self._heads_in = False

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if (
            self._heads_in
            and app is self.app
            and not cycle.waiting_for_100_continue
            and self.lane.wants(cast(Scope, cycle.scope))
        ):
            self._held = (cycle, app)
            return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        held = self._held
        if held is None or held[0] is not self.cycle:
            return
        self._held = None
        cycle, app = held
        scope = cast(Scope, cycle.scope)
        try:
            taken = not cycle.disconnected and self.lane.take(scope, bytes(cycle.body), partial(self._respond, cycle))
        except Exception:  # a fault of the lane's own: the app answers the request instead
            self.logger.exception("direct lane failed; the request goes through the app")
            taken = False
        if not taken:
            super()._start_asgi_task(cycle, app)
            return
        cycle.body = bytearray()

    def _respond(self, cycle: RequestResponseCycle, response: Response) -> None:
        if cycle.disconnected or cycle.response_started:
            return
        cycle.response_started = True
        content: list[bytes | memoryview] = [STATUS_LINE[response.status_code]]
        for name, value in (*cycle.default_headers, *response.raw_headers):
            content += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            content.append(b"connection: close\r\n")
        content += (b"\r\n", response.body)
        self._writer.write_whole(b"".join(content))
        cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


def http_protocol(lane: DirectTransfers | None) -> type[HttpToolsProtocol]:
    """The protocol class to serve with: with the direct lane when there is one."""
    if lane is None:
        return OneWriteHttpToolsProtocol
    return type("DirectLaneProtocol", (DirectLaneProtocol,), {"lane": lane})


class _AnnouncingServer(uvicorn.Server):
    """Prints where it listens once the socket is bound (so ``--port 0`` shows the real port)."""

    def __init__(self, config: uvicorn.Config, admin_key_note: str | None) -> None:
        super().__init__(config)
        self._admin_key_note = admin_key_note

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.should_exit:
            return
        host, port = self.config.host, self.config.port
        for server in self.servers:
            for bound in server.sockets:
                port = bound.getsockname()[1]
                break
        url = _url(host, port)
        typer.echo(f"Micropay API listening on {url}")
        typer.echo(f"API docs: {url}/docs")
        if self._admin_key_note is not None:
            typer.echo(f"Admin key file: {self._admin_key_note}")
        else:
            typer.echo(
                "No admin key file given: use an existing key, or restart with --admin-key-file PATH"
                " (or run `micropay keys create --role admin` while the server is stopped)."
            )


def run_server(
    engine: Engine,
    *,
    host: str,
    port: int,
    admin_key_file: Path | None,
    access_log: bool,
    settings: Settings | None = None,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM). The caller closes the engine afterwards."""
    note = ensure_admin_key_file(engine, admin_key_file) if admin_key_file is not None else None
    app = create_app(engine, settings=settings)
    lane = app.direct_lane() if isinstance(app, MicropayApi) and not access_log else None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=http_protocol(lane),
        access_log=access_log,
        log_level="info",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was there before it: make that one unwind normally, so the caller closes the engine.
    previous = {sig: signal.signal(sig, _exit_after_graceful_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    tune_garbage_collector()
    try:
        _AnnouncingServer(config, note).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SERVE_BATCH_WINDOW_S = 0.0
"""The engine's batch window while serving: none. The API already groups what arrives in one
turn of the event loop (``TransferCoalescer``, the charge batcher), so the engine starts a batch
as soon as the previous one is durable, and what arrives meanwhile forms the next: the event
loop works while the engine syncs. Measured on 2 cores with 64 clients sending single
transfers (6 runs each, medians): 1 ms window 5.6k/s, none 6.2k/s. (A shorter interpreter
switch interval, 0.5 ms, looked better once and worse in alternating runs: left at Python's.)"""

GRACEFUL_SHUTDOWN_S = 30
"""Longest a stopping server waits for requests in flight before it closes their connections;
the engine then still finishes what was queued, so nothing acknowledged is lost."""

GC_THRESHOLDS = (20_000, 20, 20)
"""The cyclic collector's thresholds while serving (Python's defaults: 700, 10, 10).

Every request allocates hundreds of short-lived containers (a batch of 8190 transfers, some
hundred thousand) that mostly die by reference counting; at the defaults the collector keeps
rescanning them and promoting what is still in flight. Measured under the HTTP benchmark at the
defaults: 2 500 young collections and 20 full ones (66 ms each, stalling every request) in 12 s."""


def tune_garbage_collector() -> None:
    """Freeze what startup made (modules, the recovered ledger: never garbage, never rescanned)
    and collect less often. Reference counting still frees everything acyclic at once."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _exit_after_graceful_stop(signum: int, _frame: FrameType | None) -> None:
    typer.echo(f"Stopped by {signal.Signals(signum).name}.")
    raise SystemExit(0)
