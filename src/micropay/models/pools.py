"""Collaborative pools: readers pay once into a pool shared by many publishers.

A member pays the pool's price for a UTC month; reads of content across member sites are
recorded; when the month is distributed each member's fee is split over what that member read
(user-centric), and each read's share over the content owner, the host site's publisher, the
referrer site's publisher (no referrer: the owner) and the platform, by ``split_bps``. Integer
parts come from the largest-remainder method per member (``models.split``), so every member's
fee is allocated exactly and the lines add up to what was distributed. Fees of members who read
nothing carry to the next distribution of the pool (or, with ``unread: "share"``, are shared over
the period's reads at once). The distribution is one linked ledger chain: all or nothing.

docs/pools.md states the rules the API contract leaves open (repeat window, own content,
carry and share, who the recipients are).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import hashlib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import chain, repeat
from typing import Any, cast

import orjson

from micropay.engine import BatchContext, Engine
from micropay.errors import ApiError, Conflict, NotFound, Refused, require
from micropay.ledger import AccountFlags, AccountRequest, TransferRequest
from micropay.ledger.limits import AMOUNT_MAX, BATCH_SIZE_MAX, LEDGER_ID_LENGTH_MAX
from micropay.models import chart
from micropay.models.payments import Outcome, collect, ensure_platform_accounts, get_payer, move, open_accounts
from micropay.models.records import encode
from micropay.models.rules import period_key
from micropay.models.split import split
from micropay.settlement.rails import Rails
from micropay.store.base import Store

# Document kinds.
PUBLISHER, SITE, CONTENT = "publisher", "site", "content"
POOL, POOL_PERIOD, MEMBERSHIP = "pool", "pool_period", "membership"
MEMBER_READS, MEMBER_READ_LOG, READ, PAYER_READ = "member_reads", "member_read_log", "read", "payer_read"
DISTRIBUTION, EARNINGS = "distribution", "earnings"

ROLES = ("owner", "host", "referrer", "platform")
PLATFORM_RECIPIENT = "platform"
UNREAD_MODES = ("carry", "share")
READ_WINDOW_S_DEFAULT = 1800
READ_WINDOW_S_MAX = 31 * 86_400
COUNT_ROLES = ("owner", "owner_alone", "host", "referrer")
"""How a member's counted reads are kept, per publisher: reads of its content with a referrer
(``owner``) and without (``owner_alone``: the owner also takes the referrer's share), reads hosted
on its sites (``host``), reads referred by its sites (``referrer``)."""
MEMBER_READS_MAX = 20_000
"""Reads (counted or repeats) one member may record in one pool period."""
RECIPIENTS_MAX = 8000
"""Most publishers one distribution pays (one linked chain within one ledger batch)."""
FUTURE_SKEW_NS = 300 * 1_000_000_000
"""How far past the engine's clock a read's timestamp may be (clock skew of the sender)."""
NS_PER_S = 1_000_000_000
PERIOD_PATTERN = re.compile(r"\d{4}-(0[1-9]|1[0-2])")

Metadata = tuple[tuple[str, str], ...]


# ----------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Publisher:
    id: str
    ledger: str
    created_at_ns: int
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    publisher_id: str
    created_at_ns: int
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class Content:
    id: str
    publisher_id: str
    created_at_ns: int
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class Pool:
    id: str
    ledger: str
    price: int
    split_bps: tuple[tuple[str, int], ...]  # (role, bps) in ROLES order, adding up to 10000
    unread: str  # "carry" | "share"
    read_window_s: int
    created_at_ns: int
    metadata: Metadata = ()
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
class Read:
    id: str
    pool_id: str
    payer_id: str
    content_id: str
    host_site_id: str
    referrer_site_id: str  # "" when the read came without a referrer
    timestamp_ns: int
    period: str
    counted: bool
    reason: str  # "" (counted) | "repeat" | "own_content"
    created_at_ns: int
    metadata: Metadata = ()


@dataclass(frozen=True, slots=True)
class Line:
    recipient_id: str
    role: str
    amount: int


@dataclass(frozen=True, slots=True)
class Distribution:
    id: str  # the client's idempotency key, else ``public_distribution_id``; stored as ``distribution_key``
    pool_id: str
    period: str
    total: int
    lines: tuple[Line, ...]
    collected: int
    carried_in: int
    carried_out: int
    members: int
    members_paid: int
    created_at_ns: int


@dataclass(frozen=True, slots=True)
class EarningsLine:
    payer_id: str  # "" for the network share (carried or shared unread fees)
    role: str
    amount: int


@dataclass(frozen=True, slots=True)
class Earnings:
    """What one publisher earned from one pool period, and from which member."""

    publisher_id: str
    pool_id: str
    period: str
    total: int
    lines: tuple[EarningsLine, ...]


# ----------------------------------------------------------------- decoding
def _metadata(data: Any) -> Metadata:
    return tuple((str(key), str(value)) for key, value in data)


def decode_publisher(body: bytes) -> Publisher:
    d = orjson.loads(body)
    return Publisher(d["id"], d["ledger"], int(d["created_at_ns"]), _metadata(d["metadata"]))


def decode_site(body: bytes) -> Site:
    d = orjson.loads(body)
    return Site(d["id"], d["publisher_id"], int(d["created_at_ns"]), _metadata(d["metadata"]))


def decode_content(body: bytes) -> Content:
    d = orjson.loads(body)
    return Content(d["id"], d["publisher_id"], int(d["created_at_ns"]), _metadata(d["metadata"]))


def decode_pool(body: bytes) -> Pool:
    d = orjson.loads(body)
    return Pool(
        id=d["id"],
        ledger=d["ledger"],
        price=int(d["price"]),
        split_bps=tuple((str(role), int(bps)) for role, bps in d["split_bps"]),
        unread=d["unread"],
        read_window_s=int(d["read_window_s"]),
        created_at_ns=int(d["created_at_ns"]),
        metadata=_metadata(d["metadata"]),
        distributed_periods=tuple(d["distributed_periods"]),
        carried=int(d["carried"]),
    )


def decode_pool_period(body: bytes) -> PoolPeriod:
    d = orjson.loads(body)
    return PoolPeriod(d["pool_id"], d["period"], int(d["members"]), int(d["collected"]))


def decode_membership(body: bytes) -> Membership:
    d = orjson.loads(body)
    return Membership(d["pool_id"], d["period"], d["payer_id"], int(d["fee"]), int(d["created_at_ns"]))


def decode_read(body: bytes) -> Read:
    d = orjson.loads(body)
    return Read(
        id=d["id"],
        pool_id=d["pool_id"],
        payer_id=d["payer_id"],
        content_id=d["content_id"],
        host_site_id=d["host_site_id"],
        referrer_site_id=d["referrer_site_id"],
        timestamp_ns=int(d["timestamp_ns"]),
        period=d["period"],
        counted=bool(d["counted"]),
        reason=d["reason"],
        created_at_ns=int(d["created_at_ns"]),
        metadata=_metadata(d["metadata"]),
    )


def decode_distribution(body: bytes) -> Distribution:
    d = orjson.loads(body)
    lines = tuple(Line(line["recipient_id"], line["role"], int(line["amount"])) for line in d["lines"])
    return Distribution(
        id=d["id"],
        pool_id=d["pool_id"],
        period=d["period"],
        total=int(d["total"]),
        lines=lines,
        collected=int(d["collected"]),
        carried_in=int(d["carried_in"]),
        carried_out=int(d["carried_out"]),
        members=int(d["members"]),
        members_paid=int(d["members_paid"]),
        created_at_ns=int(d["created_at_ns"]),
    )


def decode_earnings(body: bytes) -> Earnings:
    """Earnings are stored columnar (payer ids, amounts, and roles as runs of [role, parts]): a
    distribution writes millions of parts."""
    d = orjson.loads(body)
    roles = chain.from_iterable(repeat(role, count) for role, count in d["roles"])
    lines = tuple(
        EarningsLine(payer, role, int(amount))
        for payer, role, amount in zip(d["payer_ids"], roles, d["amounts"], strict=True)
    )
    return Earnings(d["publisher_id"], d["pool_id"], d["period"], int(d["total"]), lines)


# ----------------------------------------------------------------- keys and ids
def member_key(pool_id: str, period: str, payer_id: str) -> str:
    """Membership and member-read documents sort by pool and period: a period's members list by
    the prefix ``{pool}:{period}:`` (client ids never hold a ``:``)."""
    return f"{pool_id}:{period}:{payer_id}"


def members_prefix(pool_id: str, period: str) -> str:
    return f"{pool_id}:{period}:"


def distribution_key(pool_id: str, period: str) -> str:
    return f"{pool_id}:{period}"


def earnings_key(publisher_id: str, period: str, pool_id: str) -> str:
    """A publisher's earnings list by ``{publisher}:`` and, for one period, ``{publisher}:{period}:``."""
    return f"{publisher_id}:{period}:{pool_id}"


def public_distribution_id(pool_id: str, period: str) -> str:
    """The distribution's id in the API alphabet (1-64 of ``A-Za-z0-9_-``): ``{pool}_{period}``, or a
    digest when that is too long. Unique: a period is always ``_YYYY-MM`` at the end, a digest never."""
    plain = f"{pool_id}_{period}"
    if len(plain) <= 64:
        return plain
    return "dst_" + hashlib.blake2b(f"{pool_id}:{period}".encode(), digest_size=16).hexdigest()


def transfer_id(prefix: str, *parts: str, room: int = 0) -> str:
    """``prefix:part:part`` when that (plus ``room`` characters a caller appends) fits a ledger id,
    else ``prefix:`` and a 128-bit digest of it. A digest form has one ``:``, the plain forms
    more, so they never collide."""
    text = ":".join((prefix, *parts))
    if len(text) + room <= LEDGER_ID_LENGTH_MAX:
        return text
    return f"{prefix}:{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"


def month_bounds(timestamp_ns: int) -> tuple[int, int]:
    """The UTC month holding ``timestamp_ns``, as [start, end) in ns."""
    moment = dt.datetime.fromtimestamp(timestamp_ns // NS_PER_S, tz=dt.UTC)
    start = dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp()) * NS_PER_S, int(end.timestamp()) * NS_PER_S


def check_period(period: str, param: str = "period") -> None:
    if not PERIOD_PATTERN.fullmatch(period):
        raise Refused("invalid_period", "a period is a UTC calendar month written YYYY-MM", param)


# ----------------------------------------------------------------- reading records
def _get(ctx: BatchContext, kind: str, record_id: str, code: str, param: str) -> bytes:
    body = ctx.get_document(kind, record_id)
    if body is None:
        raise NotFound(code, f"no {kind} {record_id}", param)
    return body


def get_publisher(ctx: BatchContext, publisher_id: str, param: str = "publisher_id") -> Publisher:
    return decode_publisher(_get(ctx, PUBLISHER, publisher_id, "publisher_not_found", param))


def get_site(ctx: BatchContext, site_id: str, param: str = "site_id") -> Site:
    return decode_site(_get(ctx, SITE, site_id, "site_not_found", param))


def get_content(ctx: BatchContext, content_id: str, param: str = "content_id") -> Content:
    return decode_content(_get(ctx, CONTENT, content_id, "content_not_found", param))


def get_pool(ctx: BatchContext, pool_id: str, param: str = "pool_id") -> Pool:
    return decode_pool(_get(ctx, POOL, pool_id, "pool_not_found", param))


def get_read(ctx: BatchContext, read_id: str) -> Read:
    return decode_read(_get(ctx, READ, read_id, "read_not_found", "id"))


def get_distribution(ctx: BatchContext, pool_id: str, period: str) -> Distribution:
    key = distribution_key(pool_id, period)
    return decode_distribution(_get(ctx, DISTRIBUTION, key, "distribution_not_found", "period"))


def pool_period(ctx: BatchContext, pool_id: str, period: str) -> PoolPeriod:
    body = ctx.get_document(POOL_PERIOD, f"{pool_id}:{period}")
    return PoolPeriod(pool_id, period) if body is None else decode_pool_period(body)


def current_period(ctx: BatchContext) -> str:
    """The month (``YYYY-MM``, UTC) the engine's clock is in: the one joins pay for."""
    return period_key("month", ctx.now_ns)


def _closed(pool: Pool, period: str) -> Refused:
    return Refused("period_closed", f"period {period} of pool {pool.id} is distributed", "pool_id")


# ----------------------------------------------------------------- publishers, sites, content
def create_publisher(
    publisher_id: str, ledger: str, rails: Rails, metadata: Metadata = ()
) -> Callable[[BatchContext], Outcome[Publisher]]:
    """A publisher and its earnings account ``publisher:{id}`` on ``ledger``."""

    def run(ctx: BatchContext) -> Outcome[Publisher]:
        if publisher_id == PLATFORM_RECIPIENT:
            raise Refused("publisher_id_reserved", f"{PLATFORM_RECIPIENT!r} names the platform in distributions", "id")
        body = ctx.get_document(PUBLISHER, publisher_id)
        if body is not None:
            existing = decode_publisher(body)
            if (existing.ledger, existing.metadata) != (ledger, metadata):
                raise Conflict("exists_with_different_fields", f"publisher {publisher_id} exists", "id")
            return existing, True
        ensure_platform_accounts(ctx, ledger, rails)
        open_accounts(ctx, [AccountRequest(chart.publisher_account(publisher_id), ledger)])
        publisher = Publisher(publisher_id, ledger, ctx.now_ns, metadata)
        ctx.put_document(PUBLISHER, publisher_id, encode(publisher))
        return publisher, False

    return run


def create_site(site_id: str, publisher_id: str, metadata: Metadata = ()) -> Callable[[BatchContext], Outcome[Site]]:
    def run(ctx: BatchContext) -> Outcome[Site]:
        body = ctx.get_document(SITE, site_id)
        if body is not None:
            existing = decode_site(body)
            if (existing.publisher_id, existing.metadata) != (publisher_id, metadata):
                raise Conflict("exists_with_different_fields", f"site {site_id} exists", "id")
            return existing, True
        get_publisher(ctx, publisher_id)
        site = Site(site_id, publisher_id, ctx.now_ns, metadata)
        ctx.put_document(SITE, site_id, encode(site))
        return site, False

    return run


def create_content(
    content_id: str, publisher_id: str, metadata: Metadata = ()
) -> Callable[[BatchContext], Outcome[Content]]:
    def run(ctx: BatchContext) -> Outcome[Content]:
        body = ctx.get_document(CONTENT, content_id)
        if body is not None:
            existing = decode_content(body)
            if (existing.publisher_id, existing.metadata) != (publisher_id, metadata):
                raise Conflict("exists_with_different_fields", f"content {content_id} exists", "id")
            return existing, True
        get_publisher(ctx, publisher_id)
        content = Content(content_id, publisher_id, ctx.now_ns, metadata)
        ctx.put_document(CONTENT, content_id, encode(content))
        return content, False

    return run


# ----------------------------------------------------------------- pools and members
@dataclass(frozen=True, slots=True)
class PoolRequest:
    id: str
    ledger: str
    price: int
    split_bps: tuple[tuple[str, int], ...]  # (role, bps) in ROLES order
    unread: str = "carry"
    read_window_s: int = READ_WINDOW_S_DEFAULT
    metadata: Metadata = ()


def _check_pool_request(request: PoolRequest) -> None:
    if tuple(role for role, _ in request.split_bps) != ROLES or min(b for _, b in request.split_bps) < 0:
        raise Refused("invalid_split", "split_bps has owner, host, referrer and platform, each >= 0", "split_bps")
    if sum(bps for _, bps in request.split_bps) != 10_000:
        raise Refused("invalid_split", "split_bps must add up to 10000", "split_bps")
    if request.unread not in UNREAD_MODES:
        raise Refused("invalid_unread", "unread is carry or share", "unread")
    if request.price <= 0:
        raise Refused("invalid_price", "price must be a positive integer", "price")
    if request.price > AMOUNT_MAX:
        raise Refused("amount_exceeds_maximum", f"price may be at most {AMOUNT_MAX}", "price")
    if not 0 <= request.read_window_s <= READ_WINDOW_S_MAX:
        raise Refused("invalid_read_window", f"read_window_s is 0 to {READ_WINDOW_S_MAX}", "read_window_s")


def create_pool(request: PoolRequest, rails: Rails) -> Callable[[BatchContext], Outcome[Pool]]:
    def run(ctx: BatchContext) -> Outcome[Pool]:
        body = ctx.get_document(POOL, request.id)
        asked = (request.ledger, request.price, request.split_bps, request.unread, request.read_window_s)
        if body is not None:
            existing = decode_pool(body)
            had = (existing.ledger, existing.price, existing.split_bps, existing.unread, existing.read_window_s)
            if had != asked or existing.metadata != request.metadata:
                raise Conflict("exists_with_different_fields", f"pool {request.id} exists with other fields", "id")
            return existing, True
        _check_pool_request(request)
        ensure_platform_accounts(ctx, request.ledger, rails)
        # The pool never pays out more than it holds: the ledger itself refuses it.
        flags = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
        open_accounts(ctx, [AccountRequest(chart.pool_account(request.id), request.ledger, flags)])
        pool = Pool(request.id, *asked, created_at_ns=ctx.now_ns, metadata=request.metadata)
        ctx.put_document(POOL, pool.id, encode(pool))
        return pool, False

    return run


def join_pool(pool_id: str, payer_id: str) -> Callable[[BatchContext], Outcome[Membership]]:
    """Charge the pool's price into the pool for the current period (once per period: joining
    again answers the membership). A distributed period takes no joins (``period_closed``)."""

    def run(ctx: BatchContext) -> Outcome[Membership]:
        pool = get_pool(ctx, pool_id)
        period = period_key("month", ctx.now_ns)
        if period in pool.distributed_periods:
            raise _closed(pool, period)
        key = member_key(pool.id, period, payer_id)
        body = ctx.get_document(MEMBERSHIP, key)
        if body is not None:
            return decode_membership(body), True
        payer = get_payer(ctx, payer_id)
        if payer.ledger != pool.ledger:
            raise Refused("ledger_mismatch", "the payer and the pool are on different ledgers", "payer_id")
        prefix = transfer_id("membership", pool.id, period, payer.id, room=len(":wallet"))
        collect(ctx, payer, pool.price, chart.pool_account(pool.id), prefix)
        membership = Membership(pool.id, period, payer.id, pool.price, ctx.now_ns)
        summary = pool_period(ctx, pool.id, period)
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
    referrer_site_id: str  # "" for none
    timestamp_ns: int
    metadata: Metadata = ()


@dataclass(slots=True)
class MemberReads:
    """What one member read in one pool period.

    ``counts``: the counted reads per role and publisher (``COUNT_ROLES``) and their total
    (``reads``) — what a distribution splits the member's fee over. ``log``: per content, every
    read that was not of the member's own content, as ``[timestamp_ns, read_id]`` sorted: what
    decides which reads are repeats.
    """

    counts: dict[str, Any]
    log: dict[str, list[list[Any]]]
    logged: int = 0
    """Entries in ``log``."""

    def place(self, content_id: str, timestamp_ns: int, read_id: str, window_ns: int) -> tuple[int, bool, str]:
        """Where a new read goes in the content's log, whether it counts, and which read (if any)
        it turns into a repeat. A read counts unless the member read the same content (counted
        or not) less than the window before it; so a new read can only turn the next read of that
        content into a repeat, never the other way round."""
        entries = self.log.get(content_id, [])
        at = bisect.bisect_left(entries, [timestamp_ns, read_id])
        counted = at == 0 or timestamp_ns - entries[at - 1][0] >= window_ns
        displaced = ""
        if at < len(entries):
            next_ns, next_id = entries[at]
            next_counted = at == 0 or next_ns - entries[at - 1][0] >= window_ns
            if next_counted and next_ns - timestamp_ns < window_ns:
                displaced = next_id
        return at, counted, displaced

    def count(self, owner: str, host: str, referrer: str, step: int) -> None:
        """Add (``step`` 1) or take away (-1) one counted read of ``owner``'s content on ``host``'s
        site, referred by ``referrer``'s (or ``""``)."""
        counts = self.counts
        counts["reads"] += step
        keyed = [("owner", owner), ("referrer", referrer)] if referrer else [("owner_alone", owner)]
        for role, publisher_id in [*keyed, ("host", host)]:
            by_publisher: dict[str, int] = counts[role]
            left = by_publisher.get(publisher_id, 0) + step
            require(left >= 0, f"member reads: {role} count of {publisher_id} below zero")
            if left:
                by_publisher[publisher_id] = left
            else:
                del by_publisher[publisher_id]

    def to_documents(self) -> tuple[bytes, bytes]:
        sort = orjson.OPT_SORT_KEYS
        return orjson.dumps(self.counts, option=sort), orjson.dumps({"log": self.log}, option=sort)


def empty_counts() -> dict[str, Any]:
    return {"reads": 0, **{role: {} for role in COUNT_ROLES}}


def decode_member_counts(body: bytes) -> dict[str, Any]:
    """A member's counted reads: ``{"reads": n, "owner": {publisher: n}, "owner_alone": ...,
    "host": ..., "referrer": ...}``."""
    counts: dict[str, Any] = orjson.loads(body)
    return counts


def load_member_reads(ctx: BatchContext, key: str) -> MemberReads:
    counts_body = ctx.get_document(MEMBER_READS, key)
    log_body = ctx.get_document(MEMBER_READ_LOG, key)
    counts = empty_counts() if counts_body is None else decode_member_counts(counts_body)
    log: dict[str, list[list[Any]]] = {} if log_body is None else orjson.loads(log_body)["log"]
    return MemberReads(counts, log, sum(len(entries) for entries in log.values()))


class ReadRecorder:
    """Records reads inside one operation. Records and member state read once are kept, and each
    member's documents are written once at ``flush``, so one read or thousands take the same
    path and leave the same documents. Every check comes before any change: a refused read
    changes nothing."""

    def __init__(self, ctx: BatchContext) -> None:
        self.ctx = ctx
        self._pools: dict[str, Pool] = {}
        self._contents: dict[str, Content] = {}
        self._sites: dict[str, Site] = {}
        self._ledgers: dict[str, str] = {}
        self._members: dict[str, bool] = {}
        self._state: dict[str, MemberReads] = {}
        self._dirty: set[str] = set()
        self._month: tuple[int, int, str] = (0, 0, "")
        self._absent: set[str] = set()

    def prefetch(self, read_ids: Sequence[str]) -> None:
        """Look up many read ids in one store read (most are new); ``record`` then skips its own."""
        found = self.ctx.get_documents(READ, read_ids)
        self._absent = set(read_ids).difference(found)

    def _period(self, timestamp_ns: int) -> str:
        """The month of a timestamp; the last month seen is kept (formatting a date is slow)."""
        low, high, period = self._month
        if not low <= timestamp_ns < high:
            low, high = month_bounds(timestamp_ns)
            period = period_key("month", timestamp_ns)
            self._month = (low, high, period)
        return period

    def _pool(self, pool_id: str) -> Pool:
        pool = self._pools.get(pool_id)
        if pool is None:
            pool = self._pools[pool_id] = get_pool(self.ctx, pool_id)
        return pool

    def _content(self, content_id: str) -> Content:
        content = self._contents.get(content_id)
        if content is None:
            content = self._contents[content_id] = get_content(self.ctx, content_id)
        return content

    def _site(self, site_id: str, param: str) -> Site:
        site = self._sites.get(site_id)
        if site is None:
            site = self._sites[site_id] = get_site(self.ctx, site_id, param)
        return site

    def _ledger_of(self, publisher_id: str) -> str:
        ledger = self._ledgers.get(publisher_id)
        if ledger is None:
            ledger = self._ledgers[publisher_id] = get_publisher(self.ctx, publisher_id).ledger
        return ledger

    def _is_member(self, key: str) -> bool:
        member = self._members.get(key)
        if member is None:
            member = self._members[key] = self.ctx.get_document(MEMBERSHIP, key) is not None
        return member

    def _member_state(self, key: str) -> MemberReads:
        state = self._state.get(key)
        if state is None:
            state = self._state[key] = load_member_reads(self.ctx, key)
        return state

    def record(self, request: ReadRequest) -> Outcome[Read]:
        ctx = self.ctx
        if request.id in self._absent:
            self._absent.discard(request.id)  # a second read with this id must see the first
            body = None
        else:
            body = ctx.get_document(READ, request.id)
        if body is not None:
            return _replay_read(decode_read(body), request), True
        pool = self._pool(request.pool_id)
        if request.timestamp_ns > ctx.now_ns + FUTURE_SKEW_NS:
            raise Refused("timestamp_in_future", "the read's timestamp is later than now", "timestamp")
        period = self._period(request.timestamp_ns)
        if period in pool.distributed_periods:
            raise Refused("period_closed", f"period {period} of pool {pool.id} is distributed", "timestamp")
        key = member_key(pool.id, period, request.payer_id)
        if not self._is_member(key):
            raise self._not_a_member(pool, period, request.payer_id)
        content = self._content(request.content_id)
        host = self._site(request.host_site_id, "host_site_id").publisher_id
        referrer = ""
        if request.referrer_site_id:
            referrer = self._site(request.referrer_site_id, "referrer_site_id").publisher_id
        for publisher_id in (content.publisher_id, host, referrer):
            if not publisher_id:
                continue
            if self._ledger_of(publisher_id) != pool.ledger:
                raise Refused("ledger_mismatch", f"publisher {publisher_id} is not on the pool's ledger", "content_id")
        reason = ""
        displaced = ""
        if content.publisher_id == request.payer_id:
            reason = "own_content"  # recorded, never counted, no part of the repeat window
        else:
            state = self._member_state(key)
            if state.logged >= MEMBER_READS_MAX:
                raise Refused("too_many_reads", f"a member records at most {MEMBER_READS_MAX} reads a period", "id")
            at, counted, displaced = state.place(
                content.id, request.timestamp_ns, request.id, pool.read_window_s * NS_PER_S
            )
            # Checked: now change.
            state.log.setdefault(content.id, []).insert(at, [request.timestamp_ns, request.id])
            state.logged += 1
            if counted:
                state.count(content.publisher_id, host, referrer, 1)
            else:
                reason = "repeat"
            if displaced:
                self._displace(state, displaced)
            self._dirty.add(key)
        read = Read(
            id=request.id,
            pool_id=pool.id,
            payer_id=request.payer_id,
            content_id=content.id,
            host_site_id=request.host_site_id,
            referrer_site_id=request.referrer_site_id,
            timestamp_ns=request.timestamp_ns,
            period=period,
            counted=not reason,
            reason=reason,
            created_at_ns=ctx.now_ns,
            metadata=request.metadata,
        )
        ctx.put_document(READ, read.id, encode(read))
        ctx.put_document(PAYER_READ, f"{read.payer_id}:{read.id}", b"{}")
        return read, False

    def _displace(self, state: MemberReads, read_id: str) -> None:
        """A read that counted has a new read less than the window before it: it is a repeat now."""
        before = get_read(self.ctx, read_id)
        require(before.counted, f"read {read_id} displaced but not counted")
        host = self._site(before.host_site_id, "host_site_id").publisher_id
        referrer = ""
        if before.referrer_site_id:
            referrer = self._site(before.referrer_site_id, "referrer_site_id").publisher_id
        state.count(self._content(before.content_id).publisher_id, host, referrer, -1)
        self.ctx.put_document(READ, read_id, encode(replace(before, counted=False, reason="repeat")))

    def _not_a_member(self, pool: Pool, period: str, payer_id: str) -> Refused:
        current = period_key("month", self.ctx.now_ns)
        if period != current and self._is_member(member_key(pool.id, current, payer_id)):
            return Refused(
                "outside_membership_period",
                f"payer {payer_id} is a member of pool {pool.id} for {current}, not for {period} (the read's month)",
                "timestamp",
            )
        return Refused("not_a_member", f"payer {payer_id} is not a member of pool {pool.id} for {period}", "payer_id")

    def flush(self) -> None:
        for key in sorted(self._dirty):
            counts, log = self._state[key].to_documents()
            self.ctx.put_document(MEMBER_READS, key, counts)
            self.ctx.put_document(MEMBER_READ_LOG, key, log)
        self._dirty.clear()


def _replay_read(existing: Read, request: ReadRequest) -> Read:
    asked = (
        request.pool_id,
        request.payer_id,
        request.content_id,
        request.host_site_id,
        request.referrer_site_id,
        request.timestamp_ns,
        request.metadata,
    )
    had = (
        existing.pool_id,
        existing.payer_id,
        existing.content_id,
        existing.host_site_id,
        existing.referrer_site_id,
        existing.timestamp_ns,
        existing.metadata,
    )
    if asked != had:
        raise Conflict("exists_with_different_fields", f"read {request.id} exists with other fields", "id")
    return existing


def record_read(request: ReadRequest) -> Callable[[BatchContext], Outcome[Read]]:
    """Record one read; answers it (``counted``, ``reason``) and whether it replays an earlier one."""

    def run(ctx: BatchContext) -> Outcome[Read]:
        recorder = ReadRecorder(ctx)
        outcome = recorder.record(request)
        recorder.flush()
        return outcome

    return run


ReadResult = tuple[Read, bool] | ApiError


def record_reads(requests: Sequence[ReadRequest]) -> Callable[[BatchContext], list[ReadResult]]:
    """Record many reads in one operation, each as ``record_read`` would (each answers its read
    or its refusal; a refused read changes nothing). Each member's documents are written once,
    so loading a month of reads costs one write per member, not one per read."""

    def run(ctx: BatchContext) -> list[ReadResult]:
        recorder = ReadRecorder(ctx)
        recorder.prefetch([request.id for request in requests])
        results: list[ReadResult] = []
        for request in requests:
            try:
                results.append(recorder.record(request))
            except ApiError as error:
                results.append(error)
        recorder.flush()
        return results

    return run


# ----------------------------------------------------------------- distribution
MemberCounts = dict[str, Any]
"""A member's counted reads, as ``decode_member_counts`` answers them."""


def distribute(
    pool_id: str, period: str, member_ids: Sequence[str], distribution_id: str = ""
) -> Callable[[BatchContext], Outcome[Distribution]]:
    """Close ``period`` and pay it out. ``member_ids`` must be every member of the period (the
    caller lists them by ``members_prefix``); a mismatch refuses (``members_changed``) so nobody
    is left out. A period distributed already is ``already_distributed``, unless the caller
    names the distribution's id (``distribution_id``, its idempotency key): then it replays."""

    def run(ctx: BatchContext) -> Outcome[Distribution]:
        check_period(period)
        pool = get_pool(ctx, pool_id)
        if period in pool.distributed_periods:
            existing = get_distribution(ctx, pool.id, period)
            if distribution_id and existing.id == distribution_id:
                return existing, True
            raise Conflict("already_distributed", f"period {period} of pool {pool.id} is already distributed", "period")
        if period > period_key("month", ctx.now_ns):
            raise Refused("period_not_started", f"period {period} has not started", "period")
        summary = pool_period(ctx, pool.id, period)
        members = sorted(set(member_ids))
        if len(members) != summary.members:
            raise Refused("members_changed", "the period's members changed while listing them; retry", "period")
        plan = plan_distribution(pool, _member_counts(ctx, pool.id, period, members))
        require(
            plan.collected == summary.collected and plan.total + plan.carried_out == plan.collected + pool.carried,
            "distribution: money created or lost",
        )
        _pay(ctx, pool, period, plan.lines)
        distribution = Distribution(
            id=distribution_id or public_distribution_id(pool.id, period),
            pool_id=pool.id,
            period=period,
            total=plan.total,
            lines=tuple(Line(r, role, a) for (r, role), a in sorted(plan.lines.items())),
            collected=plan.collected,
            carried_in=pool.carried,
            carried_out=plan.carried_out,
            members=len(members),
            members_paid=plan.members_paid,
            created_at_ns=ctx.now_ns,
        )
        ctx.put_document(DISTRIBUTION, distribution_key(pool.id, period), encode(distribution))
        for publisher_id, parts in sorted(plan.earnings.items()):
            document = parts.document(publisher_id, pool.id, period)
            ctx.put_document(EARNINGS, earnings_key(publisher_id, period, pool.id), document)
        closed = replace(pool, distributed_periods=(*pool.distributed_periods, period), carried=plan.carried_out)
        ctx.put_document(POOL, pool.id, encode(closed))
        return distribution, False

    return run


def _member_counts(
    ctx: BatchContext, pool_id: str, period: str, members: list[str]
) -> Iterator[tuple[str, int, MemberCounts | None]]:
    """Each member's fee and counted reads, read in two store reads, not two per member."""
    keys = [member_key(pool_id, period, payer_id) for payer_id in members]
    memberships = ctx.get_documents(MEMBERSHIP, keys)
    if len(memberships) != len(keys):
        missing = next(key for key in keys if key not in memberships)
        raise Refused("members_changed", f"{missing} is not a membership of {period}; retry", "period")
    counted = ctx.get_documents(MEMBER_READS, keys)
    for payer_id, key in zip(members, keys, strict=True):
        counts_body = counted.get(key)
        fee = int(orjson.loads(memberships[key])["fee"])
        yield payer_id, fee, None if counts_body is None else decode_member_counts(counts_body)


class EarningsParts:
    """One publisher's earnings from one distribution: (payer, role, amount) parts, payer ``""``
    for the network share; kept and stored columnar, the parts of one role together (``roles``
    is runs of [role, how many parts])."""

    __slots__ = ("amounts", "payer_ids", "roles")

    def __init__(self) -> None:
        self.payer_ids: list[str] = []
        self.roles: list[tuple[str, int]] = []
        self.amounts: list[int] = []

    def add(self, role: str, payer_ids: list[str], amounts: list[int]) -> None:
        self.payer_ids.extend(payer_ids)
        self.amounts.extend(amounts)
        self.roles.append((role, len(payer_ids)))

    @property
    def parts(self) -> list[tuple[str, str, int]]:
        roles = chain.from_iterable(repeat(role, count) for role, count in self.roles)
        return list(zip(self.payer_ids, roles, self.amounts, strict=True))

    def document(self, publisher_id: str, pool_id: str, period: str) -> bytes:
        return orjson.dumps(
            {
                "publisher_id": publisher_id,
                "pool_id": pool_id,
                "period": period,
                "total": sum(self.amounts),
                "payer_ids": self.payer_ids,
                "roles": self.roles,
                "amounts": self.amounts,
            }
        )


@dataclass(slots=True)
class DistributionPlan:
    lines: dict[tuple[str, str], int]
    """(recipient, role) -> amount; the platform's recipient is ``PLATFORM_RECIPIENT``."""
    earnings: dict[str, EarningsParts]
    """Per publisher: which member's fee (or the network share) paid it what, in which role."""
    platform: dict[str, int]
    """Per member (``""``: the network share): the platform's part."""
    total: int
    collected: int
    carried_out: int
    members_paid: int


def plan_distribution(pool: Pool, members: Iterable[tuple[str, int, MemberCounts | None]]) -> DistributionPlan:
    """Who gets what (pure): each member's fee split over what it read (``split_member``); then
    the network share (carried in, and with ``share`` this period's unread fees) over all lines
    in proportion. ``members`` is (payer id, fee, counted reads or None) per member."""
    owner_bps, host_bps, referrer_bps, platform_bps = (pool.bps(role) for role in ROLES)
    alone_bps = owner_bps + referrer_bps
    # Per role, per publisher: the parts it got, flat (payer id, amount, payer id, amount, ...).
    # A distribution books millions of parts, so no part gets a Python step of its own: a
    # member's keys of one weight all get the same amount, so each role is one C-level pass that
    # extends each publisher's list by the (payer, amount) pair of its weight (``()``: nothing);
    # the few keys a leftover unit goes to one by one are fixed after. No object per part: the
    # columns come out of the flat lists by slicing.
    parts_of: dict[str, defaultdict[str, list[str | int]]] = {role: defaultdict(list) for role in ROLES[:-1]}
    platform: dict[str, int] = {}
    shares: Shares = {}
    unread = collected = paid = paid_fees = 0
    for payer_id, fee, counts in members:
        collected += fee
        if counts is None or not counts["reads"]:
            unread += fee
            continue
        reads: int = counts["reads"]
        paid += 1
        paid_fees += fee
        owner: dict[str, int] = counts["owner"]
        alone: dict[str, int] = counts["owner_alone"]
        if owner and alone:
            # Reads with a referrer weigh owner bps, without it owner + referrer bps: the units are bps.
            units = {publisher: count * owner_bps for publisher, count in owner.items()}
            for publisher, count in alone.items():
                units[publisher] = units.get(publisher, 0) + count * alone_bps
            owners: tuple[dict[str, int], int] = (units, 1)
        else:
            owners = (owner, owner_bps) if owner else (alone, alone_bps)
        groups = (
            ("owner", *owners),
            ("host", counts["host"], host_bps),
            ("referrer", counts["referrer"], referrer_bps),
            ("platform", {PLATFORM_RECIPIENT: reads}, platform_bps),
        )
        tables, cut, extra = _split_tables(fee, reads * BPS_TOTAL, groups, shares)
        platform_part = 0
        for role, units_of, distinct, floor_of, remainder_of in tables:
            if role == "platform":
                platform_part = floor_of[reads] + (remainder_of[reads] > cut)
                continue
            pair_of: dict[int, tuple[str, int] | tuple[()]] = {}
            for unit in distinct:
                amount = floor_of[unit] + (remainder_of[unit] > cut)
                pair_of[unit] = (payer_id, amount) if amount else ()
            target = parts_of[role]
            # ``list.extend`` answers None, so ``any`` runs the whole pass (and keeps nothing).
            any(map(_extend, map(target.__getitem__, units_of), map(pair_of.__getitem__, units_of.values())))
        for recipient, role, index in extra:
            if role == "platform":
                platform_part += 1
                continue
            _, units_of, _, floor_of, _ = tables[index]
            floor = floor_of[units_of[recipient]]  # a key at the cut: no unit yet
            found = parts_of[role][recipient]
            if floor:
                require(found[-2] == payer_id and found[-1] == floor, "plan: leftover unit on the wrong part")
                found[-1] = floor + 1
            else:
                found += (payer_id, 1)
        if platform_part:
            platform[payer_id] = platform_part
    lines: dict[tuple[str, str], int] = {}
    for role, by_publisher in parts_of.items():
        for publisher, flat in by_publisher.items():
            if flat:  # a publisher all of whose parts were 0 has an empty list: no line
                lines[(publisher, role)] = sum(cast(list[int], flat[1::2]))
    if platform:
        lines[(PLATFORM_RECIPIENT, "platform")] = sum(platform.values())
    require(sum(lines.values()) == paid_fees, "plan: the members' parts do not add up to their fees")
    network = pool.carried + (unread if pool.unread == "share" else 0)
    carried_out = unread if pool.unread == "carry" else 0
    if network and lines:
        for (recipient, role), share in split(network, lines).items():
            if not share:
                continue
            lines[(recipient, role)] += share
            if role == "platform":
                platform[""] = share
            else:
                parts_of[role][recipient] += ("", share)
    elif network:
        carried_out = pool.carried + unread  # nobody read anything: everything waits for the next period
    earnings: dict[str, EarningsParts] = {}
    for role, by_publisher in parts_of.items():
        for publisher, flat in by_publisher.items():
            if not flat:
                continue
            parts = earnings.get(publisher)
            if parts is None:
                parts = earnings[publisher] = EarningsParts()
            parts.add(role, cast(list[str], flat[0::2]), cast(list[int], flat[1::2]))
    return DistributionPlan(lines, earnings, platform, sum(lines.values()), collected, carried_out, paid)


BPS_TOTAL = 10_000
_extend = list.extend
"""``list.extend`` unbound: ``map(_extend, lists, items)`` extends each list by its item, in C."""

Shares = dict[tuple[int, int], tuple[dict[int, int], dict[int, int]]]
"""(fee x bps, weight sum) -> ({units: floor of the exact share}, {units: remainder}): the same
for every member with that fee and number of reads, so computed once per distribution."""

_Table = tuple[str, dict[str, int], set[int], dict[int, int], dict[int, int]]
"""One role of a member's split: (role, {recipient: units}, the distinct units, {units: floor},
{units: remainder}); the floors and remainders hold other units too (``Shares``)."""


def _split_tables(
    fee: int, weight_sum: int, groups: Iterable[tuple[str, dict[str, int], int]], shares: Shares
) -> tuple[list[_Table], int, list[tuple[str, str, int]]]:
    """Largest remainder over one member's (recipient, role) keys, per distinct weight.

    ``groups`` is (role, {recipient: units}, bps) per role: a key's weight is units x bps, and
    ``weight_sum`` their sum. Every key gets the floor of its exact share; the units left over
    (the remainders' sum over ``weight_sum``) go one each to the keys with the largest
    remainders: those above the remainder of the last one served all get one, and if that
    remainder's level has more keys than units left, they go to its first keys by (recipient,
    role), as in ``split``. Answers the tables, ``cut`` (a key whose remainder is above it gets
    one unit more) and the keys of the level at the cut that get one: (recipient, role, table
    index). Only distinct weights and the level at the cut take Python steps; keys take C passes."""
    require(fee >= 0 and weight_sum > 0, "split_member: bad fee or weights")
    tables: list[_Table] = []
    remainders: list[int] = []
    for role, units, bps in groups:
        if not units or not bps:
            continue
        numerator = fee * bps
        found = shares.get((numerator, weight_sum))
        if found is None:
            found = shares[(numerator, weight_sum)] = ({}, {})
        floor_of, remainder_of = found
        distinct = set(units.values())
        if not floor_of.keys() >= distinct:
            for unit in distinct.difference(floor_of):
                floor_of[unit], remainder_of[unit] = divmod(numerator * unit, weight_sum)
        remainders += map(remainder_of.__getitem__, units.values())
        tables.append((role, units, distinct, floor_of, remainder_of))
    # The floors miss the fee by exactly the remainders' sum over the weight sum.
    left, inexact = divmod(sum(remainders), weight_sum)
    keys = len(remainders)
    require(inexact == 0 and 0 <= left <= keys, "split_member: weights do not add up to the weight sum")
    if not left:
        return tables, weight_sum, []  # no remainder is above the weight sum
    remainders.sort()
    threshold = remainders[keys - left]  # the remainder of the last key served
    require(threshold > 0, "split_member: leftover units not handed out")
    low = bisect.bisect_left(remainders, threshold)
    high = bisect.bisect_right(remainders, threshold, low)
    rest = left - (keys - high)  # units for the keys at the threshold
    if rest == high - low:
        return tables, threshold - 1, []
    ranked: list[tuple[str, str, int]] = []
    for index, (role, units, distinct, _, remainder_of) in enumerate(tables):
        at_level = {unit for unit in distinct if remainder_of[unit] == threshold}
        if len(at_level) == 1:
            (unit,) = at_level
            ranked += [(recipient, role, index) for recipient, units_of in units.items() if units_of == unit]
        elif at_level:
            ranked += [(recipient, role, index) for recipient, units_of in units.items() if units_of in at_level]
    ranked.sort()  # by (recipient, role): as ``split`` breaks ties
    return tables, threshold, ranked[:rest]


def split_member(
    fee: int, weight_sum: int, groups: Sequence[tuple[str, dict[str, int], int]]
) -> list[tuple[str, dict[str, int]]]:
    """Largest remainder over one member's (recipient, role) keys, exactly as ``split`` does it,
    computed per distinct weight rather than per key (``_split_tables``, which
    ``plan_distribution`` uses directly): per role, each recipient's amount."""
    tables, cut, extra = _split_tables(fee, weight_sum, groups, {})
    parts = [
        (role, {recipient: floor_of[unit] + (remainder_of[unit] > cut) for recipient, unit in units.items()})
        for role, units, _, floor_of, remainder_of in tables
    ]
    for recipient, _, index in extra:
        parts[index][1][recipient] += 1
    return parts


def _pay(ctx: BatchContext, pool: Pool, period: str, lines: dict[tuple[str, str], int]) -> None:
    """One linked chain: the pool pays each publisher its lines' sum, and the platform its fee
    (routed by role, so no publisher id could ever reach the fee account)."""
    per_recipient: dict[str, int] = {}
    platform = 0
    for (recipient, role), amount in lines.items():
        if role == "platform":
            platform += amount
        else:
            per_recipient[recipient] = per_recipient.get(recipient, 0) + amount
    if len(per_recipient) > RECIPIENTS_MAX:
        raise Refused("too_many_recipients", f"a distribution pays at most {RECIPIENTS_MAX} publishers", "period")
    source = chart.pool_account(pool.id)
    legs = [
        TransferRequest(
            transfer_id("distribution", pool.id, period, recipient),
            source,
            chart.publisher_account(recipient),
            amount,
            pool.ledger,
        )
        for recipient, amount in sorted(per_recipient.items())
        if amount
    ]
    if platform:
        fee_id = transfer_id("distribution_fee", pool.id, period)
        legs.append(TransferRequest(fee_id, source, chart.fees_account(pool.ledger), platform, pool.ledger))
    if legs:
        move(ctx, legs, "insufficient_funds")


# ----------------------------------------------------------------- running a distribution
DISTRIBUTE_ATTEMPTS = 5
"""How often a distribution lists the members again when joins raced the listing."""


def list_period_members(store: Store, pool_id: str, period: str, page: int = 1000) -> list[str]:
    """Every member of a pool period, from the committed membership documents (by prefix)."""
    prefix = members_prefix(pool_id, period)
    members: list[str] = []
    after = prefix
    while True:
        rows = store.list_documents(MEMBERSHIP, after, page)
        for document_id, _ in rows:
            if not document_id.startswith(prefix):
                return members
            members.append(document_id[len(prefix) :])
        if len(rows) < page:
            return members
        after = rows[-1][0]


def run_distribution(engine: Engine, pool_id: str, period: str, distribution_id: str = "") -> Outcome[Distribution]:
    """List the period's members and distribute, listing again if a join raced the listing.

    The operation runs alone in its batch (its chain may hold thousands of transfers)."""
    attempt = 1
    while True:
        members = list_period_members(engine.store, pool_id, period)
        try:
            return engine.call(distribute(pool_id, period, members, distribution_id), BATCH_SIZE_MAX)
        except Refused as error:
            if error.code != "members_changed" or attempt >= DISTRIBUTE_ATTEMPTS:
                raise
        attempt += 1


async def run_distribution_async(
    engine: Engine, pool_id: str, period: str, distribution_id: str = ""
) -> Outcome[Distribution]:
    """``run_distribution`` for the event loop (listing runs in a worker thread)."""
    attempt = 1
    while True:
        members = await asyncio.to_thread(list_period_members, engine.store, pool_id, period)
        try:
            return await engine.call_async(distribute(pool_id, period, members, distribution_id), BATCH_SIZE_MAX)
        except Refused as error:
            if error.code != "members_changed" or attempt >= DISTRIBUTE_ATTEMPTS:
                raise
        attempt += 1
