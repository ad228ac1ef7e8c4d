"""Single-transfer requests coalesced into one engine submission per event-loop turn.

Each ``POST /v1/transfers`` is one transfer. Submitted one by one, every request costs the
engine an operation, a thread-safe future and a wake-up of the event loop, and the ledger
applies it alone. Requests that reach the engine in the same turn of the event loop are
instead submitted together as one list of independent transfers: the ledger applies them in
the same order, in the same batch, under the same group commit, and each request still gets
its own outcome only once the batch is durable. What each request answers is unchanged:

- the transfers of different requests never chain: a ``linked`` transfer (whose chain is open
  at the end of its request) is submitted alone;
- the same id twice in one submission answers ``exists`` (or ``exists_with_different_fields``)
  for the later one, exactly as in two submissions of one batch;
- if the engine refuses a coalesced submission outright (queue full, a malformed request),
  each request is submitted again alone, so each gets its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from functools import partial
from typing import cast

from micropay.engine import Engine
from micropay.errors import require
from micropay.ledger import TransferFlags, TransferOutcome, TransferRequest
from micropay.ledger.limits import BATCH_SIZE_MAX

_LINKED = int(TransferFlags.LINKED)
_logger = logging.getLogger(__name__)

Delivery = Callable[[TransferOutcome | None, BaseException | None], None]
"""Called once, in the event loop, with a transfer's outcome (and None) or (None and) the error
that kept it from the ledger."""

_Waiting = list[tuple[TransferRequest, Delivery]]


class TransferCoalescer:
    """Submits single transfers to ``engine``, coalescing those of one event-loop turn."""

    def __init__(self, engine: Engine, *, group_size_max: int = BATCH_SIZE_MAX) -> None:
        self._engine = engine
        self._group_size_max = group_size_max
        self._waiting: dict[asyncio.AbstractEventLoop, _Waiting] = {}

    async def create_transfer(self, request: TransferRequest) -> TransferOutcome:
        """The outcome of one transfer, once the batch that applied it is durable."""
        if request.flags & _LINKED:
            [outcome] = await self._engine.create_transfers_async([request])
            return outcome
        future: asyncio.Future[TransferOutcome] = asyncio.get_running_loop().create_future()
        self.submit(request, partial(_settle, future))
        return await future

    def submit(self, request: TransferRequest, deliver: Delivery) -> None:
        """From the event loop: submit one unlinked transfer with the others of this turn;
        ``deliver`` gets its outcome in the loop once the batch that applied it is durable."""
        require(not request.flags & _LINKED, "a linked transfer is submitted alone (create_transfer)")
        loop = asyncio.get_running_loop()
        waiting = self._waiting.get(loop)
        if waiting is None:
            waiting = self._waiting[loop] = []
            loop.call_soon(self._submit, loop, waiting)
        waiting.append((request, deliver))
        if len(waiting) >= self._group_size_max:
            del self._waiting[loop]  # the callback scheduled above submits this group; the next starts anew

    def _submit(self, loop: asyncio.AbstractEventLoop, waiting: _Waiting) -> None:
        if self._waiting.get(loop) is waiting:
            del self._waiting[loop]
        try:
            submitted = self._engine.submit_transfers([request for request, _ in waiting])
        except Exception as error:
            if len(waiting) == 1:
                _fail(waiting, error)
            else:
                for one in waiting:
                    self._submit(loop, [one])
            return
        submitted.add_done_callback(partial(_call_in_loop, loop, waiting))


def _call_in_loop(loop: asyncio.AbstractEventLoop, waiting: _Waiting, done: Future[Sequence[TransferOutcome]]) -> None:
    """In the engine thread: hand the outcome to the waiting requests' loop."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_deliver, waiting, done)


def _deliver(waiting: _Waiting, done: Future[Sequence[TransferOutcome]]) -> None:
    error = done.exception()
    if error is not None:
        _fail(waiting, error)
        return
    outcomes = done.result()
    for (_, deliver), outcome in zip(waiting, outcomes, strict=True):
        try:
            deliver(outcome, None)
        except Exception:  # one caller's fault must not keep the others of the batch waiting
            _logger.exception("delivering a transfer's outcome failed")


def _fail(waiting: _Waiting, error: BaseException) -> None:
    for _, deliver in waiting:
        try:
            deliver(None, error)
        except Exception:
            _logger.exception("delivering a transfer's failure failed")


def _settle(
    future: asyncio.Future[TransferOutcome], outcome: TransferOutcome | None, error: BaseException | None
) -> None:
    if future.done():  # the request was cancelled (its client left)
        return
    if error is not None:
        future.set_exception(error)
    else:
        require(outcome is not None, "a transfer delivered neither an outcome nor an error")
        future.set_result(cast(TransferOutcome, outcome))
