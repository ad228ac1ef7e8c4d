"""Persistence behind one protocol: SQLite (embedded default); PostgreSQL (production)."""

from micropay.errors import StoreError
from micropay.store.base import Document, Store
from micropay.store.sqlite import SQLiteStore, sqlite_path

DEFAULT_DB_URL = "sqlite:///./data/micropay.db"


def open_store(url: str) -> Store:
    """Open the store a database URL names: ``sqlite:///path`` (or a bare path)."""
    if url.startswith(("postgresql://", "postgres://")):
        raise StoreError("the PostgreSQL store is not available in this build; use sqlite:///path")
    return SQLiteStore(sqlite_path(url))


__all__ = ["DEFAULT_DB_URL", "Document", "SQLiteStore", "Store", "open_store"]
