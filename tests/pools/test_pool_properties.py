"""Properties of distributions, over random pools, members and reads.

The planning step (``plan_distribution``) is pure and checked over many examples; whole worlds
(engine, ledger, documents) over fewer, each built three ways: reads one by one in two random
orders, and in bulk."""

from __future__ import annotations

import itertools
import random
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pools_testkit import MINUTE_NS, PERIOD, Clock, PoolWorld, line_map

from micropay.models import chart
from micropay.models import pools as P
from micropay.models.split import split

CONTENTS = [f"c{i}" for i in range(6)]
SITES = [f"s{i}" for i in range(4)]
PUBLISHERS = ["pa", "pb", "pc"]


@st.composite
def splits(draw: st.DrawFn) -> tuple[tuple[str, int], ...]:
    cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=3, max_size=3)))
    bps = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], 10_000 - cuts[2]]
    return tuple(zip(P.ROLES, bps, strict=True))


Item = tuple[str, str, str, int]  # owner publisher, host publisher, referrer publisher or "", reads

items_strategy = st.dictionaries(
    st.tuples(st.sampled_from(PUBLISHERS), st.sampled_from(PUBLISHERS), st.sampled_from(["", *PUBLISHERS])),
    st.integers(1, 5),
    max_size=8,
).map(lambda counted: [(o, h, r, n) for (o, h, r), n in sorted(counted.items())])

members_strategy = st.lists(st.tuples(st.integers(1, 10**6), items_strategy), min_size=0, max_size=8).map(
    lambda drawn: [(f"m{i}", fee, items) for i, (fee, items) in enumerate(drawn)]
)


def _pool(split: tuple[tuple[str, int], ...], unread: str, carried: int) -> P.Pool:
    return P.Pool("pool1", "USD", 1, split, unread, 0, 0, carried=carried)


def _counts(items: list[Item]) -> dict[str, Any] | None:
    """What the read path keeps for these counted reads."""
    if not items:
        return None
    counts = P.MemberReads(P.empty_counts(), {})
    for owner, host, referrer, reads in items:
        for _ in range(reads):
            counts.count(owner, host, referrer, 1)
    return counts.counts


def _reference(pool: P.Pool, fee: int, items: list[Item]) -> dict[tuple[str, str], int]:
    """A member's parts the plain way: one weight per (recipient, role), then ``split``."""
    bps = dict(pool.split_bps)
    weights: Counter[tuple[str, str]] = Counter()
    for owner, host, referrer, reads in items:
        weights[(owner, "owner")] += reads * (bps["owner"] + (0 if referrer else bps["referrer"]))
        weights[(host, "host")] += reads * bps["host"]
        if referrer:
            weights[(referrer, "referrer")] += reads * bps["referrer"]
        weights[("platform", "platform")] += reads * bps["platform"]
    return {key: part for key, part in split(fee, {k: w for k, w in weights.items() if w}).items() if part}


def _member_parts(plan: P.DistributionPlan) -> dict[str, dict[tuple[str, str], int]]:
    parts: dict[str, dict[tuple[str, str], int]] = {}
    for publisher, earnings in plan.earnings.items():
        for payer, role, amount in earnings.parts:
            parts.setdefault(payer, {})[(publisher, role)] = amount
    for payer, amount in plan.platform.items():
        parts.setdefault(payer, {})[("platform", "platform")] = amount
    return parts


def _normal(plan: P.DistributionPlan) -> tuple[Any, ...]:
    earnings = {publisher: sorted(parts.parts) for publisher, parts in plan.earnings.items()}
    return plan.lines, earnings, plan.platform, plan.total, plan.collected, plan.carried_out, plan.members_paid


@settings(max_examples=300)
@given(
    split_bps=splits(),
    unread=st.sampled_from(P.UNREAD_MODES),
    carried=st.integers(0, 10**6),
    members=members_strategy,
    seed=st.integers(0, 2**32),
)
def test_plan_properties(
    split_bps: tuple[tuple[str, int], ...],
    unread: str,
    carried: int,
    members: list[tuple[str, int, list[Item]]],
    seed: int,
) -> None:
    pool = _pool(split_bps, unread, carried)
    plan = P.plan_distribution(pool, [(payer, fee, _counts(items)) for payer, fee, items in members])
    fees = {payer: fee for payer, fee, _ in members}
    readers = {payer for payer, _, items in members if items}
    unread_fees = sum(fee for payer, fee in fees.items() if payer not in readers)

    # Lines add up to the distributed total; none is negative (zero lines are left out).
    assert sum(plan.lines.values()) == plan.total and all(amount > 0 for amount in plan.lines.values())
    # Conservation: collected + carried in = distributed + carried out.
    assert plan.collected == sum(fees.values())
    assert plan.collected + carried == plan.total + plan.carried_out
    if readers:
        assert plan.carried_out == (unread_fees if unread == "carry" else 0)
    else:
        assert plan.total == 0 and plan.carried_out == carried + unread_fees
    # Each member's parts are exactly the largest-remainder split of its fee over what it read,
    # so its fee is allocated in full, to what it read only.
    parts = _member_parts(plan)
    for payer, fee, items in members:
        assert parts.get(payer, {}) == (_reference(pool, fee, items) if items else {})
        assert sum(parts.get(payer, {}).values()) == (fee if items else 0)
    assert plan.members_paid == len(readers)
    # The network share goes over the lines in proportion; per recipient the parts add up to the lines.
    network = parts.get("", {})
    assert sum(network.values()) == plan.total - sum(fees[payer] for payer in readers)
    for publisher, earnings in plan.earnings.items():
        assert sum(earnings.amounts) == sum(a for (r, _), a in plan.lines.items() if r == publisher)

    # Independent of the order of members.
    rng = random.Random(seed)
    shuffled = rng.sample(members, len(members))
    again = P.plan_distribution(pool, [(payer, fee, _counts(items)) for payer, fee, items in shuffled])
    assert _normal(again) == _normal(plan)


group_strategy = st.lists(
    st.tuples(
        st.sampled_from(P.ROLES),
        st.dictionaries(st.text("abcde", min_size=1, max_size=2), st.integers(1, 40), max_size=12),
        st.integers(0, 10_000),
    ),
    max_size=4,
    unique_by=lambda group: group[0],
)


@settings(max_examples=500)
@given(fee=st.integers(0, 10**12), groups=group_strategy)
def test_split_member_is_split(fee: int, groups: list[tuple[str, dict[str, int], int]]) -> None:
    """The per-distinct-weight split gives exactly what ``split`` gives over the keys."""
    weights = {
        (recipient, role): units * bps for role, units_of, bps in groups for recipient, units in units_of.items()
    }
    weights = {key: weight for key, weight in weights.items() if weight}
    if not weights:
        return
    expected = split(fee, weights)
    found = {
        (recipient, role): amount
        for role, amounts in P.split_member(fee, sum(weights.values()), groups)
        for recipient, amount in amounts.items()
    }
    assert found == expected


# ----------------------------------------------------------------- whole worlds
def _owner(content_id: str) -> str:
    return PUBLISHERS[int(content_id[1:]) % 3]


def _site_publisher(site_id: str) -> str:
    return PUBLISHERS[(int(site_id[1:]) + 1) % 3]


ReadSpec = tuple[str, str, str, str, int]  # payer, content, host, referrer, minutes into the period

read_specs = st.lists(
    st.tuples(
        st.sampled_from(["m0", "m1", "pa"]),
        st.sampled_from(CONTENTS[:3]),  # few payer-content pairs: repeats and late reads are common
        st.sampled_from(SITES),
        st.sampled_from(["", *SITES]),
        st.integers(0, 90),
    ),
    max_size=25,
)


def _build(
    path: Path, split: tuple[tuple[str, int], ...], unread: str, window_s: int, reads: list[P.ReadRequest], bulk: int
) -> tuple[PoolWorld, P.Distribution]:
    clock = Clock()
    world = PoolWorld(path, clock)
    world.ledger()
    for publisher in PUBLISHERS:
        world.publisher(publisher, site=False)
    for content in CONTENTS:
        world.call(P.create_content(content, _owner(content)))
    for site in SITES:
        world.call(P.create_site(site, _site_publisher(site)))
    world.pool(split=split, unread=unread, window_s=window_s)
    for payer in ("m0", "m1", "m2", "m3", "pa"):  # m3 reads nothing; "pa" is also a publisher
        world.member(payer)
    clock.advance(3 * 3600)
    if bulk:
        for start in range(0, len(reads), bulk):
            results = world.call(P.record_reads(reads[start : start + bulk]))
            assert all(isinstance(result, tuple) for result in results)
    else:
        for request in reads:
            world.call(P.record_read(request))
    return world, world.distribute()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    split=splits(),
    unread=st.sampled_from(P.UNREAD_MODES),
    window_s=st.sampled_from([0, 600, 1800]),
    specs=read_specs,
    seed=st.integers(0, 2**32),
)
def test_worlds_agree_whatever_the_read_order_one_by_one_or_in_bulk(
    split: tuple[tuple[str, int], ...], unread: str, window_s: int, specs: list[ReadSpec], seed: int
) -> None:
    start = Clock().now_ns
    reads = [
        P.ReadRequest(f"rd{i}", "pool1", payer, content, host, referrer, start + minute * MINUTE_NS)
        for i, (payer, content, host, referrer, minute) in enumerate(specs)
    ]
    rng = random.Random(seed)
    other_order = rng.sample(reads, len(reads))
    kinds = (P.READ, P.PAYER_READ, P.MEMBER_READS, P.MEMBER_READ_LOG, P.DISTRIBUTION, P.EARNINGS, P.POOL)
    with tempfile.TemporaryDirectory() as folder:
        worlds = []
        try:
            for name, order, bulk in (("a", reads, 0), ("b", other_order, 0), ("c", other_order, 7)):
                world, distribution = _build(Path(folder) / f"{name}.db", split, unread, window_s, order, bulk)
                worlds.append(world)
                _check_world(world, distribution)
            first, *others = worlds
            for other in others:
                assert other.documents(*kinds) == first.documents(*kinds)
                assert other.snapshot() == first.snapshot()
        finally:
            for world in worlds:
                world.close()


def _check_world(world: PoolWorld, distribution: P.Distribution) -> None:
    world.check_books()
    lines = line_map(distribution)
    assert sum(lines.values()) == distribution.total and all(amount > 0 for amount in lines.values())
    assert distribution.collected == 5 * 1000
    assert distribution.collected + distribution.carried_in == distribution.total + distribution.carried_out
    assert world.pool_balance() == distribution.carried_out
    assert world.fees() == lines.get(("platform", "platform"), 0)
    for publisher in PUBLISHERS:
        earned = sum(amount for (recipient, role), amount in lines.items() if recipient == publisher)
        assert world.earned(publisher) == earned
        body = world.engine.document(P.EARNINGS, P.earnings_key(publisher, PERIOD, "pool1"))
        assert (body is None and earned == 0) or P.decode_earnings(body or b"").total == earned
    # Own-content reads never count: "pa" owns c0 and c3.
    assert "pa" not in world.counted("pa").get("owner", {}) and "pa" not in world.counted("pa").get("owner_alone", {})
    # A member's counted reads per content are never closer than the window.
    for payer in ("m0", "m1", "m2", "pa"):
        counted: dict[str, list[int]] = {}
        for read in world.documents(P.READ).values():
            if read["payer_id"] == payer and read["counted"]:
                counted.setdefault(read["content_id"], []).append(read["timestamp_ns"])
        window_ns = world.get_pool().read_window_s * 10**9
        for times in counted.values():
            times.sort()
            assert all(later - earlier >= window_ns for earlier, later in itertools.pairwise(times))
    assert world.engine.account(chart.pool_account("pool1")) is not None
