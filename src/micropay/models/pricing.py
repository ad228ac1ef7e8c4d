"""Price plans for metered usage, evaluated exactly in integers.

A plan prices a period's cumulative quantity ``q``; prices are decimal strings in minor units
and may be fractions of one (``"0.0004"``). Every price is held as a fraction with one common
denominator per plan, so ``price(q)`` is an exact rational ``numerator / denominator`` computed
with integer arithmetic only (no floats, no Fraction objects on the hot path).

Real-time rating charges each event ``floor(price(after)) - floor(price(before))``: the charges of
a period telescope to ``floor(price(total))``, whatever the order and split of the events, so
fractions carry from event to event and nothing is lost or invented.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from micropay.errors import Refused, require

TIERS_MAX = 32
PRICE_DIGITS_MAX = 12
"""Most digits after the point a price may carry (``"0.000000000001"``)."""
PRICE_INTEGER_DIGITS_MAX = 13
UNIT_PRICE_MAX = Fraction(10**12)
QUANTITY_MAX = 10**12
"""Largest cumulative quantity in one period."""
PRICE_PATTERN = rf"^[0-9]{{1,{PRICE_INTEGER_DIGITS_MAX}}}(\.[0-9]{{1,{PRICE_DIGITS_MAX}}})?$"
"""A price as the API takes it: plain ASCII digits, optionally a point and 1 to 12 more digits.
No sign, exponent, spaces, underscores or other scripts' digits (which ``Decimal`` would accept)."""
_PRICE = re.compile(PRICE_PATTERN)


def parse_price(text: object, param: str) -> Fraction:
    """A non-negative decimal string (``"12"``, ``"0.04"``) as an exact fraction."""
    if not isinstance(text, str) or _PRICE.fullmatch(text) is None:
        raise Refused(
            "invalid_price",
            f'{param} must be a decimal string like "0.04" (digits, at most {PRICE_DIGITS_MAX} after the point)',
            param,
        )
    whole, _, part = text.partition(".")
    price = Fraction(int(whole + part), 10 ** len(part))
    if price > UNIT_PRICE_MAX:
        raise Refused("invalid_price", f"{param} is over the maximum ({UNIT_PRICE_MAX})", param)
    return price


@dataclass(frozen=True, slots=True)
class Tier:
    """Units ``(previous up_to, up_to]`` at ``unit_price`` each, plus ``flat`` once the first lands."""

    up_to: int | None
    unit_price: int  # numerator over the plan's denominator
    flat: int  # numerator over the plan's denominator


@dataclass(frozen=True, slots=True)
class Pricing:
    """A plan's pricing with every price as a numerator over ``denominator``."""

    model: str  # "per_unit" | "graduated" | "package"
    denominator: int
    unit_price: int = 0
    tiers: tuple[Tier, ...] = ()
    package_size: int = 0
    package_price: int = 0
    minimum: int = 0

    @property
    def capacity(self) -> int:
        """The largest period quantity the plan prices: ``QUANTITY_MAX``, or less when the last
        graduated tier has an ``up_to`` (units past it have no price, so they are refused)."""
        if self.model == "graduated" and self.tiers[-1].up_to is not None:
            return min(self.tiers[-1].up_to, QUANTITY_MAX)
        return QUANTITY_MAX

    def numerator(self, quantity: int) -> int:
        """``price(quantity) * denominator``, exactly."""
        require(0 <= quantity <= self.capacity, "pricing: quantity out of range")
        if self.model == "per_unit":
            return quantity * self.unit_price
        if self.model == "package":
            packages = -(-quantity // self.package_size)
            return packages * self.package_price
        return _tiers_numerator(_spans(self.tiers), quantity)

    def price_floor(self, quantity: int) -> int:
        """``floor(price(quantity))`` in whole minor units."""
        return self.numerator(quantity) // self.denominator

    def floor_function(self) -> Callable[[int], int]:
        """``price_floor`` for quantities already checked against ``capacity``, without the
        checks: what rating calls once per event."""
        denominator = self.denominator
        if self.model == "per_unit":
            unit_price = self.unit_price
            return lambda quantity: quantity * unit_price // denominator
        if self.model == "package":
            size, package_price = self.package_size, self.package_price
            return lambda quantity: -(-quantity // size) * package_price // denominator
        spans = _spans(self.tiers)
        return lambda quantity: _tiers_numerator(spans, quantity) // denominator

    def charge(self, before: int, after: int) -> int:
        """What an event taking the period's quantity from ``before`` to ``after`` costs."""
        require(0 <= before <= after, "pricing: quantities must not go down")
        amount = self.price_floor(after) - self.price_floor(before)
        require(amount >= 0, "pricing: price went down as quantity grew")
        return amount

    def minimum_floor(self) -> int:
        """The period minimum in whole minor units (a fractional minimum rounds down)."""
        return self.minimum // self.denominator


Span = tuple[int, int | None, int, int]
"""A graduated tier as rating reads it: the units above ``start`` up to ``up_to`` (None: no end),
its flat fee and unit price (numerators over the plan's denominator)."""


def _spans(tiers: tuple[Tier, ...]) -> list[Span]:
    spans: list[Span] = []
    start = 0
    for tier in tiers:
        spans.append((start, tier.up_to, tier.flat, tier.unit_price))
        if tier.up_to is None:
            break
        start = tier.up_to
    return spans


def _tiers_numerator(spans: list[Span], quantity: int) -> int:
    """``price(quantity) * denominator`` of a graduated plan: each tier the quantity reaches adds
    its flat fee and its units' price."""
    total = 0
    for start, up_to, flat, unit_price in spans:
        if quantity <= start:
            break
        top = quantity if up_to is None or quantity < up_to else up_to
        total += flat + (top - start) * unit_price
    return total


def _common(prices: list[Fraction]) -> int:
    denominator = 1
    for price in prices:
        denominator = math.lcm(denominator, price.denominator)
    return denominator


def _scaled(price: Fraction, denominator: int) -> int:
    scaled = price * denominator
    require(scaled.denominator == 1, "pricing: price not a multiple of the common denominator")
    return int(scaled)


def parse_pricing(data: dict[str, object], minimum: object = None) -> Pricing:
    """Validate an API ``pricing`` object (and an optional period ``minimum``, which may also be
    given as ``pricing.minimum``) into a Pricing."""
    model = data.get("model")
    if minimum is None:
        minimum = data.get("minimum")
    minimum_price = Fraction(0) if minimum is None else parse_price(minimum, "minimum")
    if model == "per_unit":
        unit = parse_price(data.get("unit_price"), "pricing.unit_price")
        denominator = _common([unit, minimum_price])
        return Pricing(
            "per_unit", denominator, unit_price=_scaled(unit, denominator), minimum=_scaled(minimum_price, denominator)
        )
    if model == "package":
        size = data.get("package_size")
        if type(size) is not int or not 0 < size <= QUANTITY_MAX:
            raise Refused("invalid_pricing", "pricing.package_size must be a positive integer", "pricing.package_size")
        price = parse_price(data.get("package_price"), "pricing.package_price")
        denominator = _common([price, minimum_price])
        return Pricing(
            "package",
            denominator,
            package_size=size,
            package_price=_scaled(price, denominator),
            minimum=_scaled(minimum_price, denominator),
        )
    if model == "graduated":
        return _parse_graduated(data, minimum_price)
    raise Refused("invalid_pricing", "pricing.model is per_unit, graduated or package", "pricing.model")


def _parse_graduated(data: dict[str, object], minimum_price: Fraction) -> Pricing:
    raw = data.get("tiers")
    if not isinstance(raw, list) or not 0 < len(raw) <= TIERS_MAX:
        raise Refused("invalid_pricing", f"pricing.tiers holds 1 to {TIERS_MAX} tiers", "pricing.tiers")
    parsed: list[tuple[int | None, Fraction, Fraction]] = []
    below = 0
    for index, tier in enumerate(raw):
        param = f"pricing.tiers[{index}]"
        if not isinstance(tier, dict):
            raise Refused("invalid_pricing", f"{param} must be an object", param)
        up_to = tier.get("up_to")
        last = index == len(raw) - 1
        if up_to is None:
            if not last:
                raise Refused("invalid_pricing", "only the last tier may be open-ended (up_to null)", param)
        elif type(up_to) is not int or not below < up_to <= QUANTITY_MAX:
            raise Refused("invalid_pricing", f"{param}.up_to must be an integer above the previous tier's", param)
        unit = parse_price(tier.get("unit_price"), f"{param}.unit_price")
        flat_text = tier.get("flat")
        flat = Fraction(0) if flat_text is None else parse_price(flat_text, f"{param}.flat")
        parsed.append((up_to, unit, flat))
        below = up_to if up_to is not None else below
    denominator = _common([price for _, unit, flat in parsed for price in (unit, flat)] + [minimum_price])
    tiers = tuple(Tier(up_to, _scaled(unit, denominator), _scaled(flat, denominator)) for up_to, unit, flat in parsed)
    return Pricing("graduated", denominator, tiers=tiers, minimum=_scaled(minimum_price, denominator))


def pricing_to_json(pricing: Pricing) -> dict[str, object]:
    """A Pricing as the API's ``pricing`` object, prices back as exact decimal strings."""

    def text(numerator: int) -> str:
        return _decimal_text(Fraction(numerator, pricing.denominator))

    if pricing.model == "per_unit":
        return {"model": "per_unit", "unit_price": text(pricing.unit_price)}
    if pricing.model == "package":
        return {"model": "package", "package_size": pricing.package_size, "package_price": text(pricing.package_price)}
    return {
        "model": "graduated",
        "tiers": [{"up_to": t.up_to, "unit_price": text(t.unit_price), "flat": text(t.flat)} for t in pricing.tiers],
    }


def _decimal_text(value: Fraction) -> str:
    """An exact decimal string for a fraction whose denominator divides a power of ten."""
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
        require(digits <= PRICE_DIGITS_MAX, "pricing: not a decimal price")
    scaled = int(value * 10**digits)
    if not digits:
        return str(scaled)
    whole, part = divmod(scaled, 10**digits)
    return f"{whole}.{part:0{digits}d}"


def minimum_text(pricing: Pricing) -> str:
    return _decimal_text(Fraction(pricing.minimum, pricing.denominator))
