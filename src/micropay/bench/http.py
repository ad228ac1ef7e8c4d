"""``micropay bench http``: transfers over HTTP against a real ``micropay serve`` process.

(a) many concurrent clients each sending single transfers: transfers/s, p50 and p99 latency;
(b) the batch endpoint with 8190 transfers per request: transfers/s. The load generator runs in
its own process (``micropay.bench.loadgen``), only against 127.0.0.1, bounded in time. After
(a), the same load against a bare protocol answering a constant (``micropay.bench.baseline``)
gives this machine's floor at the time: ``single_vs_baseline`` compares runs across a drift.
On a virtual machine, ``single_cpu_steal_pct`` and ``batch_cpu_steal_pct`` say what share of
the cores the hypervisor gave to other guests during each part (Linux's /proc/stat).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from micropay.bench.report import Reporter
from micropay.errors import MicropayError

LEDGER = "USD"
SERVER_START_S_MAX = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _call(port: int, key: str, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def start_server(
    directory: Path, port: int, extra_args: list[str] | None = None, db: str | None = None, name: str = "server"
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``micropay serve`` (on a fresh SQLite file unless ``db`` names a database);
    return the process and its admin key."""
    key_file = directory / "admin.key"
    command = [
        str(Path(sys.executable).parent / "micropay"),
        "serve",
        "--db",
        db or f"sqlite:///{directory / 'bench.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--admin-key-file",
        str(key_file),
        *(extra_args or []),
    ]
    log_path = directory / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + SERVER_START_S_MAX
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise MicropayError(f"server exited with {server.returncode}: {log_path.read_text()}")
        if key_file.exists() and key_file.read_text().strip():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return server, key_file.read_text().strip()
            except OSError:
                pass
        time.sleep(0.05)
    server.kill()
    raise MicropayError("server did not start in time")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def setup_accounts(port: int, key: str, accounts: int) -> None:
    status, body = _call(port, key, "POST", "/v1/ledgers", {"code": LEDGER, "scale": 2})
    if status not in (200, 201):
        raise MicropayError(f"creating the ledger answered {status}: {body}")
    for i in range(accounts):
        status, body = _call(port, key, "POST", "/v1/accounts", {"id": f"acct-{i}", "ledger": LEDGER, "flags": []})
        if status not in (200, 201):
            raise MicropayError(f"creating an account answered {status}: {body}")


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used so far, where /proc tells (Linux)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CpuTicks = tuple[int, int]
"""The machine's CPU time so far in clock ticks: all of it, and the part stolen (see ``steal_pct``)."""


def parse_cpu_line(line: str) -> CpuTicks | None:
    """The first line of /proc/stat (``cpu user nice system idle iowait irq softirq steal ...``)
    as (all ticks, steal ticks); None if it is not that line. Guest time is already counted in
    user and nice, so only the first eight fields are added."""
    fields = line.split()
    if len(fields) < 9 or fields[0] != "cpu" or not all(field.isdigit() for field in fields[1:9]):
        return None
    ticks = [int(field) for field in fields[1:9]]
    return sum(ticks), ticks[7]


def machine_cpu_ticks() -> CpuTicks | None:
    """This machine's CPU ticks so far, where /proc/stat tells (Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            return parse_cpu_line(handle.readline())
    except OSError:
        return None


def steal_pct(before: CpuTicks | None, after: CpuTicks | None) -> float | None:
    """The share of the machine's CPU time between two readings that the hypervisor gave to other
    guests ("steal"): on a virtual machine, the part of the cores a run did not have."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])


def run_load(
    ports: list[int], key: str, mode: str, connections: int, duration_s: float, accounts: int
) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "micropay.bench.loadgen",
        *(argument for port in ports for argument in ("--port", str(port))),
        "--key",
        key,
        "--mode",
        mode,
        "--connections",
        str(connections),
        "--duration-s",
        str(duration_s),
        "--accounts",
        str(accounts),
        "--prefix",
        f"{mode}-{os.getpid()}",
    ]
    done = subprocess.run(command, capture_output=True, check=True, timeout=duration_s + 120)
    summary: dict[str, object] = json.loads(done.stdout)
    return summary


def run_baseline(connections: int, duration_s: float) -> dict[str, object]:
    """The load generator's single mode against a bare protocol answering a constant
    (``micropay.bench.baseline``): what one request costs this machine now, at the floor."""
    port = free_port()
    lifetime_s = duration_s + SERVER_START_S_MAX + 10
    command = [sys.executable, "-m", "micropay.bench.baseline", "--port", str(port), "--lifetime-s", str(lifetime_s)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_START_S_MAX
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise MicropayError("the baseline server did not start") from None
                time.sleep(0.05)
        return run_load([port], "none", "single", connections, duration_s, accounts=2)
    finally:
        stop_server(server)


def bench_http(
    report: Reporter,
    *,
    connections: int = 64,
    duration_s: float = 10.0,
    batch_connections: int = 2,
    accounts: int = 1000,
    directory: str | None = None,
    db: str | None = None,
    servers: int = 1,
    front_processes: int = 1,
) -> None:
    """``servers`` > 1 needs ``db`` naming a PostgreSQL database (one SQLite file has one writer).
    Each server runs with ``front_processes`` front processes (``micropay serve --front-processes``)."""
    if servers > 1 and not (db or "").startswith(("postgresql://", "postgres://")):
        raise MicropayError("several servers need --db postgresql://... (SQLite admits one writer)")
    with tempfile.TemporaryDirectory(dir=directory, prefix="micropay-bench-http-") as tmp:
        ports = [free_port() for _ in range(servers)]
        started: list[subprocess.Popen[bytes]] = []
        try:
            key = ""
            for number, port in enumerate(ports):
                server, key = start_server(
                    Path(tmp), port, front_arguments(front_processes), db=db, name=f"server-{number}"
                )
                started.append(server)
            setup_accounts(ports[0], key, accounts)
            report.note(
                f"{servers} server process(es), {front_processes} front process(es) each,"
                f" on {db.split('@')[-1] if db else 'a fresh SQLite file'}"
            )
            report.figure("front_processes", front_processes, "1")
            single, single_per_s = _measured_load(
                report, started, ports, key, "single", connections, duration_s, accounts
            )
            report.figure("single_p50_ms", float(str(single["p50_ms"])), "ms")
            report.figure("single_p99_ms", float(str(single["p99_ms"])), "ms")
            baseline = run_baseline(connections, duration_s)
            report.note(f"baseline: {baseline}")
            baseline_per_s = int(str(baseline["transfers_ok"])) / float(str(baseline["elapsed_s"]))
            report.figure("baseline_requests_per_s", baseline_per_s, "1/s")
            if baseline_per_s:
                report.figure("single_vs_baseline", single_per_s / baseline_per_s, "ratio")
            _measured_load(report, started, ports, key, "batch", batch_connections, duration_s, accounts)
        finally:
            for server in started:
                stop_server(server)


def _measured_load(
    report: Reporter,
    servers: list[subprocess.Popen[bytes]],
    ports: list[int],
    key: str,
    mode: str,
    connections: int,
    duration_s: float,
    accounts: int,
) -> tuple[dict[str, object], float]:
    """One part of the benchmark (``mode``: single or batch): its load, and the figures
    ``{mode}_transfers_per_s``, ``{mode}_server_cpu_us`` and ``{mode}_cpu_steal_pct``. Answers
    the load generator's summary and the rate."""
    cpu_before, machine_before = _cpu_s(servers), machine_cpu_ticks()
    summary = run_load(ports, key, mode, connections, duration_s, accounts)
    cpu_after, machine_after = _cpu_s(servers), machine_cpu_ticks()
    report.note(f"{mode}: {summary}")
    transfers = int(str(summary["transfers_ok"]))
    per_s = transfers / float(str(summary["elapsed_s"]))
    report.figure(f"{mode}_transfers_per_s", per_s, "1/s")
    if cpu_before is not None and cpu_after is not None and transfers:
        # CPU per transfer moves less than the rates when other work shares the machine.
        report.figure(f"{mode}_server_cpu_us", (cpu_after - cpu_before) / transfers * 1e6, "us/transfer")
    stolen = steal_pct(machine_before, machine_after)
    if stolen is not None:  # a run that lacked part of its cores says so
        report.figure(f"{mode}_cpu_steal_pct", stolen, "%")
    return summary, per_s


def _cpu_s(servers: list[subprocess.Popen[bytes]]) -> float | None:
    """CPU seconds the server processes and their front processes have used so far, together."""
    readings = [process_cpu_s(pid) for server in servers for pid in (server.pid, *child_pids(server.pid))]
    return None if None in readings else sum(r for r in readings if r is not None)


def child_pids(pid: int) -> list[int]:
    """The processes ``pid`` started (its front processes), where /proc tells (Linux)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def front_arguments(front_processes: int) -> list[str]:
    """``micropay serve``'s arguments for this many front processes."""
    return ["--front-processes", str(front_processes)] if front_processes else []
