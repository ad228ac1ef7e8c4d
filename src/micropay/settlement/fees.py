"""Fee arithmetic in exact integers: rail fees and major-to-minor unit conversion."""

from __future__ import annotations

from fractions import Fraction

from micropay.errors import require

BPS_DENOMINATOR = 10_000


def rail_fee(amount: int, percent_bps: int, fixed: int) -> int:
    """A rail's fee on ``amount``: ``fixed`` plus ``percent_bps`` of it, rounded up to a minor unit."""
    require(amount > 0 and percent_bps >= 0 and fixed >= 0, "rail_fee: bad arguments")
    return fixed + -(-amount * percent_bps // BPS_DENOMINATOR)


def minor_units(major: str, scale: int) -> int:
    """A decimal string in major units (``"0.30"``) as whole minor units, rounded half up."""
    value = Fraction(major) * 10**scale
    require(value >= 0, "minor_units: negative amount")
    return int(value + Fraction(1, 2))
