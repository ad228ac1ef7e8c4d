"""Micropay: micropayments on one double-entry ledger."""

__version__ = "0.1.0"
