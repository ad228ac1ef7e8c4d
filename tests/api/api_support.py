"""Helpers shared by the API tests (a module, not conftest, so imports are unambiguous)."""

from __future__ import annotations

from typing import Any


def assert_error(response: Any, status: int, error_type: str, code: str | None = None) -> dict[str, Any]:
    """The response is an error in the contract's shape, with this status, type (and code)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "code", "message", "param"}, error
    assert error["type"] == error_type, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error
