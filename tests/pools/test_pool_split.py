"""The largest-remainder split: hand-computed examples and its properties."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from micropay.errors import InvariantViolation
from micropay.models.split import split

A, B, C = ("a", "owner"), ("b", "owner"), ("c", "owner")


def test_prime_total_three_equal_ways() -> None:
    # 7 / 3 = 2 rem 1 each: one unit left over, to the first key by order (ties broken by key).
    assert split(7, {C: 1, A: 1, B: 1}) == {A: 3, B: 2, C: 2}
    # 101 / 3 = 33 rem 2: two units left over, to a and b.
    assert split(101, {B: 5, C: 5, A: 5}) == {A: 34, B: 34, C: 33}


def test_prime_total_three_unequal_ways() -> None:
    # 13 over 1 : 2 : 4 (sum 7): exact shares 13/7 = 1.857, 26/7 = 3.714, 52/7 = 7.428.
    # Floors 1 + 3 + 7 = 11; 2 units left; remainders 6/7, 5/7, 3/7 -> a and b get one each.
    assert split(13, {A: 1, B: 2, C: 4}) == {A: 2, B: 4, C: 7}


def test_hand_computed_bps_weights() -> None:
    # A fee of 1000 over two reads of 70/15/5/10, the second without referrer (its 5 % to the owner):
    # owner X 7000, host Y 1500, referrer Z 500, platform 1000 | owner Y 7500, host Y 1500, platform 1000.
    weights = {
        ("X", "owner"): 7000,
        ("Y", "host"): 3000,
        ("Z", "referrer"): 500,
        ("Y", "owner"): 7500,
        ("platform", "platform"): 2000,
    }
    assert split(1000, weights) == {
        ("X", "owner"): 350,
        ("Y", "host"): 150,
        ("Z", "referrer"): 25,
        ("Y", "owner"): 375,
        ("platform", "platform"): 100,
    }


def test_remainder_ties_break_by_key_not_by_order() -> None:
    # 1 unit over 3 equal weights: always the smallest key, however the weights are ordered.
    for order in ([A, B, C], [C, B, A], [B, C, A]):
        assert split(1, {key: 1 for key in order}) == {A: 1, B: 0, C: 0}


def test_zero_total_and_single_part() -> None:
    assert split(0, {A: 3, B: 1}) == {A: 0, B: 0}
    assert split(999, {A: 1}) == {A: 999}


def test_zero_weight_gets_nothing() -> None:
    assert split(10, {A: 0, B: 1}) == {A: 0, B: 10}


@pytest.mark.parametrize(("total", "weights"), [(-1, {A: 1}), (5, {A: 0}), (5, {A: 1, B: -1})])
def test_bad_arguments_are_invariant_violations(total: int, weights: dict[tuple[str, str], int]) -> None:
    with pytest.raises(InvariantViolation):
        split(total, weights)


keys = st.tuples(st.text("abcdefgh", min_size=1, max_size=3), st.sampled_from(["owner", "host", "platform"]))
weight_maps = st.dictionaries(keys, st.integers(0, 10**9), min_size=1, max_size=40).filter(
    lambda weights: sum(weights.values()) > 0
)


@given(total=st.integers(0, 10**15), weights=weight_maps, seed=st.integers(0, 2**32))
def test_split_properties(total: int, weights: dict[tuple[str, str], int], seed: int) -> None:
    parts = split(total, weights)
    assert set(parts) == set(weights)
    assert sum(parts.values()) == total
    weight_sum = sum(weights.values())
    for key, part in parts.items():
        exact = Fraction(total * weights[key], weight_sum)
        assert part >= 0
        assert exact - 1 < part < exact + 1  # floor or ceiling of the exact share
        if not weights[key]:
            assert part == 0
    # Independent of the order the weights come in.
    shuffled = list(weights.items())
    random.Random(seed).shuffle(shuffled)
    assert split(total, dict(shuffled)) == parts


@given(total=st.integers(0, 10**6), weights=weight_maps)
def test_split_is_largest_remainder(total: int, weights: dict[tuple[str, str], int]) -> None:
    """Exactly the parts that got a unit more than their floor have the largest remainders."""
    parts = split(total, weights)
    weight_sum = sum(weights.values())
    remainders = {key: (total * weight) % weight_sum for key, weight in weights.items()}
    bumped = [key for key in parts if parts[key] > total * weights[key] // weight_sum]
    kept = [key for key in parts if key not in bumped]
    if bumped and kept:
        assert min((-remainders[k], k) for k in kept) > max((-remainders[k], k) for k in bumped)
