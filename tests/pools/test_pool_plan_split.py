"""The distribution plan against the plain per-key split, on members larger than the property
tests draw: many publishers and reads, equal remainders within and across roles, shared fee
tables across members, and the earnings columns in member order."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micropay.models import pools as P
from micropay.models.split import split

Item = tuple[str, str, str]  # owner, host, referrer ("" for none): one counted read


def _pool(split_bps: tuple[int, int, int, int], unread: str = "carry", carried: int = 0) -> P.Pool:
    return P.Pool("pool1", "USD", 1, tuple(zip(P.ROLES, split_bps, strict=True)), unread, 0, 0, carried=carried)


def _counts(reads: list[Item]) -> dict[str, Any] | None:
    if not reads:
        return None
    member = P.MemberReads(P.empty_counts(), {})
    for owner, host, referrer in reads:
        member.count(owner, host, referrer, 1)
    return member.counts


def _reference(pool: P.Pool, fee: int, reads: list[Item]) -> dict[tuple[str, str], int]:
    """One weight per (recipient, role), then ``split``: what every member's parts must be."""
    bps = dict(pool.split_bps)
    weights: Counter[tuple[str, str]] = Counter()
    for owner, host, referrer in reads:
        weights[(owner, "owner")] += bps["owner"] + (0 if referrer else bps["referrer"])
        weights[(host, "host")] += bps["host"]
        if referrer:
            weights[(referrer, "referrer")] += bps["referrer"]
        weights[(P.PLATFORM_RECIPIENT, "platform")] += bps["platform"]
    return {key: part for key, part in split(fee, {k: w for k, w in weights.items() if w}).items() if part}


def _check(pool: P.Pool, members: list[tuple[str, int, list[Item]]]) -> P.DistributionPlan:
    plan = P.plan_distribution(pool, [(payer, fee, _counts(reads)) for payer, fee, reads in members])
    parts: dict[str, dict[tuple[str, str], int]] = {}
    for publisher, earnings in plan.earnings.items():
        for payer, role, amount in earnings.parts:
            assert amount > 0
            parts.setdefault(payer, {})[(publisher, role)] = amount
        # Within a role, the parts come in member order (members arrive sorted), the network share last.
        for role in ("owner", "host", "referrer"):
            payers = [payer for payer, part_role, _ in earnings.parts if part_role == role]
            members_first = [payer for payer in payers if payer]
            assert members_first == sorted(members_first) and payers[: len(members_first)] == members_first
    for payer, amount in plan.platform.items():
        parts.setdefault(payer, {})[(P.PLATFORM_RECIPIENT, "platform")] = amount
    for payer, fee, reads in members:
        assert parts.get(payer, {}) == (_reference(pool, fee, reads) if reads else {}), payer
    assert sum(plan.lines.values()) == plan.total
    return plan


def _reads(rng: random.Random, publishers: list[str], count: int) -> list[Item]:
    favourites = rng.sample(publishers, min(len(publishers), 6))
    reads: list[Item] = []
    for _ in range(count):
        owner = rng.choice(favourites) if rng.random() < 0.8 else rng.choice(publishers)
        host = owner if rng.random() < 0.7 else rng.choice(publishers)
        referrer = rng.choice(publishers) if rng.random() < 0.5 else ""
        reads.append((owner, host, referrer))
    return reads


@pytest.mark.parametrize("seed", range(12))
def test_large_members_match_the_plain_split(seed: int) -> None:
    rng = random.Random(seed)
    split_bps = rng.choice([(7000, 1500, 500, 1000), (2500, 2500, 2500, 2500), (10_000, 0, 0, 0), (0, 5000, 5000, 0)])
    publishers = [f"pub-{n}" for n in range(rng.choice([3, 40, 200]))]
    # Many members share a fee and a number of reads (and so the per-distribution fee tables).
    members = [
        (
            f"m{n:04d}",
            rng.choice([999, 999, 1000, 7, rng.randrange(1, 10**9)]),
            _reads(rng, publishers, rng.choice([0, 1, 99, 100, 300])),
        )
        for n in range(60)
    ]
    _check(_pool(split_bps, unread=rng.choice(P.UNREAD_MODES), carried=rng.choice([0, 12_345])), members)


def test_equal_remainders_across_roles_break_by_recipient_then_role() -> None:
    # 25/25/25/25 and one read each of (a, b, c) and (b, a, ""): the fee 7 leaves remainders that tie
    # across owner, host and referrer; the leftover units go by (recipient, role).
    pool = _pool((2500, 2500, 2500, 2500))
    _check(pool, [("m1", 7, [("a", "b", "c"), ("b", "a", "")]), ("m2", 3, [("c", "c", "a")])])
    plan = _check(pool, [("m1", 1, [("b", "a", "c")])])
    # One unit over four equal weights: the smallest key, ("a", "host").
    assert plan.lines == {("a", "host"): 1}


items = st.lists(
    st.tuples(st.sampled_from("abcdefghij"), st.sampled_from("abcdefghij"), st.sampled_from(["", *"abcdefghij"])),
    max_size=60,
)


@settings(max_examples=200)
@given(
    cuts=st.lists(st.integers(0, 10_000), min_size=3, max_size=3).map(sorted),
    members=st.lists(st.tuples(st.integers(0, 10**12), items), max_size=6),
    carried=st.integers(0, 10**6),
)
def test_plan_matches_the_plain_split(cuts: list[int], members: list[tuple[int, list[Item]]], carried: int) -> None:
    split_bps = (cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], 10_000 - cuts[2])
    _check(_pool(split_bps, carried=carried), [(f"m{n}", fee, reads) for n, (fee, reads) in enumerate(members)])
