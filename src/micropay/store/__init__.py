"""Persistence behind one protocol: SQLite (embedded default); PostgreSQL (production)."""

from micropay.store.base import Document, LogStore, Store
from micropay.store.sqlite import SQLiteStore, sqlite_path

DEFAULT_DB_URL = "sqlite:///./data/micropay.db"


def open_store(url: str) -> Store:
    """Open the store a database URL names: ``postgresql://...`` or ``sqlite:///path`` (or a bare path)."""
    if url.startswith(("postgresql://", "postgres://")):
        from micropay.store.postgres import PostgresStore  # psycopg loads only when asked for

        return PostgresStore(url)
    return SQLiteStore(sqlite_path(url))


__all__ = ["DEFAULT_DB_URL", "Document", "LogStore", "SQLiteStore", "Store", "open_store"]
