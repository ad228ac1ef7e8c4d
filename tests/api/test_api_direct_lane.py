"""The direct lanes: ``POST /v1/transfers`` and ``POST /v1/charges`` taken by the HTTP protocol
answer exactly what the ASGI app answers, and anything they do not take goes through the app.

Two real uvicorn servers run the same app over one engine, one with the lane and one without;
every request is sent to both (with its own ids) and the answers must match byte for byte, but
for the Date header and the timestamps. Every test runs twice: with the lanes in the server's
own protocol, and behind a front process (``micropay serve --front-processes``), which owns
the connections and sends the server the lanes' requests, relays the rest or hands the
connection over.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import uvicorn

from micropay.api import Settings, create_app
from micropay.api.app import MicropayApi
from micropay.api.direct import CHARGES_PATH, TRANSFERS_PATH, DirectLanes, Lane
from micropay.api.keys import issue_key
from micropay.cli.front_link import Fronts
from micropay.cli.protocol import http_protocol
from micropay.cli.serve import MicropayServer
from micropay.engine import Engine
from micropay.ledger import AccountFlags, AccountRequest
from micropay.models import chart, payments
from micropay.models.payments import MerchantRequest, PayerRequest, TopupRequest
from micropay.settlement.rails import Rails
from micropay.store import open_store

START_S_MAX = 10.0
READ_S_MAX = 10.0
KEY_TTL_S = 600.0
"""Keys stay verified for the whole module (a lane takes only keys verified within the TTL)."""


@dataclass
class Served:
    port: int
    lanes: DirectLanes | None
    fronts: Fronts | None = None

    def lane(self, path: str = TRANSFERS_PATH) -> Lane[Any]:
        assert self.lanes is not None
        return self.lanes.lane(path)

    def counts(self) -> tuple[int, int]:
        """Requests taken and declined so far, by every lane."""
        assert self.lanes is not None
        return sum(lane.taken for lane in self.lanes), sum(lane.declined for lane in self.lanes)


@dataclass(frozen=True)
class Keys:
    admin: str
    merchant: str  # merchant "m1"'s
    payer: str  # payer "p1"'s


def _serve(
    app: MicropayApi, lane: DirectLanes | None, *, timeout_keep_alive_s: int = 5, front: bool = False
) -> tuple[Served, uvicorn.Server, threading.Thread]:
    """Serve ``app`` in a thread; with ``front``, behind a front process (``micropay.cli.front``)
    that owns the connections and sends the server the lanes' requests."""
    listening = socket.create_server(("127.0.0.1", 0)) if front else None
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0 if listening is None else listening.getsockname()[1],
        loop="uvloop",
        http=http_protocol(lane),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=timeout_keep_alive_s,
    )
    fronts = None
    if listening is not None:
        assert lane is not None
        fronts = Fronts(listening, 1, lane, Settings().body_bytes_max)
    server = MicropayServer(config, None, fronts)
    thread = threading.Thread(target=server.run, name="lane-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_S_MAX
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1] if listening is None else listening.getsockname()[1]
    return Served(port, lane, fronts), server, thread


@contextlib.contextmanager
def _own_server(
    engine: Engine, *, timeout_keep_alive_s: int = 5, front: bool = False
) -> Iterator[tuple[Served, uvicorn.Server]]:
    """A server with the lanes of its own (for a test that stops it or times its connections);
    stopped, and its thread gone, on the way out."""
    app = create_app(engine, settings=Settings(key_cache_ttl_s=KEY_TTL_S))
    assert isinstance(app, MicropayApi)
    served, server, thread = _serve(app, app.direct_lanes(), timeout_keep_alive_s=timeout_keep_alive_s, front=front)
    try:
        yield served, server
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive(), "the server did not stop"


@pytest.fixture(scope="module", params=["protocol", "front"])
def serving(request: pytest.FixtureRequest) -> str:
    """Where the lanes run: in the server's HTTP protocol, or behind a front process."""
    mode: str = request.param
    return mode


@pytest.fixture(scope="module")
def lane_engine(tmp_path_factory: pytest.TempPathFactory, serving: str) -> Iterator[Engine]:
    """An engine of each serving mode's own (the tests reuse their ids)."""
    with Engine(open_store(f"sqlite:///{tmp_path_factory.mktemp(f'lane-{serving}') / 'lane.db'}")) as engine:
        yield engine


Servers = tuple[Served, Served, Keys]


@pytest.fixture(scope="module")
def servers(lane_engine: Engine, serving: str) -> Iterator[Servers]:
    engine = lane_engine
    _, admin = issue_key(engine, "admin")
    _, merchant = issue_key(engine, "merchant", "m1")
    _, payer = issue_key(engine, "payer", "p1")
    keys = Keys(admin, merchant, payer)
    engine.create_ledger("USD", 2)
    engine.create_accounts(
        [
            AccountRequest("a", "USD"),
            AccountRequest("b", "USD"),
            AccountRequest("capped", "USD", flags=int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)),
        ]
    )
    rails = Rails()
    for payer_id, funds in (("p1", 10**9), ("poor", 3)):
        engine.call(payments.create_payer(PayerRequest(payer_id, "USD", "prepay"), rails))
        engine.call(payments.topup(TopupRequest(f"fund-{payer_id}", payer_id, funds, "card"), rails))
    for merchant_id in ("m1", "m2"):
        engine.call(payments.create_merchant(MerchantRequest(merchant_id, "USD", fee_percent_bps=250), rails))
    with_lanes = create_app(engine, settings=Settings(key_cache_ttl_s=KEY_TTL_S))
    assert isinstance(with_lanes, MicropayApi)
    lanes = with_lanes.direct_lanes()
    assert lanes is not None
    without = create_app(engine, settings=Settings(direct_lane=False, key_cache_ttl_s=KEY_TTL_S))
    assert isinstance(without, MicropayApi) and without.direct_lanes() is None
    started = [_serve(with_lanes, lanes, front=serving == "front"), _serve(without, None)]
    try:
        yield started[0][0], started[1][0], keys
    finally:
        for _, server, thread in started:
            server.should_exit = True
            thread.join(timeout=30)


def _verify_keys(served: Served, keys: Keys) -> None:
    """Have the server verify each key now: a lane takes only keys verified within the key
    cache's TTL, and leaves the others to the app (which verifies them)."""
    reads = [_get(key, "/v1/payers/p1") for key in (keys.admin, keys.merchant, keys.payer)]
    _exchange(served.port, b"".join(reads), len(reads))


def _read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response's head and body from ``sock`` (``buffer`` keeps what follows it)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed before a response"
        buffer += chunk
    end = buffer.index(b"\r\n\r\n")
    head = bytes(buffer[:end])
    length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(buffer) < end + 4 + length:
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside a body"
        buffer += chunk
    body = bytes(buffer[end + 4 : end + 4 + length])
    del buffer[: end + 4 + length]
    return head, body


def _exchange(port: int, raw: bytes, responses: int = 1) -> tuple[list[tuple[bytes, bytes]], bool]:
    """Send ``raw`` on a new connection; read ``responses`` answers; whether the server then closed it."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_S_MAX) as sock:
        sock.sendall(raw)
        buffer = bytearray()
        answers = [_read_response(sock, buffer) for _ in range(responses)]
        sock.settimeout(0.2)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    return answers, closed


def _request(
    key: str | None, body: bytes, *, path: str = "/v1/transfers", extra: str = "", version: str = "1.1"
) -> bytes:
    head = f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n"
    if key is not None:
        head += f"Authorization: Bearer {key}\r\n"
    if "Content-Type" not in extra:
        head += "Content-Type: application/json\r\n"
    head += extra + f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _get(key: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n".encode()


def _chunked(key: str, body: bytes) -> bytes:
    head = (
        "POST /v1/transfers HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    half = len(body) // 2
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    return head.encode() + chunks + b"0\r\n\r\n"


def _charge(charge_id: str, **fields: Any) -> bytes:
    body = {"id": charge_id, "payer_id": "p1", "merchant_id": "m1", "amount": 7}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def _charging(key: str, body: bytes, **options: Any) -> bytes:
    return _request(key, body, path=CHARGES_PATH, **options)


def _transfer(transfer_id: str, **fields: Any) -> bytes:
    body = {"id": transfer_id, "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "ledger": "USD"}
    body.update(fields)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


_STAMP = re.compile(rb'("timestamp":)\d+|("created_at":)"[^"]*"|("id":)"(?:tr|ch)_[0-9a-f]+"')


def _normal(answers: list[tuple[bytes, bytes]], transfer_id: str) -> list[tuple[list[bytes], bytes]]:
    """Heads with the Date header's value blanked, bodies without timestamps or the request's own id."""
    normal = []
    for head, body in answers:
        lines = [b"date: D" if line.lower().startswith(b"date:") else line for line in head.split(b"\r\n")]
        body = _STAMP.sub(rb"\1\2\3T", body).replace(transfer_id.encode(), b"ID")
        lines = [re.sub(rb"(?i)^content-length: \d+", b"content-length: N", line) for line in lines]
        normal.append((lines, body))
    return normal


# Each case: (name, request maker from key and id, responses expected, whether the lane takes it;
# None: it may or may not, by how the bytes arrive).
CASES: list[tuple[str, Any, int, bool | None]] = [
    ("plain", lambda k, i: _request(k.admin, _transfer(i)), 1, True),
    ("replay", lambda k, i: _request(k.admin, _transfer(i)) * 2, 2, True),
    ("conflict", lambda k, i: _request(k.admin, _transfer(i)) + _request(k.admin, _transfer(i, amount=6)), 2, True),
    ("refused", lambda k, i: _request(k.admin, _transfer(i, debit_account_id="capped")), 1, True),
    ("unknown account", lambda k, i: _request(k.admin, _transfer(i, credit_account_id="nobody")), 1, True),
    ("server-made id", lambda k, i: _request(k.admin, _transfer(None)), 1, True),
    ("connection close", lambda k, i: _request(k.admin, _transfer(i), extra="Connection: close\r\n"), 1, True),
    ("http/1.0", lambda k, i: _request(k.admin, _transfer(i), version="1.0"), 1, True),
    ("pipelined", lambda k, i: _request(k.admin, _transfer(i)) + _request(k.admin, _transfer(i + "-2")), 2, True),
    ("no key", lambda k, i: _request(None, _transfer(i)), 1, False),
    ("wrong key", lambda k, i: _request(k.admin + "x", _transfer(i)), 1, False),
    ("text body", lambda k, i: _request(k.admin, _transfer(i), extra="Content-Type: text/plain\r\n"), 1, False),
    ("query", lambda k, i: _request(k.admin, _transfer(i), path="/v1/transfers?x=1"), 1, False),
    ("not json", lambda k, i: _request(k.admin, b"{nope"), 1, False),
    ("float amount", lambda k, i: _request(k.admin, _transfer(i, amount=5.0)), 1, False),
    ("extra field", lambda k, i: _request(k.admin, _transfer(i, colour="red")), 1, False),
    ("linked", lambda k, i: _request(k.admin, _transfer(i, flags=["linked"])), 1, False),
    ("two keys", lambda k, i: _request(k.admin, _transfer(i), extra=f"Authorization: Bearer {k.admin}\r\n"), 1, False),
    ("chunked", lambda k, i: _chunked(k.admin, _transfer(i)), 1, False),
    (
        "transfer then read it",
        lambda k, i: _request(k.admin, _transfer(i)) + _get(k.admin, f"/v1/transfers/{i}"),
        2,
        True,
    ),
    ("read then transfer", lambda k, i: _get(k.admin, f"/v1/transfers/{i}") + _request(k.admin, _transfer(i)), 2, None),
    ("charge", lambda k, i: _charging(k.admin, _charge(i)), 1, True),
    ("charge replay", lambda k, i: _charging(k.admin, _charge(i)) * 2, 2, True),
    (
        "charge conflict",
        lambda k, i: _charging(k.admin, _charge(i)) + _charging(k.admin, _charge(i, amount=8)),
        2,
        True,
    ),
    ("charge with metadata", lambda k, i: _charging(k.admin, _charge(i, metadata={"order": "42"})), 1, True),
    ("charge with a description", lambda k, i: _charging(k.admin, _charge(i, description="a song")), 1, True),
    ("charge server-made id", lambda k, i: _charging(k.admin, _charge(None)), 1, True),
    ("charge declined", lambda k, i: _charging(k.admin, _charge(i, payer_id="poor", amount=100)), 1, True),
    ("charge unknown payer", lambda k, i: _charging(k.admin, _charge(i, payer_id="nobody")), 1, True),
    ("charge by its merchant", lambda k, i: _charging(k.merchant, _charge(i)), 1, True),
    ("charge by its payer", lambda k, i: _charging(k.payer, _charge(i)), 1, True),
    ("charge for another merchant", lambda k, i: _charging(k.merchant, _charge(i, merchant_id="m2")), 1, False),
    ("charge of another payer", lambda k, i: _charging(k.payer, _charge(i, payer_id="poor")), 1, False),
    ("charge float amount", lambda k, i: _charging(k.admin, _charge(i, amount=7.0)), 1, False),
    ("charge extra field", lambda k, i: _charging(k.admin, _charge(i, colour="red")), 1, False),
    ("charge no key", lambda k, i: _charging(None, _charge(i)), 1, False),
    ("charge then read it", lambda k, i: _charging(k.admin, _charge(i)) + _get(k.admin, f"/v1/charges/{i}"), 2, True),
]


@pytest.mark.parametrize(("name", "make", "responses", "taken"), CASES, ids=[case[0] for case in CASES])
def test_the_lanes_answer_what_the_app_answers(
    servers: Servers, name: str, make: Any, responses: int, taken: bool | None
) -> None:
    lane_server, app_server, keys = servers
    case = [case[0] for case in CASES].index(name)
    lane_id, app_id = f"lane-{case}", f"app-{case}"
    _verify_keys(lane_server, keys)
    taken_before, declined_before = lane_server.counts()
    via_lane, lane_closed = _exchange(lane_server.port, make(keys, lane_id), responses)
    via_app, app_closed = _exchange(app_server.port, make(keys, app_id), responses)
    assert _normal(via_lane, lane_id) == _normal(via_app, app_id)
    assert lane_closed == app_closed
    taken_now, declined_now = lane_server.counts()
    taken_now -= taken_before
    declined_now -= declined_before
    if taken:
        assert taken_now >= 1 and declined_now == 0
    elif taken is not None:
        assert taken_now == 0


def test_the_lane_moves_money_once_per_id(servers: Servers, lane_engine: Engine) -> None:
    engine = lane_engine
    lane_server, _, keys = servers
    before = engine.account("b")
    assert before is not None
    _verify_keys(lane_server, keys)
    answers, _ = _exchange(lane_server.port, _request(keys.admin, _transfer("once")) * 3, 3)
    assert [head.split(b" ")[1] for head, _ in answers] == [b"201", b"200", b"200"]
    after = engine.account("b")
    assert after is not None and after.credits_posted - before.credits_posted == 5


def test_the_charge_lane_charges_once_per_id(servers: Servers, lane_engine: Engine) -> None:
    engine = lane_engine
    lane_server, _, keys = servers
    before = engine.account(chart.wallet_account("p1", "USD"))
    assert before is not None
    _verify_keys(lane_server, keys)
    taken_before = lane_server.lane(CHARGES_PATH).taken
    answers, _ = _exchange(lane_server.port, _charging(keys.merchant, _charge("charged-once")) * 3, 3)
    assert [head.split(b" ")[1] for head, _ in answers] == [b"201", b"200", b"200"]
    assert [orjson.loads(body)["amount"] for _, body in answers] == [7, 7, 7]
    after = engine.account(chart.wallet_account("p1", "USD"))
    assert after is not None and after.balance - before.balance == -7
    assert lane_server.lane(CHARGES_PATH).taken - taken_before >= 1


def test_a_connection_close_request_is_answered_then_closed(servers: Servers) -> None:
    lane_server, _, keys = servers
    answers, closed = _exchange(lane_server.port, _request(keys.admin, _transfer("bye"), extra="Connection: close\r\n"))
    assert b"connection: close" in answers[0][0].lower()
    assert closed


@pytest.mark.parametrize("path", [TRANSFERS_PATH, CHARGES_PATH])
def test_a_fault_in_a_lane_leaves_the_request_to_the_app(
    servers: Servers, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    lane_server, _, keys = servers

    def broken(headers: Any, body: bytes) -> None:
        raise RuntimeError("a bug in the lane")

    monkeypatch.setattr(lane_server.lane(path), "_request", broken)
    if path == TRANSFERS_PATH:
        raw = _request(keys.admin, _transfer("fault"))
    else:
        raw = _charging(keys.admin, _charge("fault"))
    answers, _ = _exchange(lane_server.port, raw)
    assert answers[0][0].split(b" ")[1] == b"201"


def test_a_body_arriving_in_pieces_is_taken_once_whole(servers: Servers, lane_engine: Engine) -> None:
    lane_server, _, keys = servers
    _verify_keys(lane_server, keys)
    taken_before = lane_server.lane().taken
    raw = _request(keys.admin, _transfer("pieces"))
    with socket.create_connection(("127.0.0.1", lane_server.port), timeout=READ_S_MAX) as sock:
        for start in range(0, len(raw), 40):
            sock.sendall(raw[start : start + 40])
            time.sleep(0.01)
        head, body = _read_response(sock, bytearray())
    assert head.split(b" ")[1] == b"201"
    assert orjson.loads(body)["id"] == "pieces"
    assert lane_server.lane().taken == taken_before + 1
    assert lane_engine.transfer("pieces") is not None


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout_and_a_busy_one_is_not(
    servers: Servers, lane_engine: Engine, serving: str
) -> None:
    _, _, keys = servers
    with _own_server(lane_engine, timeout_keep_alive_s=1, front=serving == "front") as (served, _):
        with socket.create_connection(("127.0.0.1", served.port), timeout=READ_S_MAX) as sock:
            buffer = bytearray()
            _verify_keys(served, keys)
            for index in range(4):  # 4 requests 0.5 s apart: busier than the 1 s timeout
                sock.sendall(_request(keys.admin, _transfer(f"keep-alive-{index}")))
                head, _ = _read_response(sock, buffer)
                assert head.split(b" ")[1] == b"201"
                time.sleep(0.5)
            sock.settimeout(3.0)
            started = time.monotonic()
            assert sock.recv(1) == b"", "the idle connection was not closed"
            assert time.monotonic() - started < 2.5
        assert served.lane().taken >= 4


def test_a_request_in_the_lane_when_the_server_stops_is_answered_then_closed(
    servers: Servers, lane_engine: Engine, serving: str
) -> None:
    _, _, keys = servers
    with _own_server(lane_engine, front=serving == "front") as (served, server):
        with socket.create_connection(("127.0.0.1", served.port), timeout=READ_S_MAX) as sock:
            _verify_keys(served, keys)
            taken_before = served.lane().taken
            busy = lane_engine.submit(lambda _ctx: time.sleep(0.5))  # the engine is busy: the transfer waits
            sock.sendall(_request(keys.admin, _transfer("at-shutdown")))
            deadline = time.monotonic() + READ_S_MAX
            while served.lane().taken == taken_before:
                assert time.monotonic() < deadline, "the lane did not take the request"
                time.sleep(0.01)
            server.should_exit = True  # a graceful stop while the request waits for the engine
            head, body = _read_response(sock, bytearray())
            assert head.split(b" ")[1] == b"201"
            assert b"connection: close" in head.lower()
            assert orjson.loads(body)["id"] == "at-shutdown"
            sock.settimeout(READ_S_MAX)
            assert sock.recv(1) == b""
        busy.result(timeout=READ_S_MAX)
        assert lane_engine.transfer("at-shutdown") is not None


@pytest.mark.parametrize("serving", ["front"], indirect=True)
def test_a_front_keeps_the_connections_it_reads_and_hands_over_the_rest(servers: Servers, serving: str) -> None:
    lane_server, _, keys = servers
    assert lane_server.fronts is not None
    _verify_keys(lane_server, keys)
    handed_over = lane_server.fronts.handed_over
    taken_before = lane_server.lane().taken
    mixed = (
        _get(keys.admin, "/v1/payers/p1")  # relayed to the app
        + _request(keys.admin, _transfer("kept-1"))  # the lane's
        + _request(keys.admin + "x", _transfer("kept-2"))  # declined by the lane: relayed, 401
        + _request(keys.admin, _transfer("kept-3"))  # the lane's again: the front kept the connection
    )
    answers, _ = _exchange(lane_server.port, mixed, 4)
    assert [head.split(b" ")[1] for head, _ in answers] == [b"200", b"201", b"401", b"201"]
    assert lane_server.lane().taken - taken_before == 2
    assert lane_server.fronts.handed_over == handed_over
    answers, _ = _exchange(lane_server.port, _request(keys.admin, _transfer("handed-over"), version="1.0"))
    assert answers[0][0].split(b" ")[1] == b"201"
    assert lane_server.fronts.handed_over == handed_over + 1


def test_many_pipelined_requests_are_answered_in_order(servers: Servers, lane_engine: Engine) -> None:
    lane_server, _, keys = servers
    _verify_keys(lane_server, keys)
    ids = [f"pipelined-many-{index}" for index in range(60)]
    raw = b"".join(_request(keys.admin, _transfer(transfer_id)) for transfer_id in ids)
    raw += _get(keys.admin, f"/v1/transfers/{ids[0]}")
    answers, _ = _exchange(lane_server.port, raw, len(ids) + 1)
    assert [orjson.loads(body)["id"] for _, body in answers] == [*ids, ids[0]]
    assert {head.split(b" ")[1] for head, _ in answers[:-1]} == {b"201"}


def test_a_client_gone_before_its_answer_leaves_the_transfer_made_and_others_served(
    servers: Servers, lane_engine: Engine
) -> None:
    lane_server, _, keys = servers
    _verify_keys(lane_server, keys)
    busy = lane_engine.submit(lambda _ctx: time.sleep(0.3))  # the engine is busy: the transfer waits
    with socket.create_connection(("127.0.0.1", lane_server.port), timeout=READ_S_MAX) as sock:
        sock.sendall(_request(keys.admin, _transfer("left-early")))
        time.sleep(0.05)
    busy.result(timeout=READ_S_MAX)
    deadline = time.monotonic() + READ_S_MAX
    while lane_engine.transfer("left-early") is None:
        assert time.monotonic() < deadline, "the transfer of a client that left was not made"
        time.sleep(0.01)
    answers, _ = _exchange(lane_server.port, _request(keys.admin, _transfer("after-left-early")))
    assert answers[0][0].split(b" ")[1] == b"201"
