"""Exact integer splitting by the largest-remainder method.

``split(total, weights)`` gives integer parts that add up to ``total`` exactly: each part is the
floor of its exact share, and the units left over go one each to the parts with the largest
remainders, ties broken by key. The result depends only on the weights and keys, never on the
order they came in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from micropay.errors import require

K = TypeVar("K", bound=tuple[str, str])


def split(total: int, weights: Mapping[K, int]) -> dict[K, int]:
    """Split ``total`` (>= 0) over ``weights`` (>= 0, not all zero) in proportion, exactly."""
    require(total >= 0, "split: negative total")
    weight_sum = sum(weights.values())
    require(weight_sum > 0 and min(weights.values()) >= 0, "split: weights must be non-negative, not all zero")
    parts: dict[K, int] = {}
    remainders: list[tuple[int, K]] = []
    for key, weight in weights.items():
        whole, remainder = divmod(total * weight, weight_sum)
        parts[key] = whole
        remainders.append((remainder, key))
    left = total - sum(parts.values())
    require(0 <= left < len(parts), "split: leftover not below the number of parts")
    remainders.sort(key=lambda item: (-item[0], item[1]))
    for _, key in remainders[:left]:
        parts[key] += 1
    require(sum(parts.values()) == total, "split: parts do not add up to the total")
    return parts
