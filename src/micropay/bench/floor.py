"""The floor of ``bench charges`` and ``bench metering`` on this machine: their workloads with
none of the checks, in this interpreter and this store.

Each item is decided by bare dictionary arithmetic and stored durably as one row of one SQLite
file (WAL, synchronous=FULL, one transaction and one sync per batch, as the engine writes). Left
out is everything a real charge or event needs besides: request validation, the ledger's
accounts, transfers and limits, idempotency records, status and spending caps, promo credit,
indexes for reading back. No implementation here can be faster, so a target above the floor
cannot be met on this machine, and ``charges_vs_floor`` and ``events_vs_floor`` say how far a
run is from it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import orjson

from micropay.errors import require
from micropay.models.metering import EventRequest
from micropay.models.payments import ChargeRequest

BATCH_SIZE_MAX = 8190
"""Most items one transaction of the floor stores (the API's batch limit)."""
BPS_PER_UNIT = 10_000


@dataclass(frozen=True, slots=True)
class FloorRun:
    """What one floor run did: items stored, seconds taken, and the money it moved (the sum of
    the charges, so a test can hold the floor to the arithmetic a real run must do)."""

    items: int
    elapsed_s: float
    charged: int

    @property
    def per_s(self) -> float:
        return self.items / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE items (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    return db


def _store(db: sqlite3.Connection, rows: list[tuple[bytes]]) -> None:
    db.execute("BEGIN")
    db.executemany("INSERT INTO items (body) VALUES (?)", rows)
    db.execute("COMMIT")


def stored_rows(path: Path) -> int:
    """Rows a floor run left in its file."""
    db = sqlite3.connect(path)
    try:
        (count,) = db.execute("SELECT count(*) FROM items").fetchone()
        return int(count)
    finally:
        db.close()


def charges_floor(path: Path, charges: Sequence[ChargeRequest], fee_bps: int, batch_size: int) -> FloorRun:
    """Charges at the floor: each taken from its payer's balance (funded without bound), split
    into the merchant's part and the fee, and stored with its two legs as one row."""
    require(0 < batch_size <= BATCH_SIZE_MAX, "floor: batch size out of range")
    require(0 <= fee_bps <= BPS_PER_UNIT, "floor: fee out of range")
    balances: dict[str, int] = {}
    earnings: dict[str, int] = {}
    seen: set[str] = set()
    fees = charged = 0
    timestamp = 0
    db = _open(path)
    try:
        started = time.perf_counter()
        for start in range(0, len(charges), batch_size):
            rows: list[tuple[bytes]] = []
            for charge in charges[start : start + batch_size]:
                charge_id, payer, merchant, amount = charge.id, charge.payer_id, charge.merchant_id, charge.amount
                if charge_id in seen:
                    continue
                seen.add(charge_id)
                fee = amount * fee_bps // BPS_PER_UNIT
                balances[payer] = balances.get(payer, 0) - amount
                earnings[merchant] = earnings.get(merchant, 0) + amount - fee
                fees += fee
                charged += amount
                timestamp += 1
                legs = ((charge_id + ":wallet", payer, merchant, amount), (charge_id + ":fee", merchant, "fees", fee))
                rows.append((orjson.dumps((charge_id, payer, merchant, amount, fee, timestamp, legs)),))
            _store(db, rows)
        elapsed_s = time.perf_counter() - started
    finally:
        db.close()
    require(-sum(balances.values()) == sum(earnings.values()) + fees == charged, "floor: charges do not add up")
    return FloorRun(len(seen), elapsed_s, charged)


def events_floor(path: Path, events: Sequence[EventRequest], unit_price: Fraction, batch_size: int) -> FloorRun:
    """Usage events at the floor, all priced per unit at ``unit_price`` (the cheapest model):
    each charged floor(price(total after it)) - floor(price(total before it)) for its payer and
    plan, taken from the payer's balance, and stored as one row."""
    require(0 < batch_size <= BATCH_SIZE_MAX, "floor: batch size out of range")
    require(unit_price >= 0, "floor: negative price")
    numerator, denominator = unit_price.numerator, unit_price.denominator
    quantities: dict[tuple[str, str], int] = {}
    balances: dict[str, int] = {}
    seen: set[str] = set()
    charged = 0
    db = _open(path)
    try:
        started = time.perf_counter()
        for start in range(0, len(events), batch_size):
            rows: list[tuple[bytes]] = []
            for event in events[start : start + batch_size]:
                event_id, payer, plan, quantity = event.id, event.payer_id, event.plan_id, event.quantity
                if event_id in seen:
                    continue
                seen.add(event_id)
                key = (payer, plan)
                before = quantities.get(key, 0)
                after = quantities[key] = before + quantity
                amount = after * numerator // denominator - before * numerator // denominator
                balances[payer] = balances.get(payer, 0) - amount
                charged += amount
                rows.append((orjson.dumps((event_id, payer, plan, quantity, amount)),))
            _store(db, rows)
        elapsed_s = time.perf_counter() - started
    finally:
        db.close()
    priced = sum(total * numerator // denominator for total in quantities.values())
    require(-sum(balances.values()) == charged == priced, "floor: events do not add up to the price")
    return FloorRun(len(seen), elapsed_s, charged)
