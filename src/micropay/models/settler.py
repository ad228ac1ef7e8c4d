"""The background settler: concludes what was left waiting on time.

Three due queues (``micropay.models.index``) are written by the operations that start the wait:

- ``topup_due``: a bank top-up answered ``pending``; ``settle_topups`` books it once the rail answers;
- ``statement_due``: a statement is ``processing`` through a rail; ``settle_processing`` concludes it;
- ``promo_due``: a promo grant expires (or refunded credit came back to an expired grant);
  ``expire_promo`` sweeps the payer's expired credit.

Each tick reads, per queue, at most ``page_size`` entries after the queue's cursor and before
"now", acts on them in one operation that also advances the cursor, and is done: bounded work,
and never a scan of the objects themselves.

Why nothing is skipped: the entries are listed *inside* an engine operation, from the store,
where every earlier batch is committed. Entry ids start with the due time, and every operation
writes entries due no earlier than its own batch's clock reading, so an entry that a later batch
writes sorts at or after that batch's "now", which is after the bound (``< now``) of any tick
that ran before it. The cursor therefore only ever passes entries that were seen. (This assumes
the engine clock does not run backwards, as ledger timestamps already do.)

With several engines on one database (PostgreSQL) batches of other processes may still be in
flight with an earlier clock reading, so the bound stays ``Engine.settle_lag_ns`` behind "now";
and every process runs a settler, so the cursor only moves forward and acting twice on an entry
changes nothing (each action re-reads its object, locked, and skips what is no longer waiting).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from micropay.engine import BatchContext, Engine
from micropay.errors import EngineClosedError, InvariantViolation, QueueFullError
from micropay.models import index
from micropay.models.payments import settle_topups
from micropay.models.promo import expire_promo
from micropay.models.statements import settle_processing
from micropay.settlement.rails import Rails
from micropay.store.base import Store

log = logging.getLogger("micropay.settler")

CURSOR = "due_cursor"
"""Document kind: per due queue (the id), the last entry the settler handled."""

PAGE_SIZE = 500
"""Most entries one queue hands to one tick."""

SETTLE_INTERVAL_S = 1.0
"""Seconds between ticks while a server runs (bank rails answer after about 2 s)."""

Entry = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick did, per queue: entries handled, and entries that failed (logged, skipped)."""

    handled: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.handled.values())


def _cursor(ctx: BatchContext, kind: str) -> str | None:
    cursor = ctx.get_document(CURSOR, kind)
    return None if cursor is None else str(orjson.loads(cursor)["after"])


def _list_due(store: Store, kind: str, limit: int, lag_ns: int = 0) -> Callable[[BatchContext], list[Entry]]:
    """An operation answering the due entries after the queue's cursor, before the batch's now
    (less ``lag_ns``: see the module docstring)."""

    def run(ctx: BatchContext) -> list[Entry]:
        after = _cursor(ctx, kind)
        bound = index.due_bound(ctx.now_ns - lag_ns)
        # Every earlier batch is committed, so the store holds every entry due before ``bound``.
        rows = store.list_documents(kind, after, limit)
        return [(key, body) for key, body in rows if key < bound]

    return run


def _act(kind: str, entries: list[Entry], rails: Rails) -> Callable[[BatchContext], int]:
    """An operation acting on ``entries`` of queue ``kind`` (no cursor move)."""
    bodies = [orjson.loads(body) for _, body in entries]

    def run(ctx: BatchContext) -> int:
        if kind == index.TOPUP_DUE:
            settle_topups([str(body["topup_id"]) for body in bodies], rails)(ctx)
        elif kind == index.STATEMENT_DUE:
            settle_processing([str(body["statement_id"]) for body in bodies], rails)(ctx)
        elif kind == index.PROMO_DUE:
            pairs = dict.fromkeys((str(body["payer_id"]), str(body["ledger"])) for body in bodies)
            for payer_id, ledger in pairs:
                expire_promo(payer_id, ledger)(ctx)
        else:
            raise InvariantViolation(f"unknown due queue {kind}")
        return len(entries)

    return run


def _move_cursor(kind: str, after: str) -> Callable[[BatchContext], None]:
    """Advance the queue's cursor to ``after``; never back (another process may be ahead)."""

    def run(ctx: BatchContext) -> None:
        current = _cursor(ctx, kind)
        if current is None or after > current:
            ctx.put_document(CURSOR, kind, orjson.dumps({"after": after}))

    return run


def _act_and_move(kind: str, entries: list[Entry], rails: Rails) -> Callable[[BatchContext], int]:
    act = _act(kind, entries, rails)
    move = _move_cursor(kind, entries[-1][0])

    def run(ctx: BatchContext) -> int:
        done = act(ctx)
        move(ctx)
        return done

    return run


class Settler:
    """Settles due top-ups, concludes processing statements and sweeps expired promo.

    ``tick()`` does one bounded round (tests call it directly); ``start(interval_s)`` runs
    ticks on a background thread until ``stop()``.
    """

    def __init__(self, engine: Engine, rails: Rails, *, page_size: int = PAGE_SIZE) -> None:
        self._engine = engine
        self._rails = rails
        self._page_size = page_size
        self._tick_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def tick(self) -> TickReport:
        """One round over every due queue. Raises EngineClosedError once the engine is gone."""
        report = TickReport()
        with self._tick_lock:
            for kind in index.DUE_QUEUES:
                handled, failed = self._tick_queue(kind)
                report.handled[kind] = handled
                report.failed[kind] = failed
            self.ticks += 1
        return report

    def _tick_queue(self, kind: str) -> tuple[int, int]:
        engine = self._engine
        entries = engine.call(_list_due(engine.store, kind, self._page_size, engine.settle_lag_ns))
        if not entries:
            return 0, 0
        try:
            return engine.call(_act_and_move(kind, entries, self._rails)), 0
        except (EngineClosedError, QueueFullError):
            raise
        except Exception as error:  # one bad entry must not hold up the queue: act on each alone
            log.warning("settling %d %s entries together failed (%s); trying each alone", len(entries), kind, error)
        failed = 0
        for entry in entries:
            try:
                engine.call(_act(kind, [entry], self._rails))
            except (EngineClosedError, QueueFullError):
                raise
            except Exception:
                failed += 1
                log.exception("cannot settle %s entry %s; skipping it", kind, entry[0])
        engine.call(_move_cursor(kind, entries[-1][0]))
        return len(entries) - failed, failed

    # ----------------------------------------------------------------- background thread
    def start(self, interval_s: float = SETTLE_INTERVAL_S) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), name="micropay-settler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current tick."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join()

    def _loop(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            try:
                self.tick()
            except EngineClosedError:
                log.info("settler stopping: the engine is closed")
                return
            except QueueFullError:
                log.warning("settler tick skipped: the engine queue is full")
            except Exception:
                log.exception("settler tick failed")
