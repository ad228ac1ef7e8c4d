"""Business rules: turn payment intents into ledger transfers, inside engine operations."""
