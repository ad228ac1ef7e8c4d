"""The pure ledger domain: data, result codes and the batch state machine. No I/O."""

from micropay.ledger.state import Journal, LedgerState, TransferOutcome
from micropay.ledger.types import (
    ACCOUNT_FLAG_NAMES,
    TRANSFER_FLAG_NAMES,
    Account,
    AccountFlags,
    AccountRequest,
    Ledger,
    Metadata,
    PendingStatus,
    Result,
    Transfer,
    TransferFlags,
    TransferRequest,
    outcome_codes,
)

__all__ = [
    "ACCOUNT_FLAG_NAMES",
    "TRANSFER_FLAG_NAMES",
    "Account",
    "AccountFlags",
    "AccountRequest",
    "Journal",
    "Ledger",
    "LedgerState",
    "Metadata",
    "PendingStatus",
    "Result",
    "Transfer",
    "TransferFlags",
    "TransferOutcome",
    "TransferRequest",
    "outcome_codes",
]
