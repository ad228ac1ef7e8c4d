"""Collaborative pools: readers pay once into a pool shared by many publishers.

A member pays the pool's price for a month; reads of content across member sites are recorded;
at period end each member's fee is split over what that member read (user-centric), and each
read's share over the content owner, the host site's publisher, the referrer site's publisher
(no referrer: the owner) and the platform, by ``split_bps``. Integer parts come from the
largest-remainder method per member (``models.split``), so every member's fee is allocated
exactly and the lines add up to what was collected. Fees of members who read nothing carry to
the next period (or, with ``unread: "share"``, are shared across the period's reads at once).
The distribution is one linked ledger chain: all or nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from dataclasses import fields as _fields
from typing import Any

import orjson

from micropay.engine import BatchContext
from micropay.errors import Conflict, NotFound, Refused, require
from micropay.ledger import AccountRequest, TransferRequest
from micropay.models import chart
from micropay.models.payments import Outcome, collect, ensure_platform_accounts, get_payer, move, open_accounts
from micropay.models.records import encode
from micropay.models.rules import period_key
from micropay.models.split import split
from micropay.settlement.rails import Rails

PUBLISHER, SITE, CONTENT = "publisher", "site", "content"
POOL, POOL_PERIOD, MEMBERSHIP, MEMBER_READS, READ = "pool", "pool_period", "membership", "member_reads", "read"
DISTRIBUTION, EARNINGS = "distribution", "earnings"
ROLES = ("owner", "host", "referrer", "platform")
PLATFORM_RECIPIENT = "platform"
READ_WINDOW_S_DEFAULT = 1800
READ_ITEMS_MAX = 10_000
"""Distinct (content, host, referrer) items one member may read in one pool period."""
RECIPIENTS_MAX = 8000
"""Most publishers one distribution pays (one linked chain within a ledger batch)."""
NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Publisher:
    id: str
    ledger: str
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    publisher_id: str
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class Content:
    id: str
    publisher_id: str
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class Pool:
    id: str
    ledger: str
    price: int
    split_bps: tuple[tuple[str, int], ...]  # (role, bps) in ROLES order, adding up to 10000
    unread: str  # "carry" | "share"
    read_window_s: int
    created_at_ns: int
    distributed_periods: tuple[str, ...] = ()
    carried: int = 0  # unread fees carried into the next distribution

    def bps(self, role: str) -> int:
        return dict(self.split_bps)[role]


@dataclass(frozen=True, slots=True)
class PoolPeriod:
    pool_id: str
    period: str
    members: int = 0
    collected: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    pool_id: str
    period: str
    payer_id: str
    fee: int
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class MemberReads:
    """What one member read in one pool period: counted reads per (content, host, referrer)."""

    items: tuple[tuple[str, str, str, int], ...] = ()
    last_counted_ns: tuple[tuple[str, int], ...] = ()  # per content: when a read last counted


@dataclass(frozen=True, slots=True)
class Read:
    id: str
    pool_id: str
    payer_id: str
    content_id: str
    host_site_id: str
    referrer_site_id: str
    timestamp_ns: int
    period: str
    counted: bool
    reason: str  # "" | "repeat" | "own_content"


@dataclass(frozen=True, slots=True)
class Line:
    recipient_id: str
    role: str
    amount: int


@dataclass(frozen=True, slots=True)
class Distribution:
    id: str
    pool_id: str
    period: str
    total: int
    lines: tuple[Line, ...]
    carried_in: int
    carried_out: int
    members_paid: int
    created_at_ns: int


def dataclass_fields(cls: type[Any]) -> list[str]:
    return [field.name for field in _fields(cls)]


def _load(body: bytes, cls: type[Any]) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(body)
    return {name: data[name] for name in dataclass_fields(cls)}


def _get(ctx: BatchContext, kind: str, record_id: str, code: str, param: str) -> bytes:
    body = ctx.get_document(kind, record_id)
    if body is None:
        raise NotFound(code, f"no {kind} {record_id}", param)
    return body


def get_publisher(ctx: BatchContext, publisher_id: str) -> Publisher:
    return Publisher(**_load(_get(ctx, PUBLISHER, publisher_id, "publisher_not_found", "publisher_id"), Publisher))


def get_site(ctx: BatchContext, site_id: str, param: str = "site_id") -> Site:
    return Site(**_load(_get(ctx, SITE, site_id, "site_not_found", param), Site))


def get_content(ctx: BatchContext, content_id: str) -> Content:
    return Content(**_load(_get(ctx, CONTENT, content_id, "content_not_found", "content_id"), Content))


def decode_pool(body: bytes) -> Pool:
    fields = _load(body, Pool)
    fields["split_bps"] = tuple((str(role), int(bps)) for role, bps in fields["split_bps"])
    fields["distributed_periods"] = tuple(fields["distributed_periods"])
    return Pool(**fields)


def get_pool(ctx: BatchContext, pool_id: str) -> Pool:
    return decode_pool(_get(ctx, POOL, pool_id, "pool_not_found", "pool_id"))


def _read_member_reads(ctx: BatchContext, key: str) -> MemberReads:
    body = ctx.get_document(MEMBER_READS, key)
    if body is None:
        return MemberReads()
    data = orjson.loads(body)
    items = tuple((str(c), str(h), str(r), int(n)) for c, h, r, n in data["items"])
    last = tuple((str(c), int(t)) for c, t in data["last_counted_ns"])
    return MemberReads(items, last)


def _pool_period(ctx: BatchContext, pool_id: str, period: str) -> PoolPeriod:
    body = ctx.get_document(POOL_PERIOD, f"{pool_id}:{period}")
    if body is None:
        return PoolPeriod(pool_id, period)
    return PoolPeriod(**_load(body, PoolPeriod))


def member_key(pool_id: str, period: str, payer_id: str) -> str:
    """Membership and read documents sort by pool and period, so a period's members list by prefix."""
    return f"{pool_id}:{period}:{payer_id}"


# ----------------------------------------------------------------- publishers, sites, content
def create_publisher(publisher_id: str, ledger: str, rails: Rails) -> Callable[[BatchContext], Outcome[Publisher]]:
    def run(ctx: BatchContext) -> Outcome[Publisher]:
        body = ctx.get_document(PUBLISHER, publisher_id)
        if body is not None:
            existing = Publisher(**_load(body, Publisher))
            if existing.ledger != ledger:
                raise Conflict("exists_with_different_fields", f"publisher {publisher_id} exists", "id")
            return existing, True
        ensure_platform_accounts(ctx, ledger, rails)
        open_accounts(ctx, [AccountRequest(chart.publisher_account(publisher_id), ledger)])
        publisher = Publisher(publisher_id, ledger, ctx.now_ns)
        ctx.put_document(PUBLISHER, publisher_id, encode(publisher))
        return publisher, False

    return run


def _create_owned(kind: str, record_id: str, publisher_id: str) -> Callable[[BatchContext], Outcome[Site]]:
    def run(ctx: BatchContext) -> Outcome[Site]:
        body = ctx.get_document(kind, record_id)
        if body is not None:
            existing = Site(**_load(body, Site))
            if existing.publisher_id != publisher_id:
                raise Conflict("exists_with_different_fields", f"{kind} {record_id} exists", "id")
            return existing, True
        get_publisher(ctx, publisher_id)
        record = Site(record_id, publisher_id, ctx.now_ns)
        ctx.put_document(kind, record_id, encode(record))
        return record, False

    return run


def create_site(site_id: str, publisher_id: str) -> Callable[[BatchContext], Outcome[Site]]:
    return _create_owned(SITE, site_id, publisher_id)


def create_content(content_id: str, publisher_id: str) -> Callable[[BatchContext], Outcome[Site]]:
    """Content records have the same shape as sites: an id owned by a publisher."""
    return _create_owned(CONTENT, content_id, publisher_id)


# ----------------------------------------------------------------- pools and members
@dataclass(frozen=True, slots=True)
class PoolRequest:
    id: str
    ledger: str
    price: int
    split_bps: tuple[tuple[str, int], ...]
    unread: str = "carry"
    read_window_s: int = READ_WINDOW_S_DEFAULT


def create_pool(request: PoolRequest, rails: Rails) -> Callable[[BatchContext], Outcome[Pool]]:
    def run(ctx: BatchContext) -> Outcome[Pool]:
        body = ctx.get_document(POOL, request.id)
        asked = (request.ledger, request.price, request.split_bps, request.unread, request.read_window_s)
        if body is not None:
            existing = decode_pool(body)
            had = (existing.ledger, existing.price, existing.split_bps, existing.unread, existing.read_window_s)
            if had != asked:
                raise Conflict("exists_with_different_fields", f"pool {request.id} exists with other fields", "id")
            return existing, True
        if tuple(role for role, _ in request.split_bps) != ROLES or min(b for _, b in request.split_bps) < 0:
            raise Refused("invalid_split", "split_bps has owner, host, referrer and platform, each >= 0", "split_bps")
        if sum(bps for _, bps in request.split_bps) != 10_000:
            raise Refused("invalid_split", "split_bps must add up to 10000", "split_bps")
        if request.unread not in ("carry", "share"):
            raise Refused("invalid_unread", "unread is carry or share", "unread")
        if request.price <= 0:
            raise Refused("invalid_price", "price must be positive", "price")
        ensure_platform_accounts(ctx, request.ledger, rails)
        open_accounts(ctx, [AccountRequest(chart.pool_account(request.id), request.ledger)])
        pool = Pool(request.id, *asked, created_at_ns=ctx.now_ns)
        ctx.put_document(POOL, pool.id, encode(pool))
        return pool, False

    return run


def join_pool(pool_id: str, payer_id: str) -> Callable[[BatchContext], Outcome[Membership]]:
    """Charge the pool's price into the pool for the current period (once per period)."""

    def run(ctx: BatchContext) -> Outcome[Membership]:
        pool = get_pool(ctx, pool_id)
        period = period_key("month", ctx.now_ns)
        key = member_key(pool.id, period, payer_id)
        body = ctx.get_document(MEMBERSHIP, key)
        if body is not None:
            return Membership(**_load(body, Membership)), True
        if period in pool.distributed_periods:
            raise Refused("period_closed", f"period {period} of pool {pool.id} is distributed", "pool_id")
        payer = get_payer(ctx, payer_id)
        if payer.ledger != pool.ledger:
            raise Refused("ledger_mismatch", "the payer and the pool are on different ledgers", "payer_id")
        collect(ctx, payer, pool.price, chart.pool_account(pool.id), f"membership:{key}")
        membership = Membership(pool.id, period, payer.id, pool.price, ctx.now_ns)
        summary = _pool_period(ctx, pool.id, period)
        summary = replace(summary, members=summary.members + 1, collected=summary.collected + pool.price)
        ctx.put_document(POOL_PERIOD, f"{pool.id}:{period}", encode(summary))
        ctx.put_document(MEMBERSHIP, key, encode(membership))
        return membership, False

    return run


# ----------------------------------------------------------------- reads
@dataclass(frozen=True, slots=True)
class ReadRequest:
    id: str
    pool_id: str
    payer_id: str
    content_id: str
    host_site_id: str
    referrer_site_id: str
    timestamp_ns: int


def record_read(request: ReadRequest) -> Callable[[BatchContext], Outcome[Read]]:
    def run(ctx: BatchContext) -> Outcome[Read]:
        body = ctx.get_document(READ, request.id)
        if body is not None:
            existing = Read(**_load(body, Read))
            asked = (
                request.pool_id,
                request.payer_id,
                request.content_id,
                request.host_site_id,
                request.referrer_site_id,
                request.timestamp_ns,
            )
            had = (
                existing.pool_id,
                existing.payer_id,
                existing.content_id,
                existing.host_site_id,
                existing.referrer_site_id,
                existing.timestamp_ns,
            )
            if asked != had:
                raise Conflict("exists_with_different_fields", f"read {request.id} exists with other fields", "id")
            return existing, True
        pool = get_pool(ctx, request.pool_id)
        if request.timestamp_ns > ctx.now_ns + 300 * NS_PER_S:
            raise Refused("timestamp_in_future", "the read's timestamp is later than now", "timestamp")
        period = period_key("month", request.timestamp_ns)
        if period in pool.distributed_periods:
            raise Refused("period_closed", f"period {period} of pool {pool.id} is distributed", "timestamp")
        key = member_key(pool.id, period, request.payer_id)
        if ctx.get_document(MEMBERSHIP, key) is None:
            raise Refused("not_a_member", f"payer {request.payer_id} is not a member for {period}", "payer_id")
        content = get_content(ctx, request.content_id)
        get_site(ctx, request.host_site_id, "host_site_id")
        if request.referrer_site_id:
            get_site(ctx, request.referrer_site_id, "referrer_site_id")
        reads = _read_member_reads(ctx, key)
        last = dict(reads.last_counted_ns)
        reason = ""
        if content.publisher_id == request.payer_id:
            reason = "own_content"
        elif abs(request.timestamp_ns - last.get(content.id, -(10**30))) < pool.read_window_s * NS_PER_S:
            reason = "repeat"
        read = Read(
            request.id,
            pool.id,
            request.payer_id,
            content.id,
            request.host_site_id,
            request.referrer_site_id,
            request.timestamp_ns,
            period,
            not reason,
            reason,
        )
        if not reason:
            counts = {(c, h, r): n for c, h, r, n in reads.items}
            item = (content.id, request.host_site_id, request.referrer_site_id)
            counts[item] = counts.get(item, 0) + 1
            if len(counts) > READ_ITEMS_MAX:
                raise Refused(
                    "too_many_reads", f"a member counts at most {READ_ITEMS_MAX} items a period", "content_id"
                )
            last[content.id] = max(last.get(content.id, 0), request.timestamp_ns)
            updated = MemberReads(
                tuple((c, h, r, n) for (c, h, r), n in sorted(counts.items())), tuple(sorted(last.items()))
            )
            ctx.put_document(MEMBER_READS, key, encode(updated))
        ctx.put_document(READ, read.id, encode(read))
        return read, False

    return run


# ----------------------------------------------------------------- distribution
def distribute(pool_id: str, period: str, member_ids: list[str]) -> Callable[[BatchContext], Distribution]:
    """Close ``period`` and pay it out. ``member_ids`` must be every member of the period (the
    caller lists them); a mismatch refuses (``members_changed``) so nothing is left out."""

    def run(ctx: BatchContext) -> Distribution:
        pool = get_pool(ctx, pool_id)
        if period in pool.distributed_periods:
            raise Conflict("already_distributed", f"period {period} of pool {pool.id} is already distributed", "period")
        if period > period_key("month", ctx.now_ns):
            raise Refused("period_not_started", f"period {period} has not started", "period")
        summary = _pool_period(ctx, pool.id, period)
        if len(set(member_ids)) != summary.members:
            raise Refused("members_changed", "the period's members changed while listing them; retry", "period")
        owners: dict[str, str] = {}
        sites: dict[str, str] = {}
        lines: dict[tuple[str, str], int] = {}
        earnings: dict[str, list[tuple[str, str, int]]] = {}
        unread = 0
        paid = 0
        for payer_id in sorted(set(member_ids)):
            key = member_key(pool.id, period, payer_id)
            body = ctx.get_document(MEMBERSHIP, key)
            if body is None:
                raise Refused("members_changed", f"{payer_id} is not a member of {period}; retry", "period")
            fee = int(orjson.loads(body)["fee"])
            reads = _read_member_reads(ctx, key)
            if not reads.items:
                unread += fee
                continue
            weights = _member_weights(ctx, pool, reads, owners, sites)
            for (recipient, role), amount in split(fee, weights).items():
                if amount:
                    lines[(recipient, role)] = lines.get((recipient, role), 0) + amount
                    earnings.setdefault(recipient, []).append((payer_id, role, amount))
            paid += 1
        carried_in = pool.carried
        network = carried_in + (unread if pool.unread == "share" else 0)
        carry_out = unread if pool.unread == "carry" else 0
        if network and lines:
            for (recipient, role), amount in split(network, dict(lines)).items():
                if amount:
                    lines[(recipient, role)] += amount
                    earnings.setdefault(recipient, []).append(("network", role, amount))
        elif network:
            carry_out = carried_in + unread  # nobody read anything: everything waits for the next period
        total = sum(lines.values())
        require(total + carry_out == summary.collected + pool.carried, "distribution: money created or lost")
        _pay(ctx, pool, period, lines)
        distribution = Distribution(
            id=f"{pool.id}:{period}",
            pool_id=pool.id,
            period=period,
            total=total,
            lines=tuple(Line(r, role, a) for (r, role), a in sorted(lines.items())),
            carried_in=pool.carried,
            carried_out=carry_out,
            members_paid=paid,
            created_at_ns=ctx.now_ns,
        )
        ctx.put_document(DISTRIBUTION, distribution.id, encode(distribution))
        for recipient, parts in earnings.items():
            if recipient != PLATFORM_RECIPIENT:
                ctx.put_document(EARNINGS, f"{recipient}:{period}:{pool.id}", orjson.dumps({"lines": parts}))
        closed = replace(pool, distributed_periods=(*pool.distributed_periods, period), carried=carry_out)
        ctx.put_document(POOL, pool.id, encode(closed))
        return distribution

    return run


def _member_weights(
    ctx: BatchContext, pool: Pool, reads: MemberReads, owners: dict[str, str], sites: dict[str, str]
) -> dict[tuple[str, str], int]:
    """One member's exact split weights per (recipient, role): reads of an item times its role's bps."""

    def owner_of(content_id: str) -> str:
        found = owners.get(content_id)
        if found is None:
            found = owners[content_id] = get_content(ctx, content_id).publisher_id
        return found

    def publisher_of(site_id: str) -> str:
        found = sites.get(site_id)
        if found is None:
            found = sites[site_id] = get_site(ctx, site_id).publisher_id
        return found

    owner_bps, host_bps, referrer_bps, platform_bps = (pool.bps(role) for role in ROLES)
    weights: dict[tuple[str, str], int] = {}
    for content_id, host_id, referrer_id, count in reads.items:
        owner = owner_of(content_id)
        shares = [
            ((owner, "owner"), owner_bps),
            ((publisher_of(host_id), "host"), host_bps),
            ((PLATFORM_RECIPIENT, "platform"), platform_bps),
        ]
        if referrer_id:
            shares.append(((publisher_of(referrer_id), "referrer"), referrer_bps))
        else:
            shares.append(((owner, "owner"), referrer_bps))  # no referrer: its share goes to the owner
        for key, bps in shares:
            if bps:
                weights[key] = weights.get(key, 0) + count * bps
    return weights


def _pay(ctx: BatchContext, pool: Pool, period: str, lines: dict[tuple[str, str], int]) -> None:
    """One linked chain: the pool pays each publisher its lines' sum, and the platform its fee."""
    per_recipient: dict[str, int] = {}
    for (recipient, _), amount in lines.items():
        per_recipient[recipient] = per_recipient.get(recipient, 0) + amount
    if len(per_recipient) > RECIPIENTS_MAX:
        raise Refused("too_many_recipients", f"a distribution pays at most {RECIPIENTS_MAX} publishers", "period")
    legs = []
    source = chart.pool_account(pool.id)
    for recipient, amount in sorted(per_recipient.items()):
        if not amount:
            continue
        target = (
            chart.fees_account(pool.ledger) if recipient == PLATFORM_RECIPIENT else chart.publisher_account(recipient)
        )
        legs.append(
            TransferRequest(f"distribution:{pool.id}:{period}:{recipient}", source, target, amount, pool.ledger)
        )
    if legs:
        move(ctx, legs, "insufficient_funds")
