"""A writer process for the crash test: ``python crash_writer.py DB RUN``.

Opens an engine on DB (recovering whatever is there), prints ``READY``, then keeps submitting
transfers from a few threads: single ones, independent batches (some on the fast path), linked
chains whose ids say how long the chain is (``<run>-<n>-c<j>of<k>``), and transfers written with
a record of the record log under the same id (``<run>-<n>-r``, kind ``RECORD_KIND``). After each
call returns it prints ``ACK`` and the ids that answered ``ok``, flushed: a printed id is
acknowledged, hence durable. It runs until it is killed.
"""

from __future__ import annotations

import random
import sys
import threading

from micropay.engine import BatchContext, Engine
from micropay.ledger import AccountFlags, AccountRequest, Result, TransferFlags, TransferRequest
from micropay.store import SQLiteStore

LEDGER = "USD"
WALLETS = [f"w{i}" for i in range(6)]
SHOPS = [f"s{i}" for i in range(3)]
THREADS = 4
RECORD_KIND = "charge"  # one of the store's logged kinds

_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def set_up(engine: Engine) -> None:
    engine.create_ledger(LEDGER, 2)
    engine.create_accounts(
        [
            AccountRequest("mint", LEDGER),
            *(AccountRequest(w, LEDGER, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS, credit_limit=20) for w in WALLETS),
            *(AccountRequest(s, LEDGER) for s in SHOPS),
        ]
    )


def random_transfer(rng: random.Random, transfer_id: str, flags: int = 0) -> TransferRequest:
    if rng.random() < 0.3:
        debit, credit, amount = "mint", rng.choice(WALLETS), rng.randrange(1, 60)
    else:
        debit, credit, amount = rng.choice(WALLETS), rng.choice(SHOPS), rng.randrange(1, 40)
    return TransferRequest(transfer_id, debit, credit, amount, LEDGER, flags=flags)


def client(engine: Engine, run: str, number: int) -> None:
    rng = random.Random(f"{run}-{number}")
    n = 0
    while True:
        n += 1
        prefix = f"{run}-{number}-{n}"
        kind = rng.random()
        if kind < 0.15:
            request = random_transfer(rng, f"{prefix}-r")
            if engine.call(lambda ctx, request=request: with_record(ctx, request)):
                say("ACK " + request.id)
            continue
        if kind < 0.4:
            requests = [random_transfer(rng, prefix)]
        elif kind < 0.7:
            size = rng.choice([2, 3, 5, 8, 12, 20])
            requests = [random_transfer(rng, f"{prefix}-{i}") for i in range(size)]
        else:
            length = rng.randrange(2, 5)
            requests = [
                random_transfer(rng, f"{prefix}-c{j}of{length}", TransferFlags.LINKED if j < length - 1 else 0)
                for j in range(length)
            ]
        outcomes = engine.create_transfers(requests)
        acked = [r.id for r, (code, _) in zip(requests, outcomes, strict=True) if code is Result.OK]
        if acked:
            say("ACK " + " ".join(acked))


def with_record(ctx: BatchContext, request: TransferRequest) -> bool:
    """Create ``request`` and, if it went through, a record of it under the same id."""
    [(code, _)] = ctx.create_transfers([request])
    if code is not Result.OK:
        return False
    ctx.put_document(RECORD_KIND, request.id, b'{"amount":%d}' % request.amount)
    return True


def main() -> None:
    path, run = sys.argv[1], sys.argv[2]
    engine = Engine(SQLiteStore(path))
    set_up(engine)
    say("READY")
    threads = [threading.Thread(target=client, args=(engine, run, i), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
