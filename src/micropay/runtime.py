"""How Python runs Micropay: the serving processes (``micropay serve`` and its front processes)
tune the cyclic garbage collector at start; the in-process benchmarks run under the same tuning."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def serving_gc() -> Iterator[None]:
    """Run the block under the collector as ``micropay serve`` tunes it (what exists now is
    frozen, the thresholds are ``GC_THRESHOLDS``), then restore the thresholds and unfreeze."""
    thresholds = gc.get_threshold()
    tune_garbage_collector()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
