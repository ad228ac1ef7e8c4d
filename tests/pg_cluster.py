"""A private PostgreSQL cluster for tests: initdb in a temp dir, a free loopback port, stopped after.

Uses the server binaries from PATH or Debian's /usr/lib/postgresql/<version>/bin. As root (CI),
the cluster runs as the ``postgres`` system user, which refuses to run as root otherwise.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

START_TIMEOUT_S = 60
"""How long the cluster may take to accept connections."""


def server_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are, or None when PostgreSQL's server is not installed."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """One running private cluster; ``url`` names a fresh database for each ``database()`` call."""

    def __init__(self, bin_dir: Path) -> None:
        self._bin = bin_dir
        self._root = Path(tempfile.mkdtemp(prefix="micropay-pg-"))
        self._data = self._root / "data"
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = "postgres"
            entry = pwd.getpwnam(self._user)
            os.chown(self._root, entry.pw_uid, entry.pw_gid)
        self.port = _free_port()
        self._databases = 0
        self._run("initdb", "-D", str(self._data), "-U", "micropay", "-A", "trust", "-E", "UTF8", "--no-locale")
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self._root}"
            " -c max_connections=200 -c shared_buffers=256MB -c fsync=on -c synchronous_commit=on"
        )
        self._run(
            "pg_ctl", "-D", str(self._data), "-l", str(self._root / "server.log"),
            "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start",
        )  # fmt: skip

    def _run(self, program: str, *args: str) -> None:
        command = [str(self._bin / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self._root)

    def database(self) -> str:
        """Make an empty database and return its URL: a schema of its own in the cluster's one
        database, named by the URL's search path. (A ``CREATE DATABASE`` per test took 230 ms and
        wrote a copy of the template to the write-ahead log; a schema takes a few ms.)"""
        self._databases += 1
        name = f"micropay_{self._databases}"
        with psycopg.connect(f"postgresql://micropay@127.0.0.1:{self.port}/postgres", autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {name}".encode())
        return f"postgresql://micropay@127.0.0.1:{self.port}/postgres?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop")
        finally:
            _remove_in_background(self._root)


def _remove_in_background(path: Path) -> None:
    """Delete ``path`` in a process of its own that outlives this one: over a whole test run the
    cluster grows to a few gigabytes (write-ahead log, a database per test), and deleting it took
    11-14 s that nobody needs to wait for."""
    try:
        subprocess.run(["sh", "-c", 'rm -rf -- "$0" >/dev/null 2>&1 &', str(path)], check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(path, ignore_errors=True)
