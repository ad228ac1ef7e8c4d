"""Price plans, without the engine: worked examples computed by hand, strict price strings, and
the properties real-time rating rests on (charges telescope to floor(price(total)) whatever the
split and order of the events; the price never goes down as quantity grows)."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micropay.errors import Refused
from micropay.models.metering import USAGE_KEPT_MAX, Usage, decode_usage, encode_usage, usage_of
from micropay.models.pricing import (
    QUANTITY_MAX,
    TIERS_MAX,
    Pricing,
    minimum_text,
    parse_price,
    parse_pricing,
    pricing_to_json,
)

GRADUATED_WITH_FLATS: dict[str, Any] = {
    "model": "graduated",
    "tiers": [
        {"up_to": 100, "unit_price": "0.5", "flat": "10"},
        {"up_to": 1000, "unit_price": "0.25", "flat": "5"},
        {"up_to": None, "unit_price": "0.1"},
    ],
}


def charges(pricing: Pricing, quantities: list[int]) -> list[int]:
    """What each event costs when events of these quantities arrive in this order."""
    total = 0
    out = []
    for quantity in quantities:
        out.append(pricing.charge(total, total + quantity))
        total += quantity
    return out


# ----------------------------------------------------------------- worked examples
def test_per_unit_fraction_of_a_cent_carries_until_a_whole_cent() -> None:
    # 0.0004 of a cent per call: 2,500 calls make one cent.
    pricing = parse_pricing({"model": "per_unit", "unit_price": "0.0004"})
    assert pricing.price_floor(2_499) == 0  # 0.9996
    assert pricing.price_floor(2_500) == 1
    assert pricing.price_floor(10_000) == 4
    # 1000 + 1000 + 1000 calls: 0.4, 0.8, 1.2 cents so far -> charges 0, 0, 1;
    # then 2000 more: 2.0 cents -> 1 more; then 1 call: 2.0004 -> nothing.
    assert charges(pricing, [1_000, 1_000, 1_000, 2_000, 1]) == [0, 0, 1, 1, 0]


def test_per_unit_whole_price() -> None:
    pricing = parse_pricing({"model": "per_unit", "unit_price": "2"})
    assert charges(pricing, [1, 5, 10]) == [2, 10, 20]


def test_graduated_tiers_with_flat_fees() -> None:
    pricing = parse_pricing(GRADUATED_WITH_FLATS)
    # Hand-computed: units 1..100 at 0.5 (+10 once the first lands), 101..1000 at 0.25 (+5 once),
    # beyond at 0.1.
    assert pricing.price_floor(0) == 0  # no unit, no flat
    assert pricing.price_floor(1) == 10  # 10 + 0.5 = 10.5
    assert pricing.price_floor(100) == 60  # 10 + 100 * 0.5
    assert pricing.price_floor(101) == 65  # 60 + 5 + 0.25 = 65.25
    assert pricing.price_floor(1_000) == 290  # 60 + 5 + 900 * 0.25
    assert pricing.price_floor(1_001) == 290  # 290.1
    assert pricing.price_floor(1_010) == 291  # 290 + 10 * 0.1
    assert charges(pricing, [1, 99, 1, 899, 10]) == [10, 50, 5, 225, 1]
    # One event crossing two tier boundaries pays both flats and both tiers' units at once.
    assert charges(pricing, [150]) == [10 + 50 + 5 + 12]  # 77.5 -> 77


def test_graduated_with_a_last_tier_bounded_prices_only_up_to_it() -> None:
    pricing = parse_pricing({"model": "graduated", "tiers": [{"up_to": 1_000, "unit_price": "0.01"}]})
    assert pricing.capacity == 1_000
    assert pricing.price_floor(1_000) == 10
    assert parse_pricing(GRADUATED_WITH_FLATS).capacity == QUANTITY_MAX


def test_package_rounds_partial_packages_up() -> None:
    pricing = parse_pricing({"model": "package", "package_size": 100, "package_price": "3"})
    assert [pricing.price_floor(q) for q in (0, 1, 100, 101, 250)] == [0, 3, 3, 6, 9]
    assert charges(pricing, [1, 99, 1, 149]) == [3, 0, 3, 3]


def test_package_with_a_fractional_price() -> None:
    pricing = parse_pricing({"model": "package", "package_size": 100, "package_price": "0.5"})
    assert [pricing.price_floor(q) for q in (1, 101, 201, 301)] == [0, 1, 1, 2]  # 0.5, 1.0, 1.5, 2.0


def test_minimum_is_exact_and_floors_to_whole_units() -> None:
    assert parse_pricing({"model": "per_unit", "unit_price": "1"}, "500").minimum_floor() == 500
    assert parse_pricing({"model": "per_unit", "unit_price": "0.001"}, "12.75").minimum_floor() == 12
    assert parse_pricing({"model": "per_unit", "unit_price": "1", "minimum": "7"}).minimum_floor() == 7
    assert parse_pricing({"model": "per_unit", "unit_price": "1"}).minimum_floor() == 0


# ----------------------------------------------------------------- strict prices and plans
@pytest.mark.parametrize("text", ["0", "12", "0.04", "0.0004", "0.000000000001", "1000000000000", "007.50"])
def test_accepted_prices(text: str) -> None:
    assert parse_price(text, "p") == Fraction(text)


@pytest.mark.parametrize(
    "text",
    [" 1", "1 ", "1_0", "\u0661", "+1", "-1", "1e3", "1E-3", ".5", "5.", "", "abc", "NaN", "Infinity", "0x10", "1\n"],
)
def test_prices_are_plain_decimal_strings(text: str) -> None:
    with pytest.raises(Refused) as info:
        parse_price(text, "unit_price")
    assert info.value.code == "invalid_price"


@pytest.mark.parametrize("value", [1.5, 1, None, True, ["1"]])
def test_prices_must_be_strings(value: object) -> None:
    with pytest.raises(Refused):
        parse_price(value, "unit_price")


def test_price_bounds() -> None:
    with pytest.raises(Refused):
        parse_price("0.0000000000001", "p")  # 13 decimals
    with pytest.raises(Refused):
        parse_price("1000000000001", "p")  # over 10^12


@pytest.mark.parametrize(
    "pricing",
    [
        {"model": "tiered", "unit_price": "1"},
        {"model": "per_unit"},
        {"model": "per_unit", "unit_price": 0.04},
        {"model": "package", "package_size": 0, "package_price": "1"},
        {"model": "package", "package_size": 1.0, "package_price": "1"},
        {"model": "package", "package_size": True, "package_price": "1"},
        {"model": "graduated", "tiers": []},
        {"model": "graduated", "tiers": [{"up_to": None, "unit_price": "1"}, {"up_to": None, "unit_price": "1"}]},
        {"model": "graduated", "tiers": [{"up_to": 10, "unit_price": "1"}, {"up_to": 10, "unit_price": "1"}]},
        {"model": "graduated", "tiers": [{"up_to": 10.0, "unit_price": "1"}]},
        {"model": "graduated", "tiers": [{"up_to": 0, "unit_price": "1"}]},
        {"model": "graduated", "tiers": [{"up_to": None, "unit_price": "1", "flat": 2}]},
        {"model": "graduated", "tiers": [{"up_to": i + 1, "unit_price": "1"} for i in range(TIERS_MAX + 1)]},
    ],
)
def test_bad_pricing_is_refused(pricing: dict[str, Any]) -> None:
    with pytest.raises(Refused) as info:
        parse_pricing(pricing)
    assert info.value.code in ("invalid_pricing", "invalid_price")


def test_pricing_comes_back_in_canonical_decimal_strings() -> None:
    pricing = parse_pricing({"model": "per_unit", "unit_price": "0.0400"}, "10.50")
    assert pricing_to_json(pricing) == {"model": "per_unit", "unit_price": "0.04"}
    assert minimum_text(pricing) == "10.5"
    graduated = parse_pricing(GRADUATED_WITH_FLATS)
    assert pricing_to_json(graduated)["tiers"] == [
        {"up_to": 100, "unit_price": "0.5", "flat": "10"},
        {"up_to": 1000, "unit_price": "0.25", "flat": "5"},
        {"up_to": None, "unit_price": "0.1", "flat": "0"},
    ]


# ----------------------------------------------------------------- properties
DIGITS = st.integers(min_value=0, max_value=6)


@st.composite
def prices(draw: st.DrawFn, max_whole: int = 50) -> str:
    digits = draw(DIGITS)
    scaled = draw(st.integers(min_value=0, max_value=max_whole * 10**digits))
    if not digits:
        return str(scaled)
    whole, part = divmod(scaled, 10**digits)
    return f"{whole}.{part:0{digits}d}"


@st.composite
def pricings(draw: st.DrawFn) -> dict[str, Any]:
    model = draw(st.sampled_from(["per_unit", "graduated", "package"]))
    if model == "per_unit":
        return {"model": model, "unit_price": draw(prices())}
    if model == "package":
        return {"model": model, "package_size": draw(st.integers(1, 500)), "package_price": draw(prices())}
    bounds = sorted(draw(st.sets(st.integers(1, 3_000), min_size=0, max_size=4)))
    tiers: list[dict[str, Any]] = [{"up_to": bound, "unit_price": draw(prices())} for bound in bounds]
    tiers.append({"up_to": None, "unit_price": draw(prices())})
    for tier in tiers:
        if draw(st.booleans()):
            tier["flat"] = draw(prices(max_whole=500))
    return {"model": model, "tiers": tiers}


def reference_price(pricing: dict[str, Any], quantity: int) -> Fraction:
    """The plan's price written straight from the API's words, with Fractions."""
    if pricing["model"] == "per_unit":
        return quantity * Fraction(pricing["unit_price"])
    if pricing["model"] == "package":
        return math.ceil(Fraction(quantity, pricing["package_size"])) * Fraction(pricing["package_price"])
    total = Fraction(0)
    start = 1  # units start..up_to of the quantity fall in this tier
    for tier in pricing["tiers"]:
        end = quantity if tier["up_to"] is None else min(quantity, tier["up_to"])
        if end >= start:
            total += Fraction(tier.get("flat", "0")) + (end - start + 1) * Fraction(tier["unit_price"])
        if tier["up_to"] is not None:
            start = tier["up_to"] + 1
    return total


@settings(max_examples=300, deadline=None)
@given(pricing=pricings(), quantities=st.lists(st.integers(1, 2_000), min_size=1, max_size=30), data=st.data())
def test_any_split_in_any_order_charges_floor_of_the_total(
    pricing: dict[str, Any], quantities: list[int], data: st.DataObject
) -> None:
    rates = parse_pricing(pricing)
    total = sum(quantities)
    expected = math.floor(reference_price(pricing, total))
    order = data.draw(st.permutations(quantities))
    paid = charges(rates, list(order))
    assert all(amount >= 0 for amount in paid)
    assert sum(paid) == expected == rates.price_floor(total)


@settings(max_examples=200, deadline=None)
@given(pricing=pricings(), quantity=st.integers(0, 20_000))
def test_price_matches_the_reference_and_never_goes_down(pricing: dict[str, Any], quantity: int) -> None:
    rates = parse_pricing(pricing)
    assert Fraction(rates.numerator(quantity), rates.denominator) == reference_price(pricing, quantity)
    assert rates.numerator(quantity + 1) >= rates.numerator(quantity)


@settings(max_examples=200, deadline=None)
@given(pricing=pricings(), minimum=st.one_of(st.none(), prices(max_whole=1000)))
def test_canonical_pricing_parses_back_to_the_same_plan(pricing: dict[str, Any], minimum: str | None) -> None:
    rates = parse_pricing(pricing, minimum)
    assert parse_pricing(pricing_to_json(rates), minimum_text(rates)) == rates


@settings(max_examples=300, deadline=None)
@given(pricing=pricings(), quantity=st.integers(0, 20_000))
def test_the_rating_shortcut_floors_the_same_price(pricing: dict[str, Any], quantity: int) -> None:
    # floor_function is what rating calls per event, without price_floor's checks.
    rates = parse_pricing(pricing)
    expected = math.floor(reference_price(pricing, quantity))
    assert rates.floor_function()(quantity) == expected == rates.price_floor(quantity)


def test_the_rating_shortcut_of_a_bounded_last_tier_prices_every_quantity_up_to_it() -> None:
    pricing: dict[str, Any] = {
        "model": "graduated",
        "tiers": [{"up_to": 10, "unit_price": "0.3", "flat": "2"}, {"up_to": 25, "unit_price": "0.07"}],
    }
    rates = parse_pricing(pricing)
    floor = rates.floor_function()
    assert rates.capacity == 25
    assert [floor(quantity) for quantity in range(26)] == [
        math.floor(reference_price(pricing, quantity)) for quantity in range(26)
    ]


@given(
    st.builds(
        Usage,
        st.text(min_size=1, max_size=8),
        st.text(min_size=1, max_size=8),
        st.text(min_size=1, max_size=8),
        st.integers(0, 10**12),
        st.integers(0, 10**15),
        st.integers(0, 10**9),
        st.sampled_from(["", "insufficient_funds"]),
    )
)
def test_a_usage_record_is_written_as_the_array_of_its_fields_and_reads_back_equal(usage: Usage) -> None:
    body = encode_usage(usage)
    assert body == orjson.dumps(list(usage))
    assert decode_usage(body) == usage == usage_of(body)
    # Records written before, as the fields' object, read the same.
    assert decode_usage(orjson.dumps(usage._asdict())) == usage


def test_usage_records_are_kept_decoded_for_two_generations_then_read_anew() -> None:
    first = Usage("plan", "2026-11", "payer", 1, 2)
    body = encode_usage(first)
    assert usage_of(body) is first  # the next batch reads back what this one wrote
    for n in range(USAGE_KEPT_MAX):
        encode_usage(Usage("plan", "2026-11", f"other-{n}", n, n))
    assert usage_of(body) is first  # still there: the generation before
    for n in range(USAGE_KEPT_MAX):
        encode_usage(Usage("plan", "2026-11", f"later-{n}", n, n))
    again = usage_of(body)
    assert again == first and again is not first  # let go, so decoded anew
