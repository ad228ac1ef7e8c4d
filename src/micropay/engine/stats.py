"""Engine counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class EngineStats:
    """Counters since start: batches committed, events in them, store writes, seconds spent
    applying batches and writing them, and batches run again after a conflict with another writer."""

    batches: int = 0
    events: int = 0
    syncs: int = 0
    apply_s: float = 0.0
    write_s: float = 0.0
    retries: int = 0
