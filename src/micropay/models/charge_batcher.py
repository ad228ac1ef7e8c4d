"""Charges from many concurrent callers, coalesced into few engine operations.

Submitted one operation each, every charge costs the engine an operation, a future, and a ledger
submission of its own. The batcher queues charges instead and keeps one ``charge_many``
operation waiting in the engine; when that operation runs, it takes everything queued by then
(up to ``CHARGES_PER_OPERATION_MAX``). So the busier the engine, the larger each operation, and
an idle engine still takes a lone charge at once. What each caller gets is unchanged: its own
``(record, replayed)`` or refusal, once the batch holding it is durable. If a coalesced
operation fails as a whole (not a refusal of one charge), each of its charges is submitted
again alone, so each gets its own answer.

Callers are threads (``submit``, a ``concurrent.futures.Future``), asyncio tasks (``charge``) or
event-loop callbacks (``submit_in_loop``): the answers of one operation reach each event loop in
one hand-over, not one per charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial

from micropay.engine import BatchContext, Engine
from micropay.errors import ApiError, EngineClosedError, QueueFullError, StoreError
from micropay.models.metadata import keep_metadata
from micropay.models.payments import (
    CHARGE,
    CHARGES_PER_OPERATION_MAX,
    ChargeRequest,
    ChargeResult,
    Outcome,
    charge_many,
)
from micropay.models.records import Charge

_logger = logging.getLogger(__name__)

Answer = Outcome[Charge] | BaseException
"""What a caller gets: the charge and whether it was a replay, or the refusal (or failure)."""
Deliver = Callable[[Answer], None]
Sink = Future[Outcome[Charge]] | tuple[asyncio.AbstractEventLoop, Deliver]


@dataclass(slots=True)
class _Item:
    request: ChargeRequest
    metadata: bytes | None
    sink: Sink


def _with_metadata(
    requests: list[ChargeRequest], metadata: list[bytes | None]
) -> Callable[[BatchContext], list[ChargeResult]]:
    many = charge_many(requests)

    def run(ctx: BatchContext) -> list[ChargeResult]:
        results = many(ctx)
        for index, (request, body, result) in enumerate(zip(requests, metadata, results, strict=True)):
            if isinstance(result, Exception) or (body is None and not result[1]):
                continue
            try:
                keep_metadata(ctx, CHARGE, request.id, body, replayed=result[1])
            except ApiError as error:  # a replay with other metadata: it wrote nothing
                results[index] = error
        return results

    return run


class ChargeBatcher:
    """Coalesces concurrent charges on one engine into ``charge_many`` operations."""

    def __init__(self, engine: Engine, *, group_max: int = CHARGES_PER_OPERATION_MAX) -> None:
        self._engine = engine
        self._group_max = min(group_max, CHARGES_PER_OPERATION_MAX)
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._scheduled = False
        self.operations = 0
        """Operations submitted so far (the coalescing ratio is charges / operations)."""

    # ----------------------------------------------------------------- callers
    def submit(self, request: ChargeRequest, metadata: bytes | None = None) -> Future[Outcome[Charge]]:
        """Queue one charge (from any thread); the future resolves once it is durable."""
        future: Future[Outcome[Charge]] = Future()
        self._enqueue(_Item(request, metadata, future))
        return future

    async def charge(self, request: ChargeRequest, metadata: bytes | None = None) -> Outcome[Charge]:
        """Queue one charge from an asyncio task and wait for its answer."""
        future: asyncio.Future[Outcome[Charge]] = asyncio.get_running_loop().create_future()
        self.submit_in_loop(request, metadata, partial(_resolve, future))
        return await future

    def submit_in_loop(self, request: ChargeRequest, metadata: bytes | None, deliver: Deliver) -> None:
        """From an event loop: queue one charge; ``deliver`` gets its answer in that loop, once
        the charge is durable (or refused)."""
        self._enqueue(_Item(request, metadata, (asyncio.get_running_loop(), deliver)))

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            self._queue.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule()

    # ----------------------------------------------------------------- the engine side
    def _schedule(self) -> None:
        run = _Run(self)
        try:
            submitted = self._engine.submit(run.operation)
        except (EngineClosedError, QueueFullError) as error:
            with self._lock:
                items, self._queue = self._queue, []
                self._scheduled = False
            _deliver([(item, error) for item in items])
            return
        self.operations += 1
        submitted.add_done_callback(run.done)

    def _take(self) -> list[_Item]:
        """In the engine thread, when an operation runs: what is queued now (one group)."""
        with self._lock:
            items = self._queue[: self._group_max]
            del self._queue[: len(items)]
            more = bool(self._queue)
            if not more:
                self._scheduled = False
        if more:
            self._schedule()  # the rest goes in the next batch
        return items

    def _alone(self, item: _Item) -> None:
        """Submit one charge as its own operation (after its group failed as a whole)."""
        operation = _with_metadata([item.request], [item.metadata])
        try:
            submitted = self._engine.submit(operation)
        except (EngineClosedError, QueueFullError) as error:
            _deliver([(item, error)])
            return

        def done(future: Future[list[ChargeResult]]) -> None:
            error = future.exception()
            _deliver([(item, error if error is not None else future.result()[0])])

        submitted.add_done_callback(done)


class _Run:
    """One coalesced operation: the items it took when it ran, and where their answers go."""

    def __init__(self, batcher: ChargeBatcher) -> None:
        self._batcher = batcher
        self._items: list[_Item] = []
        self._taken = False

    def operation(self, ctx: BatchContext) -> list[ChargeResult]:
        # Take the queue once: on a shared database a conflicted batch runs its operations
        # again, and a second take would strand the charges the first one took.
        if not self._taken:
            self._items = self._batcher._take()
            self._taken = True
        if not self._items:
            return []
        requests = [item.request for item in self._items]
        return _with_metadata(requests, [item.metadata for item in self._items])(ctx)

    def done(self, future: Future[list[ChargeResult]]) -> None:
        """In the engine thread, once the batch is durable (or failed)."""
        items = self._items
        error = future.exception()
        if error is None:
            _deliver(list(zip(items, future.result(), strict=True)))
        elif isinstance(error, (StoreError, EngineClosedError)) or len(items) == 1:
            _deliver([(item, error) for item in items])
        else:
            for item in items:
                self._batcher._alone(item)


def _deliver(answers: list[tuple[_Item, ChargeResult | BaseException]]) -> None:
    """Resolve each caller's future: threads' directly, each event loop's in one hand-over."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Deliver, ChargeResult | BaseException]]] = {}
    for item, answer in answers:
        sink = item.sink
        if isinstance(sink, Future):
            if isinstance(answer, BaseException):
                sink.set_exception(answer)
            else:
                sink.set_result(answer)
        else:
            loop, target = sink
            by_loop.setdefault(loop, []).append((target, answer))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[Deliver, ChargeResult | BaseException]]) -> None:
    for deliver, answer in settled:
        try:
            deliver(answer)
        except Exception:  # one caller's fault must not keep the others waiting
            _logger.exception("delivering a charge's answer failed")


def _resolve(future: asyncio.Future[Outcome[Charge]], answer: Answer) -> None:
    """``charge``'s delivery: the awaiting task's future gets the answer (unless it was
    cancelled: its client left)."""
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
