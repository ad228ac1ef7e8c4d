"""Points in time as clients write them: RFC 3339 with an offset, read as ns since the epoch."""

from __future__ import annotations

import datetime as dt

from micropay.ledger.limits import NS_PER_S

TIMESTAMP_NS_MAX = 2**63 - 1
_EXAMPLE = "2026-05-01T12:00:00Z"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def rfc3339_ns(value: str) -> int:
    """An RFC 3339 timestamp with its offset (``2026-05-01T12:00:00Z``) as ns since the epoch;
    ValueError (a message for the client) for anything else."""
    text = value.strip()
    if "T" not in text and "t" not in text:
        raise ValueError(f"must be an RFC 3339 timestamp such as {_EXAMPLE}")
    try:
        moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as error:
        raise ValueError(f"must be an RFC 3339 timestamp such as {_EXAMPLE}") from error
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("must carry a UTC offset (Z or +hh:mm)")
    delta = moment - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1_000
    if not 0 <= ns <= TIMESTAMP_NS_MAX:
        raise ValueError("must lie between 1970 and 2262")
    return ns


def check_rfc3339(value: str) -> str:
    """``value`` unchanged if ``rfc3339_ns`` reads it (a pydantic after-validator)."""
    rfc3339_ns(value)
    return value
