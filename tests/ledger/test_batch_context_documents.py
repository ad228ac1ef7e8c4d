"""What a batch remembers of the records its operations write: the newest body of each, and
which must be new (``create_document``), both undone with the operation that wrote them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from micropay.engine import BatchContext
from micropay.engine.context import DocumentKey
from micropay.ledger import LedgerState


class _NoDocuments:
    def get(self, key: DocumentKey) -> bytes | None:
        return None

    def get_many(self, kind: str, document_ids: list[str], remember_absent: bool = False) -> dict[str, bytes]:
        return {}

    def any_exists(self, kind: str, document_ids: list[str]) -> bool:
        return False


def _context() -> BatchContext:
    return BatchContext(LedgerState(lambda _id, _timestamp: None), _NoDocuments(), now_ns=1)


def test_a_created_record_must_be_new_and_a_put_one_need_not() -> None:
    ctx = _context()
    ctx.create_document("k", "a", b"1")
    ctx.put_document("k", "b", b"1")
    assert ctx.created(("k", "a")) and not ctx.created(("k", "b"))


def test_undoing_a_create_over_a_put_leaves_the_put_record_not_new() -> None:
    ctx = _context()
    ctx.put_document("k", "a", b"put")
    mark = ctx.mark()
    ctx.create_document("k", "a", b"created")
    assert ctx.created(("k", "a"))
    ctx.rollback_documents(mark)
    assert ctx.get_document("k", "a") == b"put" and not ctx.created(("k", "a"))


def test_undoing_a_later_put_keeps_the_record_created() -> None:
    ctx = _context()
    ctx.create_document("k", "a", b"created")
    mark = ctx.mark()
    ctx.put_document("k", "a", b"changed")
    ctx.rollback_documents(mark)
    assert ctx.get_document("k", "a") == b"created" and ctx.created(("k", "a"))


def test_undoing_the_create_forgets_the_record() -> None:
    ctx = _context()
    mark = ctx.mark()
    ctx.create_document("k", "a", b"created")
    ctx.rollback_documents(mark)
    assert ctx.get_document("k", "a") is None and not ctx.created(("k", "a"))


# ----------------------------------------------------------------- records created in bulk
def _keys(ctx: BatchContext) -> list[tuple[str, str, bytes]]:
    return [(document.kind, document.id, document.body) for document in ctx.documents()]


def test_records_created_in_bulk_read_and_list_like_records_created_one_by_one() -> None:
    ctx = _context()
    ctx.create_documents("k", ["a", "b"], [b"1", b"2"])
    assert ctx.get_document("k", "a") == b"1" and ctx.get_documents("k", ["b", "c"]) == {"b": b"2"}
    assert ctx.created(("k", "a")) and ctx.created(("k", "b")) and not ctx.created(("k", "c"))
    assert ctx.any_document_exists("k", ["c", "b"]) and not ctx.any_document_exists("k", ["c"])
    assert not ctx.any_document_exists("other", ["a"])
    assert _keys(ctx) == [("k", "a", b"1"), ("k", "b", b"2")]


def test_undoing_a_bulk_create_forgets_its_records_and_keeps_earlier_ones() -> None:
    ctx = _context()
    ctx.create_documents("k", ["a"], [b"1"])
    mark = ctx.mark()
    ctx.create_documents("k", ["b", "c"], [b"2", b"3"])
    ctx.put_document("j", "x", b"9")
    ctx.rollback_documents(mark)
    assert ctx.get_document("k", "b") is None and not ctx.created(("k", "c"))
    assert _keys(ctx) == [("k", "a", b"1")]


def test_a_record_created_in_bulk_then_put_is_listed_once_in_its_newer_version() -> None:
    ctx = _context()
    ctx.create_documents("k", ["a", "b"], [b"1", b"2"])
    mark = ctx.mark()
    ctx.put_document("k", "a", b"changed")
    assert ctx.get_document("k", "a") == b"changed" and ctx.created(("k", "a"))
    assert _keys(ctx) == [("k", "b", b"2"), ("k", "a", b"changed")]
    ctx.rollback_documents(mark)
    assert ctx.get_document("k", "a") == b"1" and _keys(ctx) == [("k", "a", b"1"), ("k", "b", b"2")]


def test_a_bulk_create_over_records_already_written_goes_record_by_record() -> None:
    ctx = _context()
    ctx.put_document("k", "a", b"put")
    ctx.create_documents("k", ["a", "b"], [b"1", b"2"])  # "a" again: created over the put
    assert ctx.get_document("k", "a") == b"1" and ctx.created(("k", "a")) and ctx.created(("k", "b"))
    assert _keys(ctx) == [("k", "a", b"1"), ("k", "b", b"2")]
    ctx.create_documents("k", ["c", "c"], [b"3", b"4"])  # one id twice: the later wins
    assert ctx.get_document("k", "c") == b"4" and len(_keys(ctx)) == 3


def test_an_empty_body_written_one_by_one_hides_the_version_created_in_bulk() -> None:
    ctx = _context()
    ctx.create_documents("k", ["a"], [b"1"])
    ctx.put_document("k", "a", b"")
    assert ctx.get_document("k", "a") == b"" and ctx.get_documents("k", ["a"]) == {"a": b""}


# ----------------------------------------------------------------- records put in bulk
_IDS = st.lists(st.sampled_from("abcd"), max_size=5)


def _state(ctx: BatchContext) -> tuple[object, ...]:
    return (
        {i: ctx.get_document("k", i) for i in "abcd"},
        {i: ctx.created(("k", i)) for i in "abcd"},
        ctx.get_documents("k", list("abcd")),
        ctx.any_document_exists("k", list("abcd")),
        _keys(ctx),
    )


def _put_in_bulk_and_one_by_one(bulk: BatchContext, single: BatchContext, ids: list[str]) -> None:
    bodies = [b"new-%d" % n for n in range(len(ids))]
    bulk.put_documents("k", ids, bodies)
    for document_id, body in zip(ids, bodies, strict=True):
        single.put_document("k", document_id, body)


@given(before_put=_IDS, before_created=_IDS, bulk_created=_IDS, ids=_IDS)
def test_records_put_in_bulk_read_list_and_undo_like_records_put_one_by_one(
    before_put: list[str], before_created: list[str], bulk_created: list[str], ids: list[str]
) -> None:
    contexts = (_context(), _context())
    for ctx in contexts:
        for document_id in before_put:
            ctx.put_document("k", document_id, b"put")
        for document_id in before_created:
            ctx.create_document("k", document_id, b"created")
        if len(set(bulk_created)) == len(bulk_created):
            ctx.create_documents("k", bulk_created, [b"bulk"] * len(bulk_created))
    bulk, single = contexts
    marks = (bulk.mark(), single.mark())
    _put_in_bulk_and_one_by_one(bulk, single, ids)
    assert _state(bulk) == _state(single)
    bulk.rollback_documents(marks[0])
    single.rollback_documents(marks[1])
    assert _state(bulk) == _state(single)


def _newest(ctx: BatchContext) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The newest body of each id, as ``documents`` lists them and as ``document_blocks``
    hands them to a store (read in order, a later body replacing an earlier one)."""
    listed = {document.id: document.body for document in ctx.documents()}
    assert len(listed) == len(ctx.documents()), "documents lists each record once"
    blocked: dict[str, bytes] = {}
    for block in ctx.document_blocks():
        blocked.update(zip(block.ids, block.bodies, strict=True))
    return listed, blocked


@given(bulk_created=_IDS, ids=_IDS, later_put=_IDS, later_created=_IDS)
def test_writes_after_a_bulk_put_win_over_it_and_undo_back_to_it(
    bulk_created: list[str], ids: list[str], later_put: list[str], later_created: list[str]
) -> None:
    contexts = (_context(), _context())
    for ctx in contexts:
        if len(set(bulk_created)) == len(bulk_created):
            ctx.create_documents("k", bulk_created, [b"bulk"] * len(bulk_created))
    bulk, single = contexts
    _put_in_bulk_and_one_by_one(bulk, single, ids)
    marks = (bulk.mark(), single.mark())
    before = [(_state(ctx)[:4], _newest(ctx)) for ctx in contexts]
    assert before[0] == before[1]
    for ctx in contexts:
        for document_id in later_put:
            ctx.put_document("k", document_id, b"later")
        if len(set(later_created)) == len(later_created):
            ctx.create_documents("k", later_created, [b"created"] * len(later_created))
        ctx.put_documents("k", ids, [b"again"] * len(ids))  # a second bulk put of the same ids
    assert _state(bulk)[:4] == _state(single)[:4] and _newest(bulk) == _newest(single)
    listed, blocked = _newest(bulk)
    assert listed == blocked
    bulk.rollback_documents(marks[0])
    single.rollback_documents(marks[1])
    assert [(_state(ctx)[:4], _newest(ctx)) for ctx in contexts] == before


def test_records_put_in_bulk_may_exist_already_and_are_read_found_and_undone() -> None:
    ctx = _context()
    mark = ctx.mark()
    ctx.put_documents("k", ["a", "b"], [b"1", b"2"])
    assert ctx.get_document("k", "a") == b"1" and ctx.get_documents("k", ["b", "c"]) == {"b": b"2"}
    assert ctx.any_document_exists("k", ["c", "a"]) and not ctx.any_document_exists("k", ["c"])
    assert not ctx.created(("k", "a")) and not ctx.created(("k", "b"))  # a store may replace them
    assert [(block.kind, block.ids, block.bodies) for block in ctx.document_blocks()] == [
        ("k", ["a", "b"], [b"1", b"2"])
    ]
    ctx.rollback_documents(mark)
    assert ctx.get_document("k", "a") is None and ctx.documents() == [] and ctx.document_blocks() == []
