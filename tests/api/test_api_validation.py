"""Malformed requests get a clear 4xx in the error shape, and move nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from api_support import assert_error
from starlette.testclient import TestClient

from micropay.ledger.limits import AMOUNT_MAX, METADATA_KEYS_MAX

Account = Callable[..., dict[str, Any]]
GOOD = {"id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 100, "ledger": "USD"}


@pytest.fixture
def accounts(usd: Account) -> None:
    usd("a")
    usd("b")


def assert_nothing_moved(admin: TestClient) -> None:
    for account_id in ("a", "b"):
        account = admin.get(f"/v1/accounts/{account_id}").json()
        assert account["debits_posted"] == account["credits_posted"] == 0
        assert account["debits_pending"] == account["credits_pending"] == 0
    assert admin.get("/v1/transfers/t1").status_code == 404


BAD_BODIES: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("float amount", {**GOOD, "amount": 100.5}, "parameter_invalid", "amount"),
    ("integral float amount", {**GOOD, "amount": 100.0}, "parameter_invalid", "amount"),
    ("string amount", {**GOOD, "amount": "100"}, "parameter_invalid", "amount"),
    ("bool amount", {**GOOD, "amount": True}, "parameter_invalid", "amount"),
    ("amount past the maximum", {**GOOD, "amount": AMOUNT_MAX + 1}, "parameter_invalid", "amount"),
    ("amount past 64 bits", {**GOOD, "amount": 2**70}, "parameter_invalid", "amount"),
    ("account id of the wrong type", {**GOOD, "debit_account_id": 12}, "parameter_invalid", "debit_account_id"),
    ("id with a bad character", {**GOOD, "id": "t 1"}, "parameter_invalid", "id"),
    ("id too long", {**GOOD, "id": "t" * 65}, "parameter_invalid", "id"),
    ("unknown flag", {**GOOD, "flags": ["turbo"]}, "parameter_invalid", "flags[0]"),
    ("flags not a list", {**GOOD, "flags": "pending"}, "parameter_invalid", "flags"),
    ("unknown field", {**GOOD, "ammount": 5}, "parameter_unknown", "ammount"),
    ("missing accounts", {"id": "t1", "amount": 5, "ledger": "USD"}, "parameter_missing", "debit_account_id"),
    ("code past 16 bits", {**GOOD, "code": 65536}, "parameter_invalid", "code"),
    ("negative timeout", {**GOOD, "timeout_s": -1}, "parameter_invalid", "timeout_s"),
    ("metadata value not a string", {**GOOD, "metadata": {"k": 1}}, "parameter_invalid", "metadata.k"),
    (
        "metadata too big",
        {**GOOD, "metadata": {f"k{i}": "v" for i in range(METADATA_KEYS_MAX + 1)}},
        "parameter_invalid",
        "metadata",
    ),
    ("metadata value too long", {**GOOD, "metadata": {"k": "v" * 501}}, "parameter_invalid", "metadata.k"),
]


@pytest.mark.parametrize(
    ("body", "code", "param"), [case[1:] for case in BAD_BODIES], ids=[case[0] for case in BAD_BODIES]
)
def test_malformed_transfer_is_400(
    admin: TestClient, accounts: None, body: dict[str, Any], code: str, param: str | None
) -> None:
    error = assert_error(admin.post("/v1/transfers", json=body), 400, "invalid_request", code)
    assert error["param"] == param
    assert_nothing_moved(admin)


def test_negative_amount_is_refused_with_its_result_code(admin: TestClient, accounts: None) -> None:
    error = assert_error(admin.post("/v1/transfers", json={**GOOD, "amount": -100}), 422, "invalid_request")
    assert error["code"] == "amount_must_be_positive" and error["param"] == "amount"
    assert_nothing_moved(admin)


def test_malformed_batch_applies_nothing(admin: TestClient, accounts: None) -> None:
    transfers = [GOOD, {**GOOD, "id": "t2", "amount": 1.5}]
    error = assert_error(admin.post("/v1/transfers/batch", json={"transfers": transfers}), 400, "invalid_request")
    assert error["param"] == "transfers[1].amount"
    assert_nothing_moved(admin)


def test_lone_surrogate_in_metadata_is_400_not_a_failed_batch(admin: TestClient, accounts: None) -> None:
    raw = (
        b'{"id": "t1", "debit_account_id": "a", "credit_account_id": "b", "amount": 1, "ledger": "USD",'
        b' "metadata": {"k": "\\ud800"}}'
    )
    response = admin.post("/v1/transfers", content=raw, headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_request")
    assert_nothing_moved(admin)
    assert admin.post("/v1/transfers", json=GOOD).status_code == 201


@pytest.mark.parametrize(
    ("raw", "content_type", "code"),
    [
        (b'{"id": "t1", "amount": ', "application/json", "body_not_json"),
        (b"[1, 2]", "application/json", "body_invalid"),
        (b'{"amount": NaN}', "application/json", "body_not_json"),
        (b"\xff\xfe", "application/json", "body_not_json"),
        (b"", "application/json", "parameter_missing"),
        (b'{"id": "t1"}', "text/plain", "body_invalid"),
    ],
)
def test_unparseable_bodies_are_400(
    admin: TestClient, accounts: None, raw: bytes, content_type: str, code: str
) -> None:
    response = admin.post("/v1/transfers", content=raw, headers={"Content-Type": content_type})
    assert_error(response, 400, "invalid_request", code)
    assert_nothing_moved(admin)


def test_ten_megabyte_body_is_413(admin: TestClient, accounts: None) -> None:
    padding = "x" * (10 * 1024 * 1024)
    response = admin.post("/v1/transfers", json={**GOOD, "metadata": {"pad": padding}})
    assert_error(response, 413, "invalid_request", "body_too_large")
    assert_nothing_moved(admin)


def test_streamed_body_over_the_limit_is_413(admin: TestClient, accounts: None) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"id": "t1", "metadata": {"pad": "'
        for _ in range(10):
            yield b"x" * 1024 * 1024
        yield b'"}}'

    response = admin.post("/v1/transfers", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "invalid_request", "body_too_large")
    assert_nothing_moved(admin)


def test_bad_query_and_path_parameters_are_400(admin: TestClient, accounts: None) -> None:
    assert_error(admin.get("/v1/accounts", params={"limit": "ten"}), 400, "invalid_request")
    assert_error(admin.get("/v1/accounts", params={"starting_after": "bad id"}), 400, "invalid_request")
    assert_error(admin.get("/v1/transfers/bad%20id"), 400, "invalid_request")


def test_unknown_route_and_method(admin: TestClient) -> None:
    assert_error(admin.get("/v1/nothing"), 404, "not_found", "route_not_found")
    response = admin.put("/v1/ledgers", json={})
    assert_error(response, 405, "invalid_request", "method_not_allowed")
    assert response.headers["Allow"] == "GET, POST"


def test_refusals_map_to_the_contract_statuses() -> None:
    from micropay.api.errors import error_response
    from micropay.errors import Conflict, NotFound, PaymentDeclined, Refused

    cases = [
        (Refused("voucher_expired", "Expired."), 422, "invalid_request"),
        (Refused("payer_not_found", "No payer."), 404, "not_found"),
        (Refused("already_distributed", "Done."), 409, "conflict"),
        (PaymentDeclined("insufficient_funds", "Declined."), 422, "payment_declined"),
        (NotFound("charge_not_found", "No charge."), 404, "not_found"),
        (Conflict("exists_with_different_fields", "Differs."), 409, "conflict"),
    ]
    for error, status, error_type in cases:
        response = error_response(error)
        assert response.status_code == status
        assert orjson.loads(response.body)["error"]["type"] == error_type
