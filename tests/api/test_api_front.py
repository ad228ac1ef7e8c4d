"""Front processes (``micropay serve --front-processes N``): how a front reads request heads, and
how it lives and dies with its server.

What the front answers is checked in test_api_direct_lane.py, whose every test also runs behind
a front against the same app without lanes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httptools
import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api_serve import _start

from micropay.bench.http import child_pids
from micropay.cli.front import Head, parse_head
from micropay.cli.front_link import RESTARTS_MAX

EXIT_S_MAX = 15.0
LANES = {b"/v1/transfers": 0, b"/v1/charges": 1}
LANE_BODY_MAX = 16 * 1024
BODY_MAX = 64 * 1024


def _head(*lines: str, request_line: str = "POST /v1/transfers HTTP/1.1") -> bytes:
    return ("\r\n".join([request_line, *lines]) + "\r\n\r\n").encode("latin-1")


PLAIN = ("Host: x", "Authorization: Bearer k", "Content-Type: application/json", "Content-Length: 12")


def _parse(head: bytes) -> Head | None:
    return parse_head(head, LANES, LANE_BODY_MAX, BODY_MAX)


def test_a_plain_lane_request_is_read_for_its_lane() -> None:
    assert _parse(_head(*PLAIN)) == Head(0, True, b"application/json", b"Bearer k", 12)
    charge = _parse(_head(*PLAIN, request_line="POST /v1/charges HTTP/1.1"))
    assert charge is not None and charge.lane == 1


def test_connection_close_is_read() -> None:
    head = _parse(_head(*PLAIN, "Connection: close"))
    assert head is not None and head.lane == 0 and not head.keep_alive


@pytest.mark.parametrize(
    "lines",
    [
        (*PLAIN, "Authorization: Bearer k"),  # two keys: the app's 401 decides
        (*PLAIN[:2], *PLAIN[3:]),  # no Content-Type
        (PLAIN[0], *PLAIN[2:]),  # no key
        (*PLAIN[:3], "Content-Length: 20000"),  # over the lane's body limit
    ],
    ids=["two keys", "no content type", "no key", "large body"],
)
def test_a_lane_request_the_lane_would_not_take_is_relayed(lines: tuple[str, ...]) -> None:
    head = _parse(_head(*lines))
    assert head is not None and head.lane == -1


@pytest.mark.parametrize(
    ("request_line", "lines"),
    [
        ("GET /v1/transfers/t1 HTTP/1.1", ("Host: x", "Authorization: Bearer k")),
        ("POST /v1/transfers?x=1 HTTP/1.1", PLAIN),
        ("POST /v1/transfers/batch HTTP/1.1", PLAIN),
        ("DELETE /v1/api_keys/k1 HTTP/1.1", ("Host: x",)),
    ],
)
def test_other_plain_requests_are_relayed(request_line: str, lines: tuple[str, ...]) -> None:
    head = _parse(_head(*lines, request_line=request_line))
    assert head is not None and head.lane == -1


@pytest.mark.parametrize(
    ("request_line", "lines"),
    [
        ("POST /v1/transfers HTTP/1.0", PLAIN),
        ("POST  /v1/transfers HTTP/1.1", PLAIN),
        ("POST http://x/v1/transfers HTTP/1.1", PLAIN),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN[:3], "Transfer-Encoding: chunked")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN, "Expect: 100-continue")),
        ("GET /ws HTTP/1.1", ("Host: x", "Connection: upgrade", "Upgrade: websocket")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN, "Content-Length: 12")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN[:3], "Content-Length: +12")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN, " folded")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN, "Bad Name: x")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN, "X-Ctl: a\x7fb")),
        ("POST /v1/transfers HTTP/1.1", (*PLAIN, "Connection: keep-alive, te")),
        ("POST /v1/transfers/batch HTTP/1.1", (*PLAIN[:3], f"Content-Length: {BODY_MAX + 1}")),
    ],
    ids=[
        "http/1.0",
        "two spaces",
        "absolute form",
        "chunked",
        "expect",
        "upgrade",
        "two lengths",
        "signed length",
        "folded line",
        "space in a name",
        "control character",
        "connection list",
        "body over the limit",
    ],
)
def test_anything_unusual_is_handed_over(request_line: str, lines: tuple[str, ...]) -> None:
    assert _parse(_head(*lines, request_line=request_line)) is None


class _Reading:
    """What httptools (the server's own parser) reads from a request."""

    def __init__(self) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.keep_alive: bool | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        self.keep_alive = self.parser.should_keep_alive()  # where uvicorn asks it

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


_names = st.sampled_from(
    ["Host", "Authorization", "Content-Type", "content-length", "Connection", "X-Trace", "Accept", "TE"]
)
_values = st.sampled_from(
    ["Bearer k", "application/json", "close", "keep-alive", "12", "5", "", " padded ", "a\tb", "text/plain", "x y"]
)
_separators = st.sampled_from([": ", ":", ":\t", " : ", ":  "])
_extra_lines = st.lists(st.tuples(_names, _values, _separators), max_size=4)
_content_type = st.sampled_from(["Content-Type", "content-type"])
_usual_lines = st.tuples(
    st.tuples(st.sampled_from(["Authorization", "authorization", "AUTHORIZATION"]), st.just("Bearer k"), _separators),
    st.tuples(_content_type, st.sampled_from(["application/json", "a/b"]), _separators),
    st.tuples(st.sampled_from(["Content-Length", "content-length"]), st.sampled_from(["12", "0", "007"]), _separators),
)
_lines = st.builds(lambda usual, extra: [*usual, *extra], _usual_lines, _extra_lines).flatmap(st.permutations)
"""A lane request's usual headers in any order and spelling, with others among them."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request_line=st.sampled_from(
        [
            "POST /v1/transfers HTTP/1.1",
            "POST /v1/charges HTTP/1.1",
            "GET /v1/transfers HTTP/1.1",
            "PUT /v1/transfers HTTP/1.1",
            "POST /v1/transfers HTTP/1.0",
        ]
    ),
    lines=_lines,
)
def test_what_the_front_forwards_the_server_parser_reads_the_same(
    request_line: str, lines: list[tuple[str, str, str]]
) -> None:
    head_bytes = _head(*(name + separator + value for name, value, separator in lines), request_line=request_line)
    head = _parse(head_bytes)
    if head is None:
        return  # handed over: the server's parser reads the bytes itself
    body = b"b" * head.body_bytes
    reading = _Reading()
    parser = reading.parser = httptools.HttpRequestParser(reading)
    parser.feed_data(head_bytes + body)  # the server's parser accepts it (raises otherwise)
    assert reading.complete, "the message the front framed is not whole to the server"
    assert reading.body == body
    assert parser.get_method() == request_line.split(" ")[0].encode()
    assert reading.url == request_line.split(" ")[1].encode()
    assert head.keep_alive == reading.keep_alive
    if head.lane >= 0:
        values = dict(reading.headers)
        assert values[b"content-type"] == head.content_type
        assert values[b"authorization"] == head.authorization


# ----------------------------------------------------------------- processes
@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[str]]:
    with open(tmp_path / "server.log", "w", encoding="utf-8") as handle:
        yield handle


Served = tuple[subprocess.Popen[str], str, str]


@pytest.fixture
def served(tmp_path: Path, log: IO[str]) -> Iterator[Served]:
    """``micropay serve --front-processes 1`` on a fresh SQLite file: the process, its URL and
    its admin key; killed on the way out if a test left it running."""
    key_file = tmp_path / "admin.key"
    server = _start(f"sqlite:///{tmp_path / 'front.db'}", key_file, log, ["--front-processes", "1"])
    try:
        yield server.process, server.url, key_file.read_text().strip()
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def _front_pid(server: subprocess.Popen[str]) -> int:
    children = child_pids(server.pid)
    assert len(children) == 1, children
    return children[0]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + EXIT_S_MAX
    while not _gone(pid):
        assert time.monotonic() < deadline, f"process {pid} did not exit"
        time.sleep(0.05)


def _port_free(url: str) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        except OSError:
            return False
    return True


def test_a_served_front_answers_and_stops_with_its_server(served: Served) -> None:
    server, url, key = served
    front = _front_pid(server)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx2.Client(base_url=url, headers=headers, timeout=30) as client:
        assert client.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
        for account in ("a", "b"):
            assert client.post("/v1/accounts", json={"id": account, "ledger": "USD"}).status_code == 201
        transfer = {"id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 5, "ledger": "USD"}
        assert client.post("/v1/transfers", json=transfer).status_code == 201
        assert client.post("/v1/transfers", json=transfer).status_code == 200
        assert client.get("/v1/accounts/b").json()["balance"] == 5
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0
    _wait_gone(front)
    assert _port_free(url)


def test_a_front_exits_when_its_server_is_killed(served: Served) -> None:
    server, url, _ = served
    front = _front_pid(server)
    server.kill()
    server.wait()
    _wait_gone(front)
    assert _port_free(url)


def _replaced(server: subprocess.Popen[str], pid: int) -> int:
    """The front process started in place of ``pid`` (which is gone)."""
    _wait_gone(pid)
    deadline = time.monotonic() + EXIT_S_MAX
    while True:
        children = child_pids(server.pid)
        if children and children[0] != pid:
            return children[0]
        assert time.monotonic() < deadline, "no front process was started in place of the one that died"
        time.sleep(0.05)


def test_a_front_that_dies_is_replaced_and_the_server_goes_on(served: Served, tmp_path: Path) -> None:
    server, url, key = served
    front = _front_pid(server)
    os.kill(front, signal.SIGKILL)
    _replaced(server, front)
    with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        assert client.post("/v1/ledgers", json={"code": "USD", "scale": 2}).status_code == 201
    assert server.poll() is None
    assert "starting another" in (tmp_path / "server.log").read_text(encoding="utf-8")
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0


def test_a_server_whose_fronts_keep_dying_stops_and_says_so(served: Served, tmp_path: Path) -> None:
    server, url, _ = served
    front = _front_pid(server)
    for _ in range(RESTARTS_MAX):
        os.kill(front, signal.SIGKILL)
        front = _replaced(server, front)
    os.kill(front, signal.SIGKILL)  # one exit more than the window admits
    assert server.wait(timeout=30) == 1
    assert "front processes kept exiting" in (tmp_path / "server.log").read_text(encoding="utf-8")
    assert _port_free(url)
