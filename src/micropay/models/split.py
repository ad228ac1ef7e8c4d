"""Exact integer splitting by the largest-remainder method.

``split(total, weights)`` gives integer parts that add up to ``total`` exactly: each part is the
floor of its exact share, and the units left over go one each to the parts with the largest
remainders, ties broken by key. The result depends only on the weights and keys, never on the
order they came in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from operator import neg
from typing import TypeVar

from micropay.errors import require

K = TypeVar("K", bound=tuple[str, str])


def split(total: int, weights: Mapping[K, int]) -> dict[K, int]:
    """Split ``total`` (>= 0) over ``weights`` (>= 0, not all zero) in proportion, exactly."""
    keys = list(weights)
    return dict(zip(keys, split_weights(total, list(weights.values()), keys), strict=True))


def split_weights(total: int, weights: Sequence[int], keys: Sequence[K]) -> list[int]:
    """``split`` over parallel lists: the part of each weight, in the order given.

    Written as list comprehensions and C-level passes: a distribution splits millions of parts."""
    require(total >= 0, "split: negative total")
    weight_sum = sum(weights)
    require(weight_sum > 0 and min(weights) >= 0, "split: weights must be non-negative, not all zero")
    parts = [total * weight // weight_sum for weight in weights]
    left = total - sum(parts)
    require(0 <= left < len(parts), "split: leftover not below the number of parts")
    if left:
        remainders = [total * weight % weight_sum for weight in weights]
        # Largest remainder first, then smallest key: (-remainder, key, index) sorts that way.
        ranked = sorted(zip(map(neg, remainders), keys, range(len(keys)), strict=True))
        for _, _, index in ranked[:left]:
            parts[index] += 1
    return parts
