"""The hot transfer endpoints: lean routes, the front door, the column-wise body check, single
transfers coalesced into one engine submission, and one write per response."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import httpx2
import pytest
from api_support import assert_error
from fastapi import APIRouter, Request
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from micropay.api import create_app
from micropay.api.auth import Admin
from micropay.api.coalesce import TransferCoalescer
from micropay.api.lean import LeanEndpoint, LeanRoute, lean_post
from micropay.api.schemas import (
    PLAIN_TRANSFER_FIELDS,
    TransferIn,
    plain_transfer,
    plain_transfer_columns,
    plain_transfers_valid,
)
from micropay.cli.protocol import CoalescingTransport
from micropay.engine import Engine
from micropay.errors import NotFound, QueueFullError
from micropay.ledger import TransferFlags, TransferRequest
from micropay.ledger.limits import AMOUNT_MAX

Account = Callable[..., dict[str, Any]]
TRANSFERS = TypeAdapter(list[TransferIn])


# ----------------------------------------------------------------- the column-wise check
def _model_accepts(items: object) -> bool:
    try:
        TRANSFERS.validate_python(items)
    except ValidationError:
        return False
    return True


_ID_TEXT = st.text(alphabet="AZaz09_-", min_size=1, max_size=64)
_ANY_TEXT = st.one_of(
    _ID_TEXT,
    st.text(max_size=70),
    st.sampled_from(["", "a,b", "a b", "é", "a\n", "x" * 65, "x" * 64, "USD", "US D", "ABCDEFGHIJKLM", "ABCDEFGHIJKL"]),
)
_VALUE = st.one_of(
    _ANY_TEXT,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([AMOUNT_MAX, AMOUNT_MAX + 1, -AMOUNT_MAX, -AMOUNT_MAX - 1, 0, True, False, 1.0, None]),
)
_FIELD = st.sampled_from([*PLAIN_TRANSFER_FIELDS, "code", "flags", "extra"])


@st.composite
def _transfer(draw: st.DrawFn) -> object:
    """Mostly plain transfers, some with a bad value, a missing, null or extra field, or not a dict."""
    item: dict[str, object] = {
        "id": draw(_ID_TEXT),
        "debit_account_id": draw(_ID_TEXT),
        "credit_account_id": draw(_ID_TEXT),
        "amount": draw(st.integers(min_value=-AMOUNT_MAX, max_value=AMOUNT_MAX)),
        "ledger": draw(st.text(alphabet="AZaz09_", min_size=1, max_size=12)),
    }
    change = draw(st.integers(min_value=0, max_value=5))
    if change == 1:
        item[draw(_FIELD)] = draw(_VALUE)
    elif change == 2:
        item.pop(draw(_FIELD), None)
    elif change == 3:
        return draw(st.sampled_from([None, [], "x", 1]))
    return item


@settings(max_examples=400, deadline=None)
@given(st.lists(_transfer(), max_size=6))
def test_plain_check_never_accepts_what_the_model_refuses(items: list[object]) -> None:
    if plain_transfers_valid(items):
        assert _model_accepts(items)
        assert TRANSFERS.validate_python(items) == items


@settings(max_examples=100, deadline=None)
@given(st.lists(_transfer(), min_size=1, max_size=6))
def test_plain_check_vouches_for_every_valid_plain_batch(items: list[object]) -> None:
    plain = all(
        isinstance(item, dict) and set(item) == set(PLAIN_TRANSFER_FIELDS) and None not in item.values()
        for item in items
    )
    if plain and _model_accepts(items):
        assert plain_transfers_valid(items)


@settings(max_examples=400, deadline=None)
@given(_transfer())
def test_single_plain_check_agrees_with_the_column_check(item: object) -> None:
    fields = plain_transfer(item)
    columns = plain_transfer_columns([item])
    assert (fields is None) == (columns is None)
    if fields is not None and columns is not None:
        assert fields == tuple(column[0] for column in columns)


def test_plain_check_refuses_the_edges() -> None:
    good = {"id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "ledger": "USD"}
    assert plain_transfers_valid([good])
    for bad in (
        [],
        [{**good, "id": "a,b"}],
        [{**good, "id": "t1\n"}],
        [{**good, "amount": True}],
        [{**good, "amount": 1.0}],
        [{**good, "amount": AMOUNT_MAX + 1}],
        [{**good, "ledger": "US-D"}],
        [{**good, "code": 0}],
        [{**good, "id": None}],
        [good] * 8191,
    ):
        assert not plain_transfers_valid(bad)


# ----------------------------------------------------------------- lean routes
def test_lean_route_refuses_what_it_cannot_serve() -> None:
    router = APIRouter()

    async def takes_a_query(body: TransferIn, limit: int, _caller: Admin) -> Response:
        return Response()

    async def no_principal(body: TransferIn) -> Response:
        return Response()

    for endpoint in (takes_a_query, no_principal):
        with pytest.raises(TypeError):
            lean_post(router, "/x")(endpoint)


def test_the_hot_routes_are_lean(app: Any) -> None:
    lean = {route.path for route in app.state.services.routes if isinstance(route, LeanRoute)}
    assert {"/v1/transfers", "/v1/transfers/batch"} <= lean


class _Tagging:
    """Another team's middleware: it must see the hot routes too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-seen", b"yes")]
            await send(message)

        await self.app(scope, receive, tagged)


@pytest.mark.parametrize("with_middleware", [False, True])
def test_hot_routes_answer_the_same_through_the_whole_stack(
    engine: Engine, admin_key: str, with_middleware: bool
) -> None:
    app = create_app(engine)
    if with_middleware:
        app.add_middleware(_Tagging)
    headers = {"Authorization": f"Bearer {admin_key}"}
    with TestClient(app, headers=headers) as client:
        client.post("/v1/ledgers", json={"code": "USD", "scale": 2})
        for account_id in ("a", "b"):
            client.post("/v1/accounts", json={"id": account_id, "ledger": "USD"})
        body = {"id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "ledger": "USD"}
        created = client.post("/v1/transfers", json=body)
        assert created.status_code == 201
        assert (created.headers.get("x-seen") == "yes") is with_middleware
        assert client.post("/v1/transfers", json=body).headers["Idempotent-Replayed"] == "true"
        batch = client.post("/v1/transfers/batch", json={"transfers": [{**body, "id": "t2"}, body]})
        assert [item["result"] for item in batch.json()["results"]] == ["ok", "exists"]
        assert_error(client.post("/v1/transfers", json={**body, "amount": 1.5}), 400, "invalid_request")
        assert_error(client.post("/v1/transfers", json=body, headers={"Authorization": ""}), 401, "authentication")
    assert (app._front_door is None) is with_middleware  # type: ignore[attr-defined]


# ----------------------------------------------------------------- coalescing
def _request(transfer_id: str, *, flags: int = 0, amount: int = 1) -> TransferRequest:
    return TransferRequest(transfer_id, "a", "b", amount, "USD", flags=flags)


async def _together(coalescer: TransferCoalescer, requests: list[TransferRequest]) -> list[Any]:
    return list(await asyncio.gather(*(coalescer.create_transfer(request) for request in requests)))


def test_single_transfers_of_one_turn_share_one_submission(engine: Engine, usd: Account) -> None:
    usd("a")
    usd("b")
    submitted: list[int] = []
    submit = engine.submit_transfers

    def counting(requests: Any) -> Any:
        submitted.append(len(requests))
        return submit(requests)

    engine.submit_transfers = counting  # type: ignore[method-assign]
    coalescer = TransferCoalescer(engine)
    plain = [_request(f"c{i}") for i in range(10)]
    linked = _request("linked", flags=int(TransferFlags.LINKED))
    again = _request("c0")
    other = _request("c1", amount=2)
    outcomes = asyncio.run(_together(coalescer, [*plain, linked, again, other]))
    assert [result.value for result, _ in outcomes] == ["ok"] * 10 + [
        "linked_event_chain_open",
        "exists",
        "exists_with_different_fields",
    ]
    assert sorted(submitted) == [1, 12]  # the linked one alone: its chain must not run into another request's
    assert engine.account("b").credits_posted == 10  # type: ignore[union-attr]


def test_a_refused_submission_is_retried_one_by_one(engine: Engine, usd: Account) -> None:
    usd("a")
    usd("b")
    submit = engine.submit_transfers

    def refuse_groups(requests: Any) -> Any:
        if len(requests) > 1:
            raise QueueFullError("full")
        return submit(requests)

    engine.submit_transfers = refuse_groups  # type: ignore[method-assign]
    outcomes = asyncio.run(_together(TransferCoalescer(engine), [_request(f"r{i}") for i in range(3)]))
    assert [result.value for result, _ in outcomes] == ["ok"] * 3


def test_a_failing_delivery_does_not_keep_the_rest_of_its_turn_waiting(engine: Engine, usd: Account) -> None:
    usd("a")
    usd("b")
    coalescer = TransferCoalescer(engine)

    async def submit_all() -> list[Any]:
        loop = asyncio.get_running_loop()
        answers: list[Any] = [None] * 3
        all_in = loop.create_future()

        def deliver(index: int, outcome: Any, error: BaseException | None) -> None:
            if index == 0:
                raise RuntimeError("a caller's own fault")
            answers[index] = outcome
            if answers[1] is not None and answers[2] is not None and not all_in.done():
                all_in.set_result(None)

        for index in range(3):  # one turn of the loop: one submission
            coalescer.submit(_request(f"d{index}"), functools.partial(deliver, index))
        await asyncio.wait_for(all_in, timeout=30)
        return answers

    answers = asyncio.run(submit_all())
    assert [outcome[0].value for outcome in answers[1:]] == ["ok", "ok"]
    assert engine.account("b").credits_posted == 3  # type: ignore[union-attr]


def test_concurrent_requests_over_http_share_batches(app: Any, admin_key: str, engine: Engine, usd: Account) -> None:
    usd("a")
    usd("b")
    bodies = [
        {"id": f"h{i}", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "ledger": "USD"}
        for i in range(64)
    ]

    async def post_all() -> list[Any]:
        transport = httpx2.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {admin_key}"}
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver", headers=headers) as client:
            return list(await asyncio.gather(*(client.post("/v1/transfers", json=body) for body in bodies)))

    batches = engine.stats.batches
    responses = asyncio.run(post_all())
    assert [response.status_code for response in responses] == [201] * 64
    assert [response.json()["id"] for response in responses] == [body["id"] for body in bodies]
    assert engine.stats.batches - batches < 64


# ----------------------------------------------------------------- one write per response
class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"info:{name}"


def test_coalescing_transport_writes_once_per_turn_and_before_closing() -> None:
    async def scenario() -> tuple[list[bytes], list[bytes], bool, Any]:
        inner = _Transport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"head,")
        transport.write(bytearray(b"body"))
        assert inner.writes == [] and transport.get_write_buffer_size() == 9
        await asyncio.sleep(0)
        first = list(inner.writes)
        transport.write(b"last")
        transport.close()
        return first, inner.writes, inner.closed, transport.get_extra_info("peername")

    first, writes, closed, info = asyncio.run(scenario())
    assert first == [b"head,body"]
    assert writes == [b"head,body", b"last"] and closed
    assert info == "info:peername"


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [(RuntimeError("boom"), 500, "internal"), (NotFound("thing_not_found", "No thing."), 404, "not_found")],
)
def test_lean_errors_render_through_the_app_handlers(app: Any, error: Exception, status: int, error_type: str) -> None:
    async def handler(request: Request) -> Response:
        raise error

    client = TestClient(LeanEndpoint(handler, app.exception_handlers), raise_server_exceptions=False)
    assert_error(client.post("/anywhere"), status, error_type)
