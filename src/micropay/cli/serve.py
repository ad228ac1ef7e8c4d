"""``micropay serve``: the API on uvicorn (uvloop, httptools) over one engine, and its admin key file."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from types import FrameType

import typer
import uvicorn

from micropay.api import Settings, create_app
from micropay.api.app import MicropayApi
from micropay.api.keys import issue_key, verify_key
from micropay.cli.front_link import Fronts
from micropay.cli.protocol import http_protocol
from micropay.engine import Engine
from micropay.runtime import tune_garbage_collector

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


class MicropayServer(uvicorn.Server):
    """Prints where it listens once the socket is bound (so ``--port 0`` shows the real port).

    With ``fronts``, uvicorn listens on nothing: the front processes accept on their listening
    socket (``micropay.cli.front``), and the connections they hand over are served here by the
    same protocol uvicorn would have made for them."""

    def __init__(self, config: uvicorn.Config, admin_key_note: str | None, fronts: Fronts | None = None) -> None:
        super().__init__(config)
        self._admin_key_note = admin_key_note
        self._fronts = fronts
        self.front_lost = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        fronts = self._fronts
        await super().startup([] if fronts is not None else sockets)
        if self.should_exit:
            return
        host, port = self.config.host, self.config.port
        for server in self.servers:
            for bound in server.sockets:
                port = bound.getsockname()[1]
                break
        if fronts is not None:
            port = fronts.port
            keep_alive_s = self.config.timeout_keep_alive
            fronts.start(self._create_protocol, self.server_state, self.lifespan.state, keep_alive_s, self._lost)
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
        if fronts is not None:
            typer.echo(f"Front processes: {fronts.count}")

    def _create_protocol(self) -> asyncio.Protocol:
        """The protocol uvicorn makes for a connection it accepts."""
        config = self.config
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    def _lost(self) -> None:
        logging.getLogger("micropay.front").error("front processes keep exiting; the server stops")
        self.front_lost = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._fronts is not None:
            await self._fronts.stop()  # they answer what they hold; handed-over connections stay here
        await super().shutdown(sockets)


def run_server(
    engine: Engine,
    *,
    host: str,
    port: int,
    admin_key_file: Path | None,
    access_log: bool,
    settings: Settings | None = None,
    front_processes: int = 0,
) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM). The caller closes the engine afterwards.

    ``front_processes`` > 0 puts that many front processes (``micropay.cli.front``) between
    the clients and this process; they need the direct lanes (no access log)."""
    settings = settings or Settings()
    app = create_app(engine, settings=settings)
    lanes = app.direct_lanes() if isinstance(app, MicropayApi) and not access_log else None
    if front_processes and lanes is None:  # refused before anything is written or bound
        raise FrontsUnavailable("front processes serve the direct lanes, which --access-log turns off")
    note = ensure_admin_key_file(engine, admin_key_file) if admin_key_file is not None else None
    fronts: Fronts | None = None
    if front_processes and lanes is not None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listening = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        fronts = Fronts(listening, front_processes, lanes, settings.body_bytes_max)
        port = fronts.port
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=http_protocol(lanes),
        access_log=access_log,
        log_level="info",
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        backlog=LISTEN_BACKLOG,
    )
    # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler
    # that was there before it: make that one unwind normally, so the caller closes the engine.
    previous = {sig: signal.signal(sig, _exit_after_graceful_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    tune_garbage_collector()
    try:
        server = MicropayServer(config, note, fronts)
        server.run()
        if server.front_lost:
            raise FrontLost("front processes kept exiting (see the log above); the server stopped")
    finally:
        if fronts is not None:
            fronts.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


LISTEN_BACKLOG = 2048
"""Connections the kernel queues before they are accepted (uvicorn's default)."""


class FrontsUnavailable(Exception):
    """Front processes were asked for where they cannot serve."""


class FrontLost(Exception):
    """Front processes kept exiting while serving: the server stopped (a supervisor restarts it)."""


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


def _exit_after_graceful_stop(signum: int, _frame: FrameType | None) -> None:
    typer.echo(f"Stopped by {signal.Signals(signum).name}.")
    raise SystemExit(0)
