"""Work the server does on its own while it runs: the settler (``micropay.models.settler``),
started and stopped with the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI

from micropay.api.services import Services
from micropay.models.settler import Settler


def install_settler(app: FastAPI, interval_s: float | None) -> Settler:
    """Make the app's settler (``app.state.settler``); with an interval, run it on a background
    thread from lifespan startup to shutdown. Without one, nothing ticks unless called."""
    services = cast(Services, app.state.services)
    settler = Settler(services.engine, services.rails)
    app.state.settler = settler
    if interval_s is None:
        return settler
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(running: Any) -> AsyncIterator[Any]:
        settler.start(interval_s)
        try:
            async with inner(running) as state:
                yield state
        finally:
            settler.stop()

    app.router.lifespan_context = lifespan
    return settler


def get_settler(app: Any) -> Settler:
    return cast(Settler, app.state.settler)
