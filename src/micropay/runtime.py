"""How Python runs Micropay: the serving processes (``micropay serve`` and its front processes)
tune the cyclic garbage collector at start; the in-process benchmarks run under the same tuning."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

GC_THRESHOLDS = (100_000, 20, 20)
"""The cyclic collector's thresholds while serving (Python's defaults: 700, 10, 10).

Every request allocates hundreds of short-lived containers (a batch of 8190 transfers, some
hundred thousand) that mostly die by reference counting; at the defaults the collector keeps
rescanning them and promoting what is still in flight. Measured under the HTTP benchmark at the
defaults: 2 500 young collections and 20 full ones (66 ms each, stalling every request) in 12 s.

The young threshold sits above what one full batch keeps alive at once (a metering batch of
8190 events holds some 40,000 containers until it is answered): at 20,000 nearly every such
batch set off a young collection that scanned all of it: 54 collections and 0.35 s of a 4.4 s
metering run, 92 and 0.88 s of the charges benchmark's in-process parts; at 100,000, one
collection and 0.02 s in each."""


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
