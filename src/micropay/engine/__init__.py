"""The engine: group commit in front of the ledger state machine and the store."""

from micropay.engine.context import BatchContext
from micropay.engine.engine import HISTORY_PAGE_MAX, QUEUE_DEPTH_MAX, Engine
from micropay.engine.stats import EngineStats

__all__ = ["HISTORY_PAGE_MAX", "QUEUE_DEPTH_MAX", "BatchContext", "Engine", "EngineStats"]
