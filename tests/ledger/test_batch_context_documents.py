"""What a batch remembers of the records its operations write: the newest body of each, and
which must be new (``create_document``), both undone with the operation that wrote them."""

from __future__ import annotations

from micropay.engine import BatchContext
from micropay.engine.context import DocumentKey
from micropay.ledger import LedgerState


class _NoDocuments:
    def get(self, key: DocumentKey) -> bytes | None:
        return None

    def get_many(self, kind: str, document_ids: list[str]) -> dict[str, bytes]:
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
