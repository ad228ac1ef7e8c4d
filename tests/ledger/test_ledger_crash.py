"""Crash safety: a writer process killed with SIGKILL at random moments, again and again.

After every kill the file must open cleanly (SQLite integrity check), hold every transfer the
writer acknowledged, hold each linked chain whole or not at all, hold a record of the record log
exactly for each transfer written with one, and balance (``verify()``).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import IO

import pytest
from crash_writer import RECORD_KIND
from ledger_testkit import assert_conserved, open_engine

from micropay.store import SQLiteStore

WRITER = Path(__file__).with_name("crash_writer.py")
KILLS = 32
CHAIN_ID = re.compile(r"^(?P<chain>.+)-c(?P<index>\d+)of(?P<length>\d+)$")


class Writer:
    """One run of crash_writer.py, its stdout read by a thread as it comes."""

    def __init__(self, path: Path, run: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), run],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.ready = threading.Event()
        self.acked: list[str] = []
        assert self.process.stdout is not None
        self.reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self.reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            if not raw.endswith(b"\n"):
                break  # a line cut short by the kill was never acknowledged
            line = raw.decode().strip()
            if line == "READY":
                self.ready.set()
            elif line.startswith("ACK "):
                self.acked.extend(line[4:].split())

    def kill(self) -> list[str]:
        """SIGKILL the writer; the ids it acknowledged before dying."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        self.reader.join(30)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return self.acked


def stored_transfer_ids(store: SQLiteStore) -> list[str]:
    return [t.id for journal in store.load() for t in journal.transfers]


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_loses_or_tears_anything(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    rng = random.Random(20240611)
    acked: set[str] = set()
    acked_per_kill: list[int] = []
    for kill in range(KILLS):
        writer = Writer(path, f"r{kill}")
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0, 0.3))  # now and then during start-up or recovery
        else:
            assert writer.ready.wait(60), "the writer did not start"
            time.sleep(rng.uniform(0.01, 0.35))
        new = writer.kill()
        acked.update(new)
        acked_per_kill.append(len(new))

        engine = open_engine(path)  # recovery: replays the log and runs verify()
        try:
            store = engine.store
            assert isinstance(store, SQLiteStore)
            assert store.integrity_check() == "ok"
            stored = stored_transfer_ids(store)
            assert len(stored) == len(set(stored)), "a transfer id is stored twice"
            missing = acked - set(stored)
            assert not missing, f"kill {kill}: {len(missing)} acknowledged transfers lost, e.g. {sorted(missing)[:5]}"
            chains: dict[str, set[int]] = defaultdict(set)
            lengths: dict[str, int] = {}
            for transfer_id in stored:
                match = CHAIN_ID.match(transfer_id)
                if match:
                    chains[match["chain"]].add(int(match["index"]))
                    lengths[match["chain"]] = int(match["length"])
            torn = [chain for chain, members in chains.items() if members != set(range(lengths[chain]))]
            assert not torn, f"kill {kill}: linked chains stored in part: {torn[:5]}"
            with_record = sorted(transfer_id for transfer_id in stored if transfer_id.endswith("-r"))
            records = dict(store.list_documents(RECORD_KIND, None, len(with_record) + 1))
            assert sorted(records) == with_record, f"kill {kill}: records and their transfers differ"
            assert all(store.read_document(RECORD_KIND, i) == records[i] for i in with_record[-5:])
            assert_conserved(engine)
            for transfer_id in rng.sample(sorted(acked), min(len(acked), 20)):
                assert engine.transfer(transfer_id) is not None
        finally:
            engine.close()
    assert sum(1 for n in acked_per_kill if n) >= KILLS // 2, f"the writer made too little progress: {acked_per_kill}"
