"""The charge batcher behind ``POST /v1/charges``: concurrent charges share engine operations,
and each still gets exactly the answer it would get alone."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest
from payments_kit import Payments

from micropay.engine import Engine
from micropay.errors import Conflict, PaymentDeclined
from micropay.models import charge_batcher as batcher_module
from micropay.models.charge_batcher import ChargeBatcher
from micropay.models.payments import ChargeBatchFailed, ChargeRequest, charge_many
from micropay.models.records import Charge


def _wait_all(futures: list[Future[tuple[Charge, bool]]]) -> list[tuple[Charge, bool] | BaseException]:
    answers: list[tuple[Charge, bool] | BaseException] = []
    for future in futures:
        error = future.exception(timeout=30)
        answers.append(error if error is not None else future.result())
    return answers


def test_threads_share_operations_and_get_their_own_answers(pay: Payments, engine: Engine) -> None:
    pay.merchant("m1", bps=1000)
    for payer in ("rich", "poor"):
        pay.payer(payer)
    pay.fund("rich", 1_000_000)
    pay.fund("poor", 50)
    batcher = ChargeBatcher(engine)
    futures: list[Future[tuple[Charge, bool]]] = []
    lock = threading.Lock()

    def submit(thread: int) -> None:
        for i in range(100):
            payer = "poor" if i % 10 == 0 else "rich"
            future = batcher.submit(ChargeRequest(f"t{thread}-{i}", payer, "m1", 10))
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answers = _wait_all(futures)
    declined = [answer for answer in answers if isinstance(answer, BaseException)]
    made = [answer for answer in answers if not isinstance(answer, BaseException)]
    assert len(made) == 800 - len(declined)
    assert len(declined) == 80 - 5  # "poor" can pay for five charges of 10
    assert all(isinstance(error, PaymentDeclined) and error.code == "insufficient_funds" for error in declined)
    assert all(replayed is False for _, replayed in made)
    assert batcher.operations < len(futures)  # coalesced
    assert pay.get("/v1/payers/poor")["wallet"]["balance"] == 0
    assert pay.get("/v1/payers/rich")["wallet"]["balance"] == 1_000_000 - 10 * (720 + 0)
    assert pay.get("/v1/merchants/m1")["balance"] == 9 * len(made)
    engine.verify()


def test_one_group_replays_and_conflicts_like_separate_requests(pay: Payments, engine: Engine) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    pay.fund("p1", 1000)
    requests = [
        ChargeRequest("same", "p1", "m1", 100),
        ChargeRequest("same", "p1", "m1", 100),
        ChargeRequest("same", "p1", "m1", 101),
        ChargeRequest("other", "p1", "m1", 901),  # 900 left after the first
        ChargeRequest("last", "p1", "m1", 900),
    ]
    answers = engine.call(charge_many(requests))
    first, again, conflict, declined, last = answers
    assert not isinstance(first, Exception) and first[1] is False
    assert not isinstance(again, Exception) and again == (first[0], True)
    assert isinstance(conflict, Conflict) and conflict.code == "exists_with_different_fields"
    assert isinstance(declined, PaymentDeclined) and declined.code == "insufficient_funds"
    assert not isinstance(last, Exception) and last[1] is False
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 0


def test_metadata_rides_with_the_charge(pay: Payments, engine: Engine) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    pay.fund("p1", 1000)
    batcher = ChargeBatcher(engine)
    _record, replayed = batcher.submit(ChargeRequest("c1", "p1", "m1", 5), b'{"k":"v"}').result(timeout=30)
    assert replayed is False and pay.get("/v1/charges/c1")["metadata"] == {"k": "v"}
    assert batcher.submit(ChargeRequest("c1", "p1", "m1", 5), b'{"k":"v"}').result(timeout=30)[1] is True
    with pytest.raises(Conflict):
        batcher.submit(ChargeRequest("c1", "p1", "m1", 5), None).result(timeout=30)


def test_a_group_failing_as_a_whole_is_retried_charge_by_charge(
    pay: Payments, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    pay.fund("p1", 1000)

    def failing_when_grouped(requests: list[ChargeRequest]) -> Any:
        if len(requests) > 1:

            def run(_ctx: Any) -> Any:
                raise ChargeBatchFailed("injected")

            return run
        return charge_many(requests)

    monkeypatch.setattr(batcher_module, "charge_many", failing_when_grouped)
    batcher = ChargeBatcher(engine)
    gate = threading.Event()
    engine.submit(lambda _ctx: gate.wait(10))  # hold the engine so the charges queue up together
    futures = [batcher.submit(ChargeRequest(f"c{i}", "p1", "m1", 10)) for i in range(5)]
    gate.set()
    answers = _wait_all(futures)
    assert all(not isinstance(answer, BaseException) and answer[1] is False for answer in answers)
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 950


def test_callers_in_an_event_loop_get_each_answer_in_that_loop(pay: Payments, engine: Engine) -> None:
    pay.merchant("m1")
    pay.payer("p1")
    pay.fund("p1", 25)
    batcher = ChargeBatcher(engine)
    requests = [ChargeRequest(f"loop-{i}", "p1", "m1", 10) for i in range(3)] + [
        ChargeRequest("loop-0", "p1", "m1", 10)
    ]

    async def charge_all() -> tuple[list[Any], set[int]]:
        loop = asyncio.get_running_loop()
        answers: list[Any] = [None] * len(requests)
        threads: set[int] = set()
        all_in = loop.create_future()

        def deliver(index: int, answer: Any) -> None:
            if index == 0:
                raise RuntimeError("a caller's own fault")  # the others still get their answers
            answers[index] = answer
            threads.add(threading.get_ident())
            if all(answer is not None for answer in answers[1:]) and not all_in.done():
                all_in.set_result(None)

        busy = engine.submit(lambda _ctx: time.sleep(0.2))  # so that all four share one operation
        for index, request in enumerate(requests):
            batcher.submit_in_loop(request, None, functools.partial(deliver, index))
        await asyncio.wrap_future(busy)
        await asyncio.wait_for(all_in, timeout=30)
        return answers, threads

    answers, threads = asyncio.run(charge_all())
    assert threads == {threading.get_ident()}  # delivered in the loop's own thread
    second, third, replay = answers[1:]
    assert not isinstance(second, BaseException) and second[1] is False
    assert isinstance(third, PaymentDeclined) and third.code == "insufficient_funds"  # 25 pays for two
    assert not isinstance(replay, BaseException) and replay[1] is True and replay[0].id == "loop-0"
    assert pay.get("/v1/payers/p1")["wallet"]["balance"] == 5
    assert batcher.operations == 1
