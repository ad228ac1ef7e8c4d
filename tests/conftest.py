"""Fixtures for every test directory: a private PostgreSQL cluster, started once per run.

When PostgreSQL's server binaries are missing the PostgreSQL tests are skipped, unless
MICROPAY_REQUIRE_POSTGRES=1 (set by .ci/run, which installs them), where they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pg_cluster import Cluster, server_bin_dir


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    bin_dir = server_bin_dir()
    if bin_dir is None:
        if os.environ.get("MICROPAY_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL's server binaries are not installed (MICROPAY_REQUIRE_POSTGRES=1)")
        pytest.skip("PostgreSQL's server binaries are not installed")
    cluster = Cluster(bin_dir)
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """The URL of a fresh, empty database in the private cluster."""
    return postgres_cluster.database()
