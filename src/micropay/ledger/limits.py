"""Named bounds of the ledger. Everything has a limit."""

from __future__ import annotations

AMOUNT_MAX = 10**15
"""Largest amount one transfer may move, in minor units."""

BALANCE_MAX = 2**63 - 1
"""Largest value a posted or pending total may reach (a signed 64-bit column)."""

CREDIT_LIMIT_MAX = 10**15
"""Largest credit limit an account may carry."""

BATCH_SIZE_MAX = 8190
"""Most events one submitted batch may hold."""

ID_LENGTH_MAX = 64
ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
"""Ids clients choose: 1 to 64 characters of this alphabet."""

LEDGER_ID_LENGTH_MAX = 128
LEDGER_ID_ALPHABET = ID_ALPHABET | {":"}
"""Ids inside the ledger: clients' ids, and the models' own (``payer:p1:wallet:USD``); a ``:``
marks the latter, so the two never collide."""

LEDGER_CODE_LENGTH_MAX = 12
SCALE_MAX = 12

CODE_MAX = 65535
"""Largest user code on a transfer (an unsigned 16-bit value)."""

TIMEOUT_S_MAX = 10 * 366 * 86400
"""Longest a pending transfer may reserve funds: ten years."""

METADATA_KEYS_MAX = 20
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500

NS_PER_S = 1_000_000_000
